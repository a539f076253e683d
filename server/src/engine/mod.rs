//! The engine: runs statements against the catalog, storage and runtime.
//!
//! Every statement is parsed once (`eddy_planner::parse_sql`), bound by
//! DataFusion into a `LogicalPlan` where it has one ([`Engine::prepare`]), and
//! executed ([`Engine::execute`]). Queries read a [`ReadSnapshot`] taken at
//! one committed epoch. DML and DDL run under the runtime's write lock; DDL
//! also quiesces the pipelines first (see `eddy_executor::Runtime`).

mod ddl;
mod dml;
mod job_options;
mod parameters;
mod partitions;
mod show;
mod sink;
mod supervisor;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProvider;
use datafusion::catalog::memory::MemoryCatalogProvider;
use datafusion::common::ParamValues;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::source_as_provider;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use tokio::sync::watch;
use tracing::info;

use eddy_executor::{Runtime, StateConfig};
use eddy_planner::{EddyStatement, parse_sql};
use eddy_storage::{CatalogEntry, RelationKind, Store};

use crate::catalog::Catalog;
use crate::error::{EddyError, Result};
use crate::jobs::Jobs;
use crate::providers::{DmlSchema, PublicSchema, ReadSnapshot, RelationTable};
use crate::system_tables::SystemSchema;
pub(crate) use parameters::SystemParameters;

/// The catalog (database) name DataFusion sees.
pub const CATALOG_NAME: &str = "eddy";
/// The schema holding user relations.
pub const PUBLIC: &str = "public";
/// The schema UPDATE / DELETE read their target from.
pub const DML_SCHEMA: &str = "__eddy_dml";

/// What a statement answers.
#[derive(Debug)]
pub enum Outcome {
    /// Rows.
    Rows {
        /// Their schema.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
    },
    /// A command tag (`INSERT 0 3`, `CREATE TABLE`...).
    Command {
        /// Tag.
        tag: String,
        /// Affected rows, for tags that carry a count.
        rows: Option<usize>,
    },
    /// `BEGIN`.
    TransactionStart,
    /// `COMMIT` / `ROLLBACK`.
    TransactionEnd(&'static str),
}

impl Outcome {
    fn command(tag: &str) -> Self {
        Outcome::Command {
            tag: tag.to_string(),
            rows: None,
        }
    }
}

/// A statement ready to execute, possibly with `$n` parameters.
#[derive(Debug, Clone)]
pub enum Prepared {
    /// A query or DML statement bound by DataFusion.
    Plan(LogicalPlan),
    /// Anything else, executed from its AST.
    Statement(EddyStatement),
}

/// Per-connection settings (`SET` / `SHOW`).
pub type Settings = HashMap<String, String>;

/// The setting that makes every DML statement wait for its flush.
pub const IMPLICIT_FLUSH: &str = "implicit_flush";

/// How an engine runs.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Partitions per keyed operator.
    pub parallelism: usize,
    /// Whether epochs are written to the store. Without, views and table
    /// contents do not survive a restart (benchmarks measure the cost of
    /// checkpoints with it).
    pub checkpoints: bool,
    /// Where pipelines keep keyed state, unless a view says otherwise.
    pub state: StateConfig,
    /// Bytes of checkpoints that failed (a full disk) kept in memory
    /// before scheduled epochs pause (see [`Engine::tick`]).
    pub max_checkpoint_backlog: u64,
}

/// The default of [`EngineConfig::max_checkpoint_backlog`].
pub const DEFAULT_MAX_CHECKPOINT_BACKLOG: u64 = 256 << 20;

impl EngineConfig {
    /// Checkpoints on, state in memory.
    pub fn new(parallelism: usize) -> Self {
        Self {
            parallelism,
            checkpoints: true,
            state: StateConfig::default(),
            max_checkpoint_backlog: DEFAULT_MAX_CHECKPOINT_BACKLOG,
        }
    }
}

