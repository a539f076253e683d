//! SET / SHOW, SHOW TABLES / VIEWS / MATERIALIZED VIEWS, DESCRIBE, and
//! EXPLAIN of a materialized view's stream plan.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::sqlparser::ast::{Expr, Set, Statement, Value};

use eddy_storage::RelationKind;

use super::{Engine, Outcome, Settings};
use crate::error::{EddyError, Result};

/// Settings a client may read before setting them, with their values.
const DEFAULTS: &[(&str, &str)] = &[
    ("server_version", crate::functions::SERVER_VERSION),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("timezone", "UTC"),
    ("standard_conforming_strings", "on"),
    ("transaction_isolation", "serializable"),
    ("search_path", "public"),
    ("integer_datetimes", "on"),
    (super::IMPLICIT_FLUSH, "false"),
];

/// A one-column-per-name text result.
pub(crate) fn text_rows(columns: &[&str], rows: Vec<Vec<String>>) -> Outcome {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|i| {
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.get(i).cloned()),
            )) as ArrayRef
        })
        .collect();
    match RecordBatch::try_new(schema.clone(), arrays) {
        Ok(batch) => Outcome::Rows {
            schema,
            batches: vec![batch],
        },
        Err(_) => Outcome::Rows {
            schema,
            batches: vec![],
        },
    }
}

fn setting_value(values: &[Expr]) -> String {
    values
        .iter()
        .map(|v| match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            Expr::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Engine {
    pub(super) async fn execute_show_or_set(
        &self,
        stmt: Statement,
        settings: &mut Settings,
    ) -> Result<Outcome> {
        match stmt {
            Statement::Set(Set::SingleAssignment {
                variable, values, ..
            }) => {
                let name = variable.to_string().to_lowercase();
                let value = setting_value(&values);
                if !self.parameters.set(&self.store, &name, &value)? {
                    settings.insert(name, value);
                }
                Ok(Outcome::command("SET"))
            }
            Statement::Set(Set::SetTimeZone { value, .. }) => {
                settings.insert(
                    "timezone".into(),
                    setting_value(std::slice::from_ref(&value)),
                );
                Ok(Outcome::command("SET"))
            }
            Statement::Set(_) => Ok(Outcome::command("SET")),
            Statement::ShowVariable { variable } => {
                let name = variable
                    .iter()
                    .map(|i| i.value.to_lowercase())
                    .collect::<Vec<_>>()
                    .join(" ");
                if name == "materialized views" {
                    return Ok(self.list(RelationKind::MaterializedView));
                }
                let value = self
                    .parameters
                    .show(&name)
                    .or_else(|| settings.get(&name).cloned())
                    .or_else(|| {
                        DEFAULTS
                            .iter()
                            .find(|(k, _)| *k == name)
                            .map(|(_, v)| v.to_string())
                    })
                    .ok_or_else(|| EddyError::Coded {
                        code: "42704",
                        message: format!("unrecognized configuration parameter \"{name}\""),
                    })?;
                Ok(text_rows(&[&name], vec![vec![value]]))
            }
            Statement::ShowTables { .. } => Ok(self.list(RelationKind::Table)),
            Statement::ShowViews { materialized, .. } => Ok(self.list(if materialized {
                RelationKind::MaterializedView
            } else {
                RelationKind::View
            })),
            Statement::ExplainTable { table_name, .. } => {
                let name = crate::functions::normalize_ident(
                    &table_name
                        .0
                        .last()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                );
                let info = self.catalog.require(&name)?;
                let key = info
                    .rows
                    .as_ref()
                    .map(|r| r.primary_key.clone())
                    .unwrap_or_default();
                let rows = info
                    .schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        vec![
                            f.name().clone(),
                            crate::functions::sql_type_name(f.data_type()),
                            if f.is_nullable() {
                                "YES".into()
                            } else {
                                "NO".into()
                            },
                            if key.contains(&i) {
                                "PRIMARY KEY".into()
                            } else {
                                String::new()
                            },
                        ]
                    })
                    .collect();
                Ok(text_rows(&["name", "type", "nullable", "key"], rows))
            }
            Statement::Explain { statement, .. } => match *statement {
                Statement::CreateView(mut cv) if cv.materialized => {
                    cv.materialized = false;
                    cv.options = datafusion::sql::sqlparser::ast::CreateTableOptions::None;
                    let plan = self.bind(Statement::CreateView(cv)).await?;
                    let LogicalPlan::Ddl(DdlStatement::CreateView(v)) = plan else {
                        return Err(EddyError::Unsupported("EXPLAIN of this statement".into()));
                    };
                    let stream = self.stream_plan(&v.input)?;
                    let rows = stream
                        .to_string()
                        .lines()
                        .map(|l| vec![l.to_string()])
                        .collect();
                    Ok(text_rows(&["QUERY PLAN"], rows))
                }
                other => Err(EddyError::Unsupported(format!("EXPLAIN {other}"))),
            },
            other => Err(EddyError::Unsupported(other.to_string())),
        }
    }

    pub(super) fn list(&self, kind: RelationKind) -> Outcome {
        let rows = self
            .catalog
            .all()
            .into_iter()
            .filter(|r| r.kind == kind)
            .map(|r| vec![r.name.clone()])
            .collect();
        text_rows(&["Name"], rows)
    }
}

impl Engine {
    /// SHOW JOBS: every view's and sink's pipeline and its restarts.
    pub(super) fn show_jobs(&self) -> Outcome {
        let rows = self
            .jobs
            .rows(
                &self.catalog,
                &self.runtime,
                &self.parameters.restart_strategy(),
            )
            .into_iter()
            .map(|j| {
                vec![
                    j.name,
                    j.kind.to_string(),
                    j.state.to_string(),
                    j.restarts.to_string(),
                    j.last_error.unwrap_or_default(),
                    j.connection_problem.unwrap_or_default(),
                    j.restart_strategy,
                ]
            })
            .collect();
        text_rows(
            &[
                "Name",
                "kind",
                "state",
                "restarts",
                "last_error",
                "connection_problem",
                "restart_strategy",
            ],
            rows,
        )
    }
}
