//! State keys: expressions evaluated over a batch and encoded together in
//! the row format, one key per row.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::codec::RowCodec;
use crate::error::Result;
use crate::eval::Evaluator;

/// Encodes the values of `exprs` as one key per row (PARTITION BY, ...).
#[derive(Debug)]
pub struct KeyEncoder {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    codec: RowCodec,
}

impl KeyEncoder {
    /// Keys of `exprs` over rows of `input`.
    pub fn new(exprs: Vec<Arc<dyn PhysicalExpr>>, input: &SchemaRef) -> Result<Self> {
        let types = exprs
            .iter()
            .map(|e| e.data_type(input))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(Self {
            exprs,
            codec: RowCodec::new(types)?,
        })
    }

    /// One key per row of `batch`; without expressions, the same empty key.
    pub fn keys<K: for<'a> From<&'a [u8]>>(
        &self,
        evaluator: &Evaluator,
        batch: &RecordBatch,
    ) -> Result<Vec<K>> {
        if self.exprs.is_empty() {
            return Ok((0..batch.num_rows()).map(|_| K::from(&[])).collect());
        }
        let rows = self
            .codec
            .encode(&evaluator.eval_all(&self.exprs, batch)?)?;
        Ok(rows.iter().map(|r| K::from(r.as_ref())).collect())
    }
}
