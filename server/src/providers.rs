//! DataFusion's view of Eddy's relations.
//!
//! - `public`: tables and materialized views read their *committed* rows from
//!   the [`ReadSnapshot`] a query carries, so one query sees every relation
//!   at the same epoch; views are DataFusion views (inlined).
//! - `__eddy_dml`: tables' *latest* stored rows plus each row's storage key,
//!   the target of `UPDATE` and `DELETE`.
//! - sources: bounded ones are generated afresh by each query that reads
//!   them (one partition per split), so the batch engine sees exactly the
//!   rows the stream carries; unbounded ones can only feed views.
//! - `eddy_catalog`: system tables, see [`crate::system_tables`].

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use futures::StreamExt;

use eddy_executor::source::{CHUNK_ROWS, SourceSpec};
use eddy_storage::{RelationKind, Store};

use crate::catalog::{Catalog, RelationInfo};

/// The hidden column holding a row's storage key in `__eddy_dml` tables.
pub const ROW_KEY: &str = "__eddy_row_key";

/// Committed rows of the relations a query reads, all at one epoch.
#[derive(Debug, Default)]
pub struct ReadSnapshot(pub HashMap<u32, Arc<Vec<RecordBatch>>>);

/// A table or materialized view, read at the query's snapshot.
#[derive(Debug)]
pub struct RelationTable {
    /// The relation.
    pub info: Arc<RelationInfo>,
}

#[async_trait]
impl TableProvider for RelationTable {
    fn schema(&self) -> SchemaRef {
        self.info.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = state.config().get_extension::<ReadSnapshot>();
        let batches = snapshot
            .as_ref()
            .and_then(|s| s.0.get(&self.info.id).cloned())
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "no snapshot of {} in this query",
                    self.info.name
                ))
            })?;
        let n = state.config().target_partitions().max(1);
        let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); n.min(batches.len().max(1))];
        let count = partitions.len();
        for (i, b) in batches.iter().enumerate() {
            partitions[i % count].push(b.clone());
        }
        Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            self.info.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// A table's latest stored rows with their storage keys.
#[derive(Debug)]
pub struct LatestTable {
    info: Arc<RelationInfo>,
    store: Arc<Store>,
    schema: SchemaRef,
}

impl LatestTable {
    fn new(info: Arc<RelationInfo>, store: Arc<Store>) -> Self {
        let mut fields: Vec<Field> = info
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROW_KEY, DataType::Binary, false));
        Self {
            schema: Arc::new(Schema::new(fields)),
            info,
            store,
        }
    }
}

#[async_trait]
impl TableProvider for LatestTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let rows = self
            .info
            .rows
            .as_ref()
            .ok_or_else(|| DataFusionError::Internal("not a table".into()))?;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        self.store
            .scan_rows(self.info.id, |k, v| {
                keys.push(k.to_vec());
                values.push(v.to_vec());
            })
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut columns = rows
            .decode(values.iter().map(|v| v.as_slice()))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        columns.push(Arc::new(BinaryArray::from_iter_values(keys.iter())) as ArrayRef);
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// The `public` schema: Eddy's relations.
#[derive(Debug)]
pub struct PublicSchema {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// Default splits of a source.
    pub parallelism: usize,
}

/// One split of a bounded source, generated when a query runs.
#[derive(Debug)]
struct SourceSplit {
    spec: Arc<SourceSpec>,
    index: usize,
    count: usize,
    /// The query's start (its `now()`), the processing time of every row.
    now: i64,
}

