//! Expression evaluation that survives bad rows.
//!
//! Expressions run as DataFusion `PhysicalExpr`s over whole batches. When a
//! batch fails (division by zero, a bad cast, overflow...), it is evaluated
//! again row by row: rows that fail get NULL and the error is recorded in the
//! [`ErrorLog`] under the relation that owns the pipeline. So one bad row
//! neither stops the view nor the server, and the outcome is deterministic:
//! retracting the row later produces the same NULL and cancels it exactly.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::DataType;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::Result;
use crate::per_relation::PerRelation;

/// Expression errors per relation, for the `eddy_catalog.view_errors` system table.
#[derive(Debug, Default)]
pub struct ErrorLog {
    entries: PerRelation<ErrorStats>,
}

/// Errors seen by one relation's pipeline.
#[derive(Debug, Clone, Default)]
pub struct ErrorStats {
    /// How many row evaluations failed.
    pub count: u64,
    /// The latest error message.
    pub last: String,
}

impl ErrorLog {
    /// Records one failed evaluation for `relation`.
    pub fn record(&self, relation: u32, message: String) {
        self.entries.with(relation, |stats| {
            stats.count += 1;
            stats.last = message;
        });
    }

    /// A copy of every relation's stats.
    pub fn snapshot(&self) -> Vec<(u32, ErrorStats)> {
        self.entries.snapshot()
    }

    /// Forgets a dropped relation.
    pub fn forget(&self, relation: u32) {
        self.entries.forget(relation);
    }
}

/// Evaluates expressions for one relation's pipeline, recording row errors.
#[derive(Debug, Clone)]
pub struct Evaluator {
    relation: u32,
    log: Arc<ErrorLog>,
}

impl Evaluator {
    /// An evaluator reporting to `log` under `relation`.
    pub fn new(relation: u32, log: Arc<ErrorLog>) -> Self {
        Self { relation, log }
    }

    /// Evaluates `expr` over `batch`; failing rows become NULL of `expr`'s type.
    pub fn eval(&self, expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
        match expr
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
        {
            Ok(array) => Ok(array),
            Err(_) => self.eval_row_by_row(expr, batch),
        }
    }

    /// Evaluates every expression of `exprs` over `batch`.
    pub fn eval_all(
        &self,
        exprs: &[Arc<dyn PhysicalExpr>],
        batch: &RecordBatch,
    ) -> Result<Vec<ArrayRef>> {
        exprs.iter().map(|e| self.eval(e, batch)).collect()
    }

    /// Evaluates a predicate into a mask without NULLs: rows where it is
    /// NULL or fails are false.
    pub fn eval_predicate(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        batch: &RecordBatch,
    ) -> Result<BooleanArray> {
        let array = self.eval(expr, batch)?;
        let array = datafusion::arrow::compute::cast(&array, &DataType::Boolean)?;
        let mask = array
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .unwrap_or_else(|| BooleanArray::from(vec![false; batch.num_rows()]));
        // NULL counts as false, as in WHERE.
        Ok(match mask.nulls() {
            Some(_) => datafusion::arrow::compute::prep_null_mask_filter(&mask),
            None => mask,
        })
    }

    fn eval_row_by_row(
        &self,
        expr: &Arc<dyn PhysicalExpr>,
        batch: &RecordBatch,
    ) -> Result<ArrayRef> {
        let data_type = expr.data_type(&batch.schema())?;
        let mut parts = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let row = batch.slice(i, 1);
            let part = match expr.evaluate(&row).and_then(|v| v.into_array(1)) {
                Ok(a) if a.data_type() == &data_type => a,
                Ok(a) => datafusion::arrow::compute::cast(&a, &data_type)?,
                Err(e) => {
                    self.log
                        .record(self.relation, format!("{e}; the value was set to NULL"));
                    new_null_array(&data_type, 1)
                }
            };
            parts.push(part);
        }
        if parts.is_empty() {
            return Ok(new_null_array(&data_type, 0));
        }
        let refs: Vec<&dyn datafusion::arrow::array::Array> =
            parts.iter().map(|a| a.as_ref()).collect();
        Ok(concat(&refs)?)
    }
}
