//! DataFusion's view of Eddy's relations.
//!
//! - `public`: tables and materialized views read their *committed* rows from
//!   the [`ReadSnapshot`] a query carries, so one query sees every relation
//!   at the same epoch; views are DataFusion views (inlined).
//! - `__eddy_dml`: tables' *latest* stored rows plus each row's storage key,
//!   the target of `UPDATE` and `DELETE`.
//! - `eddy_catalog`: system tables.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::view::ViewTable;
use datafusion::catalog::{MemTable, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use eddy_executor::Runtime;
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
}

fn provider_for(info: Arc<RelationInfo>) -> DfResult<Arc<dyn TableProvider>> {
    Ok(match (&info.kind, &info.view_plan) {
        (RelationKind::View, Some(plan)) => {
            Arc::new(ViewTable::new(plan.clone(), Some(info.sql.clone())))
        }
        _ => Arc::new(RelationTable { info }),
    })
}

#[async_trait]
impl SchemaProvider for PublicSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog.all().iter().map(|r| r.name.clone()).collect()
    }
    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.catalog.get(name).map(provider_for).transpose()
    }
    fn table_exist(&self, name: &str) -> bool {
        self.catalog.get(name).is_some()
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

/// The `eddy_catalog` schema: system tables.
#[derive(Debug)]
pub struct SystemSchema {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The runtime.
    pub runtime: Arc<Runtime>,
}

const VIEW_ERRORS: &str = "view_errors";

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        vec![VIEW_ERRORS.to_string()]
    }
    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if name != VIEW_ERRORS {
            return Ok(None);
        }
        let names: HashMap<u32, String> = self
            .catalog
            .all()
            .iter()
            .map(|r| (r.id, r.name.clone()))
            .collect();
        let mut relation = Vec::new();
        let mut count = Vec::new();
        let mut last = Vec::new();
        for (id, stats) in self.runtime.errors() {
            relation.push(names.get(&id).cloned().unwrap_or_else(|| id.to_string()));
            count.push(stats.count);
            last.push(stats.last);
        }
        for info in self.catalog.all() {
            if let Some(reason) = self.runtime.coordinator().failure(info.id) {
                relation.push(info.name.clone());
                count.push(0);
                last.push(format!("failed: {reason}"));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("relation", DataType::Utf8, false),
            Field::new("error_count", DataType::UInt64, false),
            Field::new("last_error", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(relation)),
                Arc::new(UInt64Array::from(count)),
                Arc::new(StringArray::from(last)),
            ],
        )?;
        Ok(Some(Arc::new(MemTable::try_new(
            schema,
            vec![vec![batch]],
        )?)))
    }
    fn table_exist(&self, name: &str) -> bool {
        name == VIEW_ERRORS
    }
}
