//! CREATE TABLE / VIEW / MATERIALIZED VIEW and DROP.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::Constraint;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::sqlparser::ast::{CreateTableOptions, ObjectType, Statement, visit_relations};

use eddy_executor::batch_schema;
use eddy_storage::{CatalogEntry, RelationKind};

use super::{Engine, Outcome};
use crate::catalog::{RelationInfo, TableRows, kind_name};
use crate::error::{EddyError, Result};

/// Names of the catalog relations `stmt` mentions. Read from the AST:
/// DataFusion inlines views while planning, and a view is a dependency too.
fn referenced_relations(stmt: &Statement, catalog: &crate::catalog::Catalog) -> Vec<String> {
    let mut names = Vec::new();
    let _ = visit_relations(stmt, |name| {
        let last = name.0.last().map(|p| p.to_string()).unwrap_or_default();
        let normalized = crate::functions::normalize_ident(&last);
        if catalog.get(&normalized).is_some() {
            names.push(normalized);
        }
        ControlFlow::<()>::Continue(())
    });
    names.sort();
    names.dedup();
    names
}

impl Engine {
    /// Creates a relation from its statement. `id` is set when replaying
    /// the stored catalog (the statement is then not stored again).
    pub(super) async fn create(
        &self,
        stmt: &Statement,
        id: Option<u32>,
        sql: &str,
    ) -> Result<Outcome> {
        let (name, kind, if_not_exists, plan) = match stmt {
            Statement::CreateTable(ct) => {
                if ct.query.is_some() {
                    return Err(EddyError::Unsupported(
                        "CREATE TABLE ... AS SELECT (create the table, then INSERT ... SELECT)"
                            .into(),
                    ));
                }
                (
                    ct.name.clone(),
                    RelationKind::Table,
                    ct.if_not_exists,
                    self.bind(stmt.clone()).await?,
                )
            }
            Statement::CreateView(cv) => {
                if !matches!(cv.options, CreateTableOptions::None) {
                    return Err(EddyError::Unsupported("WITH options on views".into()));
                }
                let kind = if cv.materialized {
                    RelationKind::MaterializedView
                } else {
                    RelationKind::View
                };
                let mut plain = cv.clone();
                plain.materialized = false;
                if cv.or_replace {
                    return Err(EddyError::Unsupported(
                        "CREATE OR REPLACE (drop the view and create it again)".into(),
                    ));
                }
                (
                    cv.name.clone(),
                    kind,
                    cv.if_not_exists,
                    self.bind(Statement::CreateView(plain)).await?,
                )
            }
            other => return Err(EddyError::Unsupported(format!("{other}"))),
        };
        let name = match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(t)) => t.name.table().to_string(),
            LogicalPlan::Ddl(DdlStatement::CreateView(v)) => v.name.table().to_string(),
            _ => crate::functions::normalize_ident(
                &name.0.last().map(|p| p.to_string()).unwrap_or_default(),
            ),
        };
        let tag = match kind {
            RelationKind::Table => "CREATE TABLE",
            RelationKind::View => "CREATE VIEW",
            RelationKind::MaterializedView => "CREATE MATERIALIZED VIEW",
        };
        if self.catalog.get(&name).is_some() {
            if if_not_exists {
                return Ok(Outcome::command(tag));
            }
            return Err(EddyError::DuplicateTable(name));
        }
        let guard = self.runtime.write_lock().await;
        let replaying = id.is_some();
        let id = id.unwrap_or_else(|| self.catalog.next_id());
        let depends_on = match kind {
            RelationKind::Table => vec![],
            _ => referenced_relations(stmt, &self.catalog),
        };
        let (schema, rows, view_plan) = match (&plan, kind) {
            (LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(t)), RelationKind::Table) => {
                if t.constraints
                    .iter()
                    .any(|c| matches!(c, Constraint::Unique(_)))
                {
                    return Err(EddyError::Unsupported(
                        "UNIQUE constraints other than the primary key".into(),
                    ));
                }
                let primary_key = t
                    .constraints
                    .iter()
                    .find_map(|c| match c {
                        Constraint::PrimaryKey(cols) => Some(cols.clone()),
                        Constraint::Unique(_) => None,
                    })
                    .unwrap_or_default();
                // Primary key columns are NOT NULL, as in Postgres.
                let fields: Vec<_> = t
                    .input
                    .schema()
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        f.as_ref()
                            .clone()
                            .with_nullable(f.is_nullable() && !primary_key.contains(&i))
                    })
                    .collect();
                let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
                let last_key = self.store.last_row_key(id)?;
                let rows = TableRows::new(&schema, primary_key, last_key.as_deref())?;
                let stored = self.load_rows(id, &schema, &rows)?;
                self.runtime
                    .create_table(&guard, id, schema.clone(), stored)?;
                (schema, Some(rows), None)
            }
            (LogicalPlan::Ddl(DdlStatement::CreateView(v)), RelationKind::View) => (
                Arc::new(v.input.schema().as_arrow().clone()),
                None,
                Some(v.input.as_ref().clone()),
            ),
            (LogicalPlan::Ddl(DdlStatement::CreateView(v)), RelationKind::MaterializedView) => {
                let optimized = self.ctx.state().optimize(&v.input)?;
                let stream_plan = eddy_planner::lower(&optimized)?;
                self.runtime.quiesce(&guard).await;
                let catalog = self.catalog.clone();
                let resolve = move |n: &str| {
                    catalog
                        .get(n)
                        .filter(|r| r.kind != RelationKind::View)
                        .map(|r| r.id)
                };
                self.runtime
                    .create_view(&guard, id, &stream_plan, &resolve)?;
                (batch_schema(stream_plan.schema()), None, None)
            }
            (other, _) => return Err(EddyError::Unsupported(format!("{}", other.display()))),
        };
        if !replaying {
            let entry = CatalogEntry {
                id,
                name: name.clone(),
                kind,
                sql: sql.to_string(),
            };
            if let Err(e) = self.store.put_catalog(&entry) {
                self.runtime.drop_relation(&guard, id);
                return Err(e.into());
            }
        }
        let info = RelationInfo {
            id,
            name,
            kind,
            schema,
            sql: sql.to_string(),
            depends_on,
            rows,
            view_plan,
        };
        self.catalog.insert(info);
        Ok(Outcome::command(tag))
    }

    fn load_rows(
        &self,
        id: u32,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        rows: &TableRows,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let mut values = Vec::new();
        self.store.scan_rows(id, |_, v| values.push(v.to_vec()))?;
        let mut batches = Vec::new();
        for chunk in values.chunks(8192) {
            let columns = rows.decode(chunk.iter().map(|v| v.as_slice()))?;
            batches.push(datafusion::arrow::array::RecordBatch::try_new(
                schema.clone(),
                columns,
            )?);
        }
        Ok(batches)
    }

    /// DROP TABLE | VIEW | MATERIALIZED VIEW [IF EXISTS] names [CASCADE].
    pub(super) async fn drop(&self, stmt: &Statement) -> Result<Outcome> {
        let Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } = stmt
        else {
            return Err(EddyError::Unsupported(stmt.to_string()));
        };
        let (expected, tag) = match object_type {
            ObjectType::Table => (RelationKind::Table, "DROP TABLE"),
            ObjectType::View => (RelationKind::View, "DROP VIEW"),
            ObjectType::MaterializedView => {
                (RelationKind::MaterializedView, "DROP MATERIALIZED VIEW")
            }
            other => return Err(EddyError::Unsupported(format!("DROP {other}"))),
        };
        let guard = self.runtime.write_lock().await;
        for name in names {
            let name = crate::functions::normalize_ident(
                &name.0.last().map(|p| p.to_string()).unwrap_or_default(),
            );
            let Some(info) = self.catalog.get(&name) else {
                if *if_exists {
                    continue;
                }
                return Err(EddyError::UndefinedTable(name));
            };
            if info.kind != expected {
                return Err(EddyError::WrongObjectType {
                    name,
                    expected: kind_name(expected),
                });
            }
            // Dependents first, deepest first.
            let mut order = Vec::new();
            let mut seen = HashSet::new();
            self.collect_dependents(&name, &mut order, &mut seen);
            if !order.is_empty() && !*cascade {
                let dependents = order
                    .iter()
                    .map(|r| format!("{} {}", r.kind_name(), r.name))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(EddyError::DependentObjects {
                    name: format!("{} {}", info.kind_name(), name),
                    dependents,
                });
            }
            self.runtime.quiesce(&guard).await;
            for victim in order.iter().chain(std::iter::once(&info)) {
                self.runtime.drop_relation(&guard, victim.id);
                self.store.drop_relation(victim.id)?;
                self.catalog.remove(&victim.name);
            }
        }
        Ok(Outcome::command(tag))
    }

    fn collect_dependents(
        &self,
        name: &str,
        order: &mut Vec<Arc<RelationInfo>>,
        seen: &mut HashSet<String>,
    ) {
        for dep in self.catalog.dependents(name) {
            if seen.insert(dep.name.clone()) {
                self.collect_dependents(&dep.name, order, seen);
                order.push(dep);
            }
        }
    }
}
