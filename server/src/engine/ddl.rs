//! CREATE TABLE / VIEW / MATERIALIZED VIEW / SOURCE and DROP.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::Constraint;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::sqlparser::ast::{CreateTableOptions, ObjectType, Statement, visit_relations};

use eddy_executor::batch_schema;
use eddy_executor::source::{SourceSpec, WatermarkSpec};
use eddy_planner::CreateSource;
use eddy_storage::{CatalogEntry, RelationKind};

use super::job_options::JobOptions;
use super::{Engine, Outcome};
use crate::catalog::{RelationInfo, TableRows, kind_name};
use crate::error::{EddyError, Result};

/// Names of the catalog relations `stmt` mentions. Read from the AST:
/// DataFusion inlines views while planning, and a view is a dependency too.
pub(super) fn referenced_relations(
    stmt: &Statement,
    catalog: &crate::catalog::Catalog,
) -> Vec<String> {
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
        emit_on_window_close: bool,
    ) -> Result<Outcome> {
        let mut job_options = JobOptions::default();
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
                if cv.materialized {
                    job_options = JobOptions::of_view(&cv.options)?;
                } else if !matches!(cv.options, CreateTableOptions::None) {
                    return Err(EddyError::Unsupported("WITH options on views".into()));
                }
                let kind = if cv.materialized {
                    RelationKind::MaterializedView
                } else {
                    RelationKind::View
                };
                let mut plain = cv.clone();
                plain.materialized = false;
                plain.options = CreateTableOptions::None;
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
            RelationKind::Table | RelationKind::LateRows => "CREATE TABLE",
            RelationKind::View => "CREATE VIEW",
            RelationKind::MaterializedView => "CREATE MATERIALIZED VIEW",
            RelationKind::Source => "CREATE SOURCE",
            RelationKind::Sink => "CREATE SINK",
        };
        if self.catalog.get(&name).is_some() {
            if if_not_exists {
                return Ok(Outcome::command(tag));
            }
            return Err(EddyError::DuplicateTable(name));
        }
        let guard = self.runtime.write_lock().await;
        let quiesced = self.runtime.quiesce(&guard).await;
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
                // Its rows come back from the last checkpoint and the log
                // of changes after it (see `Runtime::recovered`).
                self.runtime.create_table(&guard, id, schema.clone())?;
                (schema, Some(rows), None)
            }
            (LogicalPlan::Ddl(DdlStatement::CreateView(v)), RelationKind::View) => (
                Arc::new(v.input.schema().as_arrow().clone()),
                None,
                Some(v.input.as_ref().clone()),
            ),
            (LogicalPlan::Ddl(DdlStatement::CreateView(v)), RelationKind::MaterializedView) => {
                let stream_plan = self.stream_plan(&v.input)?;
                if let Some(late) = &job_options.late_rows {
                    if late == &name || self.catalog.get(late).is_some() {
                        return Err(EddyError::DuplicateTable(late.clone()));
                    }
                    self.runtime.create_late_rows(&quiesced, id)?;
                }
                let created = self.runtime.create_view(
                    &quiesced,
                    id,
                    &stream_plan,
                    job_options.pipeline(emit_on_window_close, self.state),
                    &|n| self.catalog.read_target(n),
                );
                if let Err(e) = created {
                    self.runtime
                        .drop_relation(&quiesced, eddy_executor::late_rows_id(id));
                    return Err(e.into());
                }
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
                self.runtime.drop_relation(&quiesced, id);
                self.runtime
                    .drop_relation(&quiesced, eddy_executor::late_rows_id(id));
                return Err(e.into());
            }
        }
        if let Some(late) = &job_options.late_rows {
            self.catalog.insert(RelationInfo {
                id: eddy_executor::late_rows_id(id),
                name: late.clone(),
                kind: RelationKind::LateRows,
                schema: eddy_executor::late_rows_schema(),
                sql: format!("-- the late rows of materialized view {name}"),
                depends_on: vec![],
                rows: None,
                view_plan: None,
                source: None,
                sink: None,
            });
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
            source: None,
            sink: None,
        };
        self.catalog.insert(info);
        job_options.apply(&self.jobs, id);
        drop(quiesced);
        drop(guard);
        if kind == RelationKind::MaterializedView {
            // The statement returns once the view holds its backfill, so a
            // query right after it sees the view at the same epoch as the rest.
            self.runtime.flush().await;
        }
        Ok(Outcome::command(tag))
    }

    /// The stream plan of a view's or sink's bound query: its `NOW()`
    /// deferred to each barrier's time (a temporal filter), then optimized
    /// by DataFusion and lowered.
    pub(super) fn stream_plan(&self, query: &LogicalPlan) -> Result<eddy_planner::StreamNode> {
        let deferred = eddy_planner::defer_now(query.clone())?;
        let optimized = self.ctx.state().optimize(&deferred)?;
        Ok(eddy_planner::lower(&optimized)?)
    }

    /// The normalized name of a relation to create; `None` if it exists and
    /// `if_not_exists` (nothing to do), 42P07 if it exists otherwise.
    pub(super) fn fresh_name(
        &self,
        name: &datafusion::sql::sqlparser::ast::ObjectName,
        if_not_exists: bool,
    ) -> Result<Option<String>> {
        let name = crate::functions::normalize_ident(
            &name.0.last().map(|p| p.to_string()).unwrap_or_default(),
        );
        match self.catalog.get(&name) {
            None => Ok(Some(name)),
            Some(_) if if_not_exists => Ok(None),
            Some(_) => Err(EddyError::DuplicateTable(name)),
        }
    }

    /// CREATE SOURCE. `id` is set when replaying the stored catalog.
    pub(super) async fn create_source(
        &self,
        source: &CreateSource,
        id: Option<u32>,
    ) -> Result<Outcome> {
        let Some(name) = self.fresh_name(&source.name, source.if_not_exists)? else {
            return Ok(Outcome::command("CREATE SOURCE"));
        };
        // The columns are bound as a table's would be.
        let columns: Vec<String> = source.columns.iter().map(|c| c.to_string()).collect();
        let table = format!("CREATE TABLE \"{name}\" ({})", columns.join(", "));
        let stmts = eddy_planner::parse_sql(&table)?;
        let [eddy_planner::EddyStatement::Sql(stmt)] = stmts.as_slice() else {
            return Err(EddyError::Unsupported("source column list".into()));
        };
        let schema = match self.bind(stmt.as_ref().clone()).await? {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(t)) => {
                if !t.constraints.is_empty() {
                    return Err(EddyError::Unsupported(
                        "constraints on a source (it is append-only)".into(),
                    ));
                }
                batch_schema(t.input.schema())
            }
            other => return Err(EddyError::Unsupported(format!("{}", other.display()))),
        };
        let mut options = source.options.clone();
        let extra = SourceSpec::extra_fields(&options);
        let schema = if extra.is_empty() {
            schema
        } else {
            let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
            for field in extra {
                if schema.index_of(field.name()).is_ok() {
                    return Err(EddyError::Coded {
                        code: "42701",
                        message: format!("column \"{}\" specified more than once", field.name()),
                    });
                }
                fields.push(Arc::new(field));
            }
            Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
        };
        let proctime = source
            .proctime
            .as_ref()
            .map(|p| crate::functions::normalize_ident(&p.to_string()))
            .and_then(|name| schema.index_of(&name).ok());
        let watermark = match &source.watermark {
            None => None,
            Some((column, _)) if proctime.is_some() && source.proctime.as_ref() == Some(column) => {
                return Err(EddyError::Coded {
                    code: "42P16",
                    message: format!(
                        "WATERMARK FOR {column}: a PROCTIME() column's watermark is the processing time itself"
                    ),
                });
            }
            Some((column, expr)) => Some(self.watermark_spec(&schema, column, expr)?),
        };
        let now_nanos = eddy_planner::system_time_nanos(std::time::SystemTime::now());
        SourceSpec::pin_defaults(
            &SourceSpec::connector_schema(&schema, proctime)?,
            &mut options,
            now_nanos,
        );
        let replaying = id.is_some();
        if !replaying {
            options = tokio::task::spawn_blocking(move || {
                SourceSpec::resolve(&mut options).map(|()| options)
            })
            .await
            .map_err(|e| EddyError::Coded {
                code: "XX000",
                message: format!("resolving the source failed: {e}"),
            })??;
        }
        let guard = self.runtime.write_lock().await;
        let id = id.unwrap_or_else(|| self.catalog.next_id());
        let spec = SourceSpec::new(id, schema.clone(), options.clone(), watermark, proctime)?;
        let stored = CreateSource {
            options,
            ..source.clone()
        };
        self.register_source(id, name, schema, &stored, Arc::new(spec), !replaying)?;
        drop(guard);
        Ok(Outcome::command("CREATE SOURCE"))
    }

    /// Puts source `stored` (read by `spec`) in the catalog, and with
    /// `persist` in the store's catalog too (under the write lock).
    pub(super) fn register_source(
        &self,
        id: u32,
        name: String,
        schema: datafusion::arrow::datatypes::SchemaRef,
        stored: &CreateSource,
        spec: Arc<SourceSpec>,
        persist: bool,
    ) -> Result<()> {
        let sql = stored.to_string();
        if persist {
            self.store.put_catalog(&CatalogEntry {
                id,
                name: name.clone(),
                kind: RelationKind::Source,
                sql: sql.clone(),
            })?;
        }
        self.catalog.insert(RelationInfo {
            id,
            name,
            kind: RelationKind::Source,
            schema,
            sql,
            depends_on: vec![],
            rows: None,
            view_plan: None,
            source: Some(spec),
            sink: None,
        });
        Ok(())
    }

    /// `WATERMARK FOR column AS expr`, checked: a time column, a time expression.
    fn watermark_spec(
        &self,
        schema: &datafusion::arrow::datatypes::SchemaRef,
        column: &datafusion::sql::sqlparser::ast::Ident,
        expr: &datafusion::sql::sqlparser::ast::Expr,
    ) -> Result<WatermarkSpec> {
        use datafusion::arrow::datatypes::DataType;
        let is_time = |t: &DataType| matches!(t, DataType::Timestamp(..) | DataType::Date32);
        let name = crate::functions::normalize_ident(&column.to_string());
        let index = schema.index_of(&name).map_err(|_| EddyError::Coded {
            code: "42703",
            message: format!("WATERMARK FOR {name}: column \"{name}\" does not exist"),
        })?;
        let column_type = schema.field(index).data_type();
        if !is_time(column_type) {
            return Err(EddyError::Coded {
                code: "42804",
                message: format!(
                    "WATERMARK FOR {name}: the column must be a timestamp or date, not {}",
                    crate::functions::sql_type_name(column_type)
                ),
            });
        }
        let df_schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone())?;
        let logical = self
            .ctx
            .state()
            .create_logical_expr(&expr.to_string(), &df_schema)?;
        let expr_type = datafusion::logical_expr::ExprSchemable::get_type(&logical, &df_schema)?;
        if &expr_type != column_type {
            return Err(EddyError::Coded {
                code: "42804",
                message: format!(
                    "WATERMARK FOR {name} AS {expr}: the expression must have the column's type {}, not {}",
                    crate::functions::sql_type_name(column_type),
                    crate::functions::sql_type_name(&expr_type)
                ),
            });
        }
        let physical = datafusion::physical_expr::create_physical_expr(
            &logical,
            &df_schema,
            &datafusion::logical_expr::execution_props::ExecutionProps::new(),
            &Default::default(),
        )?;
        Ok(WatermarkSpec {
            column: index,
            expr: physical,
        })
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
        let expected = match object_type {
            ObjectType::Table => RelationKind::Table,
            ObjectType::View => RelationKind::View,
            ObjectType::MaterializedView => RelationKind::MaterializedView,
            other => return Err(EddyError::Unsupported(format!("DROP {other}"))),
        };
        self.drop_relations(expected, names, *if_exists, *cascade)
            .await
    }

    /// Drops `names` of kind `expected`, dependents first when `cascade`.
    pub(super) async fn drop_relations(
        &self,
        expected: RelationKind,
        names: &[datafusion::sql::sqlparser::ast::ObjectName],
        if_exists: bool,
        cascade: bool,
    ) -> Result<Outcome> {
        let tag = format!("DROP {}", kind_name(expected).to_uppercase());
        let if_exists = &if_exists;
        let cascade = &cascade;
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
            let quiesced = self.runtime.quiesce(&guard).await;
            for victim in order.iter().chain(std::iter::once(&info)) {
                let late = self.catalog.late_rows_of(victim.id);
                for relation in std::iter::once(victim).chain(late.as_ref()) {
                    self.runtime.drop_relation(&quiesced, relation.id);
                    self.store.drop_relation(relation.id)?;
                    self.catalog.remove(&relation.name);
                }
            }
        }
        Ok(Outcome::command(&tag))
    }

    /// The relations reading `name` or its late-rows relation, and theirs,
    /// readers before what they read.
    fn collect_dependents(
        &self,
        name: &str,
        order: &mut Vec<Arc<RelationInfo>>,
        seen: &mut HashSet<String>,
    ) {
        let late = self
            .catalog
            .get(name)
            .and_then(|info| self.catalog.late_rows_of(info.id));
        let readers = self.catalog.dependents(name).into_iter().chain(
            late.iter()
                .flat_map(|late| self.catalog.dependents(&late.name)),
        );
        for dep in readers {
            if seen.insert(dep.name.clone()) {
                self.collect_dependents(&dep.name, order, seen);
                order.push(dep);
            }
        }
    }
}