/// The database engine shared by all connections.
pub struct Engine {
    ctx: SessionContext,
    catalog: Arc<Catalog>,
    store: Arc<Store>,
    runtime: Arc<Runtime>,
    compat: PostgresCompatibilityParser,
    parameters: Arc<SystemParameters>,
    jobs: Arc<Jobs>,
    /// The server's state backend, for views that do not name one.
    state: StateConfig,
    max_checkpoint_backlog: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .finish()
    }
}

impl Engine {
    /// Opens the data directory and recovers every relation in it from the
    /// last checkpoint.
    pub async fn open(data_dir: &Path, config: EngineConfig) -> Result<Arc<Self>> {
        let EngineConfig {
            parallelism,
            checkpoints,
            state,
            max_checkpoint_backlog,
        } = config;
        let store = Arc::new(Store::open(data_dir)?);
        let catalog = Arc::new(Catalog::default());
        // Checkpointed state is partitioned: pipelines recover with the
        // parallelism they were checkpointed with.
        let parallelism = match store.meta()?.parallelism {
            Some(p) if p as usize != parallelism => {
                tracing::warn!(
                    configured = parallelism,
                    checkpointed = p,
                    "the data directory was checkpointed with another parallelism; keeping it"
                );
                p as usize
            }
            _ => parallelism,
        };
        let jobs = Arc::new(Jobs::durable(store.clone())?);
        let parameters = Arc::new(SystemParameters::load(&store)?);
        let runtime = if checkpoints {
            Runtime::durable(parallelism, store.clone())?
        } else {
            Runtime::new(parallelism)
        };

        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(CATALOG_NAME, PUBLIC)
            .with_information_schema(true)
            .with_target_partitions(parallelism.max(1));
        config.options_mut().sql_parser.map_string_types_to_utf8view = false;
        config.options_mut().sql_parser.enable_ident_normalization = true;
        let ctx = SessionContext::new_with_config(config);
        let db = MemoryCatalogProvider::new();
        db.register_schema(
            PUBLIC,
            Arc::new(PublicSchema {
                catalog: catalog.clone(),
                parallelism: parallelism.max(1),
            }),
        )?;
        db.register_schema(
            DML_SCHEMA,
            Arc::new(DmlSchema {
                catalog: catalog.clone(),
                store: store.clone(),
            }),
        )?;
        db.register_schema(
            "eddy_catalog",
            Arc::new(SystemSchema {
                catalog: catalog.clone(),
                runtime: runtime.clone(),
                jobs: jobs.clone(),
                parameters: parameters.clone(),
            }),
        )?;
        ctx.register_catalog(CATALOG_NAME, Arc::new(db));
        datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
            &ctx,
            CATALOG_NAME,
            EmptyContextProvider,
        )
        .map_err(|e| EddyError::DataFusion(*e))?;
        if let Some(db) = ctx.catalog(CATALOG_NAME)
            && let Some(inner) = db.schema("pg_catalog")
        {
            db.register_schema(
                "pg_catalog",
                Arc::new(crate::pg_class::PgCatalogSchema {
                    inner,
                    catalog: catalog.clone(),
                }),
            )?;
        }
        ctx.register_udf(crate::functions::version_udf());
        for function in eddy_planner::session_window_functions() {
            ctx.register_udwf(function);
        }

