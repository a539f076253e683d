//! Expression evaluation that survives bad rows.
//!
//! Expressions run as DataFusion `PhysicalExpr`s over whole batches. When a
//! batch fails (division by zero, a bad cast, overflow...), it is evaluated
//! again row by row: rows that fail get NULL and the error is recorded in the
//! [`ErrorLog`] under the relation that owns the pipeline. So one bad row
//! neither stops the view nor the server, and the outcome is deterministic:
//! retracting the row later produces the same NULL and cancels it exactly.
//!
//! Counts are exact across recovery: an error is also noted on the thread
//! evaluating it, and the fragment (or source reader) running there takes
//! the note after each synchronous step ([`RowErrors`]) and checkpoints its
//! count with its state. So a restored pipeline counts on from what its
//! checkpoint saw, and rows replayed after it are counted once. (Hash
//! dispatch evaluates keys [`Evaluator::quiet`]ly: the operator downstream
//! evaluates them again and counts them there.)

use std::cell::RefCell;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, new_null_array};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::DataType;
use datafusion::physical_expr::PhysicalExpr;

use crate::checkpoint::{StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::error::Result;
use crate::per_relation::PerRelation;

thread_local! {
    /// Errors recorded on this thread since the last [`RowErrors::take`].
    static NOTED: RefCell<ErrorStats> = RefCell::default();
}

/// The state key of a fragment's or reader's error count.
const ERRORS_KEY: &[u8] = b"errors";

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

    /// Adds what one part of `relation`'s pipeline counted before a
    /// checkpoint it is restored from.
    fn restored(&self, relation: u32, restored: &ErrorStats) {
        self.entries.with(relation, |stats| {
            stats.count += restored.count;
            if !restored.last.is_empty() {
                stats.last = restored.last.clone();
            }
        });
    }
}

/// The errors one fragment or source reader counted since its view
/// started, checkpointed with its state.
#[derive(Debug, Default)]
pub struct RowErrors {
    stats: ErrorStats,
    /// Whether `stats` changed since the last checkpoint.
    changed: bool,
}

impl RowErrors {
    /// Forgets what this thread noted: before a step, errors noted by
    /// whatever ran here before are not this step's.
    pub fn discard_noted() {
        NOTED.with(|n| n.take());
    }

    /// Takes what this thread noted since the last take or discard.
    pub fn take_noted(&mut self) {
        let noted = NOTED.with(|n| n.take());
        if noted.count > 0 {
            self.stats.count += noted.count;
            self.stats.last = noted.last;
            self.changed = true;
        }
    }

    /// Writes the count if it changed (to the fragment's or reader's own
    /// state, [`crate::checkpoint::OWN_STATE`]).
    pub fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        if std::mem::take(&mut self.changed) {
            state.put(
                ERRORS_KEY,
                ValueWriter::new()
                    .i64(self.stats.count as i64)
                    .bytes(self.stats.last.as_bytes())
                    .finish(),
            );
        }
    }

    /// Takes up the checkpointed count, adding it to `relation`'s in `log`.
    pub fn restore(&mut self, entries: StateEntries, relation: u32, log: &ErrorLog) -> Result<()> {
        for (key, value) in entries {
            if key.as_ref() == ERRORS_KEY {
                let mut value = ValueReader::new(&value);
                self.stats.count = value.i64()?.max(0) as u64;
                self.stats.last = String::from_utf8_lossy(value.bytes()?).into_owned();
                log.restored(relation, &self.stats);
            }
        }
        Ok(())
    }
}

/// Evaluates expressions for one relation's pipeline, recording row errors.
#[derive(Debug, Clone)]
pub struct Evaluator {
    relation: u32,
    log: Arc<ErrorLog>,
    /// Whether failed rows are counted.
    counts: bool,
}

impl Evaluator {
    /// An evaluator reporting to `log` under `relation`.
    pub fn new(relation: u32, log: Arc<ErrorLog>) -> Self {
        Self {
            relation,
            log,
            counts: true,
        }
    }

    /// The same evaluator, counting no errors: for expressions evaluated
    /// again, and counted, downstream.
    pub fn quiet(&self) -> Self {
        Self {
            counts: false,
            ..self.clone()
        }
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
                    if self.counts {
                        let message = format!("{e}; the value was set to NULL");
                        NOTED.with(|n| {
                            let mut n = n.borrow_mut();
                            n.count += 1;
                            n.last.clone_from(&message);
                        });
                        self.log.record(self.relation, message);
                    }
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