impl PartitionStream for SourceSplit {
    fn schema(&self) -> &SchemaRef {
        &self.spec.schema
    }
    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let split = match self.spec.split(self.index, self.count, 0) {
            Ok(split) => split,
            Err(e) => {
                let failed =
                    futures::stream::once(
                        async move { Err(DataFusionError::External(Box::new(e))) },
                    );
                return Box::pin(RecordBatchStreamAdapter::new(
                    self.spec.schema.clone(),
                    failed,
                ));
            }
        };
        let (spec, now) = (self.spec.clone(), self.now);
        // (split, position), until the split ends or fails.
        let batches = futures::stream::unfold(Some((split, 0)), move |state| {
            let spec = spec.clone();
            async move {
                let (mut split, position) = state?;
                let read = match split.available(position, CHUNK_ROWS).await {
                    Ok(None) => return None,
                    // A bounded source is a generator: its chunks are inserts.
                    Ok(Some(end)) => split
                        .read(position, end)
                        .and_then(|chunk| spec.with_processing_time(chunk.batch, now))
                        .map(|batch| (batch, end)),
                    Err(e) => Err(e),
                };
                Some(match read {
                    Ok((batch, end)) => (Ok(batch), Some((split, end))),
                    Err(e) => (Err(DataFusionError::External(Box::new(e))), None),
                })
            }
        })
        .boxed();
        Box::pin(RecordBatchStreamAdapter::new(
            self.spec.schema.clone(),
            batches,
        ))
    }
}

/// A source as a table: bounded sources are generated afresh per query.
#[derive(Debug)]
pub struct SourceTable {
    info: Arc<RelationInfo>,
    splits: usize,
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        self.info.schema.clone()
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(spec) = self.info.source.clone() else {
            return Err(DataFusionError::Internal(format!(
                "source {} has no definition",
                self.info.name
            )));
        };
        if !spec.is_bounded() {
            return Err(DataFusionError::NotImplemented(format!(
                "source \"{}\" is unbounded: read it through a materialized view (or bound it with nexmark.event.num / datagen.rows.total)",
                self.info.name
            )));
        }
        let count = spec.split_count(self.splits);
        // A processing-time column reads as the query's start, as now() does.
        let now = state
            .execution_props()
            .query_execution_start_time
            .and_then(|t| t.timestamp_nanos_opt())
            .unwrap_or_else(|| eddy_planner::system_time_nanos(std::time::SystemTime::now()));
        let partitions = (0..count)
            .map(|index| {
                Arc::new(SourceSplit {
                    spec: spec.clone(),
                    index,
                    count,
                    now,
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        StreamingTable::try_new(spec.schema.clone(), partitions)?
            .scan(state, projection, filters, limit)
            .await
    }
}

fn provider_for(info: Arc<RelationInfo>, splits: usize) -> DfResult<Arc<dyn TableProvider>> {
    Ok(match (&info.kind, &info.view_plan) {
        (RelationKind::View, Some(plan)) => {
            Arc::new(ViewTable::new(plan.clone(), Some(info.sql.clone())))
        }
        (RelationKind::Source, _) => Arc::new(SourceTable { info, splits }),
        _ => Arc::new(RelationTable { info }),
    })
}

#[async_trait]
impl SchemaProvider for PublicSchema {
    // Sinks hold no rows: they are not tables.
    fn table_names(&self) -> Vec<String> {
        self.catalog
            .all()
            .iter()
            .filter(|r| r.kind != RelationKind::Sink)
            .map(|r| r.name.clone())
            .collect()
    }
    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.catalog
            .get(name)
            .filter(|r| r.kind != RelationKind::Sink)
            .map(|info| provider_for(info, self.parallelism))
            .transpose()
    }
    fn table_exist(&self, name: &str) -> bool {
        self.catalog
            .get(name)
            .is_some_and(|r| r.kind != RelationKind::Sink)
    }
}

/// The `__eddy_dml` schema: tables' latest rows, for UPDATE and DELETE.
#[derive(Debug)]
pub struct DmlSchema {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// Where rows live.
    pub store: Arc<Store>,
}

#[async_trait]
impl SchemaProvider for DmlSchema {
    fn table_names(&self) -> Vec<String> {
        vec![]
    }
    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self
            .catalog
            .get(name)
            .filter(|r| r.kind == RelationKind::Table)
            .map(|info| {
                Arc::new(LatestTable::new(info, self.store.clone())) as Arc<dyn TableProvider>
            }))
    }
    fn table_exist(&self, name: &str) -> bool {
        self.catalog
            .get(name)
            .is_some_and(|r| r.kind == RelationKind::Table)
    }
}