        let engine = Arc::new(Self {
            ctx,
            catalog,
            store,
            runtime,
            compat: PostgresCompatibilityParser::new(),
            parameters,
            jobs,
            state,
            max_checkpoint_backlog,
        });
        engine.replay().await?;
        tokio::spawn(partitions::watch(Arc::downgrade(&engine)));
        tokio::spawn(supervisor::supervise(Arc::downgrade(&engine)));
        Ok(engine)
    }

    /// Ends the current epoch, on the checkpoint interval's schedule:
    /// unless checkpoints the disk could not take hold more than the
    /// configured backlog in memory (see [`Runtime::scheduled_barrier`]).
    pub async fn tick(&self) -> Option<u64> {
        let guard = self.runtime.write_lock().await;
        self.runtime
            .scheduled_barrier(&guard, self.max_checkpoint_backlog)
            .await
    }

    /// The runtime (for periodic barriers).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Follows how often epochs end: `interval` (the server's flag) unless
    /// `SET checkpoint_interval` stored another value.
    pub fn checkpoint_interval(&self, interval: Duration) -> watch::Receiver<Duration> {
        self.parameters.default_checkpoint_interval(interval);
        self.parameters.checkpoint_interval()
    }

    /// Recovery: every relation of the catalog, in creation order, from
    /// the last checkpoint; then the table changes logged after it.
    async fn replay(&self) -> Result<()> {
        let entries = self.store.catalog()?;
        let count = entries.len();
        let (_, epoch) = self.runtime.coordinator().checkpoints();
        for entry in entries {
            let mut stmts = self.parse(&entry.sql)?;
            let (Some(stmt), true) = (stmts.pop(), stmts.is_empty()) else {
                return Err(EddyError::Coded {
                    code: "XX001",
                    message: format!("catalog entry {} is not one statement", entry.id),
                });
            };
            if let Err(e) = self.create_statement(stmt, Some(entry.id)).await {
                self.keep_unrestorable(&entry, e)?;
            }
        }
        let replayed = {
            let guard = self.runtime.write_lock().await;
            self.runtime.recovered(&guard).await?
        };
        self.runtime.flush().await;
        info!(
            relations = count,
            checkpoint = epoch,
            table_changes_replayed = replayed,
            "recovered"
        );
        Ok(())
    }

    /// A stored view or sink whose statement no longer plans (say, this
    /// version refuses something an earlier one accepted): the server
    /// starts without it rather than not at all. It stays in the catalog,
    /// its checkpointed state untouched, failed (queries on it and `SHOW
    /// JOBS` say why) until dropped. Tables and sources hold or define data,
    /// so failing to restore one still stops the start.
    fn keep_unrestorable(&self, entry: &CatalogEntry, error: EddyError) -> Result<()> {
        if !matches!(
            entry.kind,
            RelationKind::MaterializedView | RelationKind::Sink
        ) {
            return Err(error);
        }
        let reason = format!("it could not be restored: {error}; drop it and create it again");
        tracing::error!(relation = %entry.name, %error, "a stored view or sink no longer plans; it is kept, failed, until dropped");
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        let coordinator = self.runtime.coordinator();
        coordinator.add_relation(
            entry.id,
            schema.clone(),
            false,
            eddy_executor::Feed::Pipeline {
                inputs: vec![],
                incarnation: 0,
                halted: Default::default(),
            },
        )?;
        coordinator.fail(entry.id, reason.clone());
        self.catalog.insert(crate::catalog::RelationInfo {
            id: entry.id,
            name: entry.name.clone(),
            kind: entry.kind,
            schema,
            sql: entry.sql.clone(),
            depends_on: vec![],
            rows: None,
            view_plan: None,
            source: None,
            sink: None,
        });
        self.jobs.with(entry.id, |job| {
            job.state = crate::jobs::JobState::Failed;
            job.last_error = Some((std::time::SystemTime::now(), reason));
        });
        Ok(())
    }

    /// Creates the relation `stmt` defines (a CREATE statement).
    async fn create_statement(&self, stmt: EddyStatement, id: Option<u32>) -> Result<Outcome> {
        let sql = stmt.to_string();
        match stmt {
            EddyStatement::CreateSource(source) => self.create_source(&source, id).await,
            EddyStatement::CreateSink(sink) => self.create_sink(&sink, id).await,
            EddyStatement::EmitOnWindowClose(view) => self.create(&view, id, &sql, true).await,
            EddyStatement::Sql(s) => self.create(&s, id, &sql, false).await,
            other => Err(EddyError::Unsupported(format!("{other}"))),
        }
    }

    /// Splits a query string into statements, window table functions
    /// rewritten. A lone query goes through the Postgres-compatibility
    /// rewrites clients' catalog queries need.
    pub fn parse(&self, sql: &str) -> Result<Vec<EddyStatement>> {
        let mut stmts = self.parse_compat(sql)?;
        for stmt in &mut stmts {
            if let EddyStatement::Sql(s) | EddyStatement::EmitOnWindowClose(s) = stmt {
                eddy_planner::rewrite_windows(s)?;
            }
        }
        Ok(stmts)
    }

    fn parse_compat(&self, sql: &str) -> Result<Vec<EddyStatement>> {
        let stmts = parse_sql(sql)?;
        if let [EddyStatement::Sql(s)] = stmts.as_slice()
            && matches!(s.as_ref(), Statement::Query(_))
            && let Ok(mut rewritten) = self.compat.parse(sql)
            && rewritten.len() == 1
        {
            return Ok(vec![EddyStatement::Sql(Box::new(rewritten.remove(0)))]);
        }
        Ok(stmts
            .into_iter()
            .map(|s| match s {
                EddyStatement::Sql(q) if matches!(q.as_ref(), Statement::Query(_)) => {
                    EddyStatement::Sql(Box::new(self.compat.rewrite(*q)))
                }
                other => other,
            })
            .collect())
    }

    /// Runs every statement of `sql` in order, stopping at the first error
    /// (as Postgres does for a multi-statement simple query).
    pub async fn execute_all(&self, sql: &str, settings: &mut Settings) -> Vec<Result<Outcome>> {
        let stmts = match self.parse(sql) {
            Ok(s) => s,
            Err(e) => return vec![Err(e)],
        };
        let mut out = Vec::with_capacity(stmts.len());
        for stmt in stmts {
            let result = match self.prepare(stmt).await {
                Ok(prepared) => self.execute(prepared, None, settings).await,
                Err(e) => Err(e),
            };
            let failed = result.is_err();
            out.push(result);
            if failed {
                break;
            }
        }
        out
    }

    /// Inserts `batch` (of the table's columns) into table `table`, as
    /// `INSERT` does: constraints checked, durable on return, published.
    pub async fn insert_batch(&self, table: &str, batch: RecordBatch) -> Result<usize> {
        let info = self.catalog.require(table)?;
        let guard = self.runtime.write_lock().await;
        let new = self.conform(&info, &[batch], info.schema.fields().len())?;
        let rows = new.num_rows();
        let (change, writes) = self.prepare_insert(&info, new)?;
        self.apply_change(&guard, &info, change, &writes).await?;
        Ok(rows)
    }

    /// Binds a statement: queries and DML become plans (with parameter types).
    pub async fn prepare(&self, stmt: EddyStatement) -> Result<Prepared> {
        let EddyStatement::Sql(sql) = &stmt else {
            return Ok(Prepared::Statement(stmt));
        };
        match sql.as_ref() {
            Statement::Query(_) | Statement::Insert(_) => {
                Ok(Prepared::Plan(self.bind(sql.as_ref().clone()).await?))
            }
            Statement::Update(_) | Statement::Delete(_) => Ok(Prepared::Plan(
                self.bind(dml::retarget(sql.as_ref().clone(), &self.catalog)?)
                    .await?,
            )),
            Statement::Explain { statement, .. }
                if matches!(statement.as_ref(), Statement::Query(_)) =>
            {
                Ok(Prepared::Plan(self.bind(sql.as_ref().clone()).await?))
            }
            _ => Ok(Prepared::Statement(stmt)),
        }
    }

    async fn bind(&self, stmt: Statement) -> Result<LogicalPlan> {
        Ok(self
            .ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(stmt)))
            .await?)
    }

    /// Executes a prepared statement with `params`.
    pub async fn execute(
        &self,
        prepared: Prepared,
        params: Option<ParamValues>,
        settings: &mut Settings,
    ) -> Result<Outcome> {
        match prepared {
            Prepared::Plan(plan) => {
                let plan = match params {
                    Some(p) => plan.with_param_values(p)?,
                    None => plan,
                };
                match plan {
                    LogicalPlan::Dml(dml) => self.execute_dml(dml, settings).await,
                    plan => {
                        let (schema, batches) = self.run_query(plan).await?;
                        Ok(Outcome::Rows { schema, batches })
                    }
                }
            }
            Prepared::Statement(EddyStatement::Flush) => {
                self.runtime.flush().await;
                Ok(Outcome::command("FLUSH"))
            }
            Prepared::Statement(EddyStatement::Sql(stmt)) => {
                self.execute_other(*stmt, settings).await
            }
            Prepared::Statement(stmt @ EddyStatement::CreateSource(_))
            | Prepared::Statement(stmt @ EddyStatement::EmitOnWindowClose(_)) => {
                self.create_statement(stmt, None).await
            }
            Prepared::Statement(EddyStatement::DropSource {
                names,
                if_exists,
                cascade,
            }) => {
                self.drop_relations(RelationKind::Source, &names, if_exists, cascade)
                    .await
            }
            Prepared::Statement(EddyStatement::ShowSources) => Ok(self.list(RelationKind::Source)),
            Prepared::Statement(stmt @ EddyStatement::CreateSink(_)) => {
                self.create_statement(stmt, None).await
            }
            Prepared::Statement(EddyStatement::DropSink { names, if_exists }) => {
                self.drop_relations(RelationKind::Sink, &names, if_exists, false)
                    .await
            }
            Prepared::Statement(EddyStatement::ShowSinks) => Ok(self.show_sinks()),
            Prepared::Statement(EddyStatement::ShowJobs) => Ok(self.show_jobs()),
        }
    }

    async fn execute_other(&self, stmt: Statement, settings: &mut Settings) -> Result<Outcome> {
        let sql = stmt.to_string();
        match &stmt {
            Statement::CreateTable(_) | Statement::CreateView(_) => {
                self.create(&stmt, None, &sql, false).await
            }
            Statement::Drop { .. } => self.drop(&stmt).await,
            Statement::StartTransaction { .. } => Ok(Outcome::TransactionStart),
            Statement::Commit { .. } => Ok(Outcome::TransactionEnd("COMMIT")),
            Statement::Rollback { .. } => Ok(Outcome::TransactionEnd("ROLLBACK")),
            _ => self.execute_show_or_set(stmt, settings).await,
        }
    }

    /// Relations a plan scans (tables and materialized views), by id.
    fn scanned_relations(plan: &LogicalPlan) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Ok(provider) = source_as_provider(&scan.source)
                && let Some(t) = provider.downcast_ref::<RelationTable>()
            {
                ids.push(t.info.id);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Runs a bound query over one committed epoch of everything it reads.
    async fn run_query(&self, plan: LogicalPlan) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let ids = Self::scanned_relations(&plan)?;
        let snapshot = self
            .runtime
            .coordinator()
            .read(&ids)
            .map_err(|e| self.name_failure(e, &ids))?;
        let mut state = self.ctx.state();
        state
            .config_mut()
            .set_extension(Arc::new(ReadSnapshot(snapshot)));
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        let physical = state.create_physical_plan(&plan).await?;
        let batches = datafusion::physical_plan::collect(physical, state.task_ctx()).await?;
        Ok((schema, batches))
    }

    fn name_failure(&self, e: eddy_executor::ExecutorError, ids: &[u32]) -> EddyError {
        let coordinator = self.runtime.coordinator();
        let failed = self
            .catalog
            .all()
            .into_iter()
            .filter(|r| ids.contains(&r.id))
            .find_map(|r| Some((coordinator.failure(r.id)?, r)));
        match failed {
            Some((reason, r)) => EddyError::Coded {
                code: "XX000",
                message: match coordinator.restartable(r.id) {
                    Ok(()) => format!(
                        "materialized view \"{}\" failed and is not maintained until it restarts: {reason} (SHOW JOBS says when)",
                        r.name
                    ),
                    Err(why) => format!(
                        "materialized view \"{}\" failed and is no longer maintained: {reason} (not restarted: {why}); drop and recreate it",
                        r.name
                    ),
                },
            },
            None => e.into(),
        }
    }
}
