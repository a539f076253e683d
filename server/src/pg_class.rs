//! `pg_catalog.pg_class` with materialized views as `relkind = 'm'`.
//!
//! `datafusion-pg-catalog` derives `relkind` from DataFusion's table type,
//! which knows tables and views only, so psql's `\dm` found nothing and
//! materialized views showed up under `\dt`. This wraps its `pg_catalog`
//! schema and rewrites `relkind` to `m` in the rows naming Eddy's
//! materialized views (pg_class is small: it is read whole per query).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::memory::MemorySourceConfig;
use datafusion::catalog::{SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use eddy_storage::RelationKind;

use crate::catalog::Catalog;

/// The `pg_catalog` schema, with [`PgClass`] in place of `pg_class`.
#[derive(Debug)]
pub struct PgCatalogSchema {
    /// `datafusion-pg-catalog`'s schema.
    pub inner: Arc<dyn SchemaProvider>,
    /// Eddy's relations.
    pub catalog: Arc<Catalog>,
}

#[async_trait]
impl SchemaProvider for PgCatalogSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }
    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let table = self.inner.table(name).await?;
        Ok(match (name, table) {
            ("pg_class", Some(inner)) => Some(Arc::new(PgClass {
                inner,
                catalog: self.catalog.clone(),
            })),
            (_, table) => table,
        })
    }
    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// `pg_class` with `relkind = 'm'` for materialized views.
#[derive(Debug)]
struct PgClass {
    inner: Arc<dyn TableProvider>,
    catalog: Arc<Catalog>,
}

#[async_trait]
impl TableProvider for PgClass {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }
    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, None, &[], None).await?;
        let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
        let views: HashSet<String> = self
            .catalog
            .all()
            .iter()
            .filter(|r| r.kind == RelationKind::MaterializedView)
            .map(|r| r.name.clone())
            .collect();
        let schema = self.inner.schema();
        let (Ok(name_index), Ok(kind_index)) =
            (schema.index_of("relname"), schema.index_of("relkind"))
        else {
            return Ok(MemorySourceConfig::try_new_exec(
                &[batches],
                schema,
                projection.cloned(),
            )?);
        };
        let batches = batches
            .into_iter()
            .map(|batch| {
                let (Some(names), Some(kinds)) = (
                    batch.column(name_index).as_string_opt::<i32>(),
                    batch.column(kind_index).as_string_opt::<i32>(),
                ) else {
                    return Ok(batch);
                };
                let relkind: StringArray = (0..batch.num_rows())
                    .map(|i| {
                        if names.is_valid(i) && views.contains(names.value(i)) {
                            Some("m")
                        } else {
                            kinds.is_valid(i).then(|| kinds.value(i))
                        }
                    })
                    .collect();
                let mut columns = batch.columns().to_vec();
                columns[kind_index] = Arc::new(relkind);
                RecordBatch::try_new(batch.schema(), columns)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            schema,
            projection.cloned(),
        )?)
    }
}
