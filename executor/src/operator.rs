//! The operator trait, and the stateless operators.
//!
//! An operator turns input chunks into output chunks. Stateful operators may
//! hold changes back and emit them when the epoch ends
//! ([`Operator::on_barrier`]), so a view sees one consolidated change per
//! key per epoch. Watermarks pass through [`Operator::on_watermark`], which
//! says what the input's event-time progress means for the output (and may
//! release rows that became final). Stateful operators write what they
//! changed to every checkpoint and can be rebuilt from it
//! ([`Operator::checkpoint`], [`Operator::restore`]).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use crate::checkpoint::{StateEntries, StateWriter};
use crate::error::Result;
use crate::eval::Evaluator;
use crate::keyed_state::StoreTable;
use crate::late_rows::LateRows;
use crate::message::{Barrier, StreamChunk, Watermark};
use crate::watermark::{derive, is_monotone_in};

/// An incremental operator. `port` says which logical input a chunk came
/// from (0 for single-input operators; 0 = left, 1 = right for joins).
pub trait Operator: Send + std::fmt::Debug {
    /// Processes one chunk, appending output to `out`.
    fn process(
        &mut self,
        port: usize,
        chunk: StreamChunk,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()>;

    /// Called when every input has delivered `barrier`; may emit held-back changes.
    fn on_barrier(&mut self, _barrier: Barrier, _out: &mut Vec<StreamChunk>) -> Result<()> {
        Ok(())
    }

    /// What this operator holds in state, if it holds any.
    fn state_size(&self) -> Option<StateSize> {
        None
    }

    /// Writes the state changed since the last checkpoint (called after
    /// [`Operator::on_barrier`] of every barrier; see [`crate::checkpoint`]).
    fn checkpoint(&mut self, _state: &mut StateWriter<'_>) {}

    /// Replaces the state with what the checkpoints wrote (called once,
    /// before any input, when the pipeline recovers). `entries` are the
    /// operator's own; its keyed state reads its place in the store (see
    /// [`Operator::attach_store`]).
    fn restore(&mut self, _entries: StateEntries) -> Result<()> {
        Ok(())
    }

    /// Gives the operator's keyed state its place in the store (called
    /// before [`Operator::restore`], when the server has a data directory).
    fn attach_store(&mut self, _table: StoreTable) {}

    /// Where it puts the rows it drops as late, if it drops any: the
    /// fragment checkpoints and restores their count and kept rows beside
    /// the operator's own state (see [`crate::late_rows`]).
    fn late_rows(&mut self) -> Option<&mut LateRows> {
        None
    }

    /// Called when input `port`'s watermark advances; returns the output's
    /// watermarks that follow from it. The default forgets it: correct for
    /// any operator, it only keeps downstream state from being released.
    fn on_watermark(
        &mut self,
        _port: usize,
        _watermark: Watermark,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        Ok(vec![])
    }
}

/// The size of one operator's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSize {
    /// Which operator.
    pub operator: &'static str,
    /// Keys: groups, partitions, or join keys.
    pub keys: u64,
    /// Distinct rows (or groups) stored under them.
    pub rows: u64,
    /// Rows (or groups) of them in memory: all, but with the `rocksdb`
    /// state backend.
    pub cached: u64,
}

impl StateSize {
    /// The size of state held all in memory.
    pub fn in_memory(operator: &'static str, keys: u64, rows: u64) -> Self {
        Self {
            operator,
            keys,
            rows,
            cached: rows,
        }
    }
}

/// Computes one expression per output column.
#[derive(Debug)]
pub struct Project {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    input_schema: SchemaRef,
    schema: SchemaRef,
    evaluator: Evaluator,
}

impl Project {
    /// A projection of rows of `input_schema` producing `schema` from `exprs`.
    pub fn new(
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        input_schema: SchemaRef,
        schema: SchemaRef,
        evaluator: Evaluator,
    ) -> Self {
        Self {
            exprs,
            input_schema,
            schema,
            evaluator,
        }
    }
}

impl Operator for Project {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let columns = self.evaluator.eval_all(&self.exprs, &chunk.batch)?;
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(chunk.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        out.push(StreamChunk {
            batch,
            ops: chunk.ops,
        });
        Ok(())
    }

    fn on_watermark(
        &mut self,
        _port: usize,
        watermark: Watermark,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        let mut derived = Vec::new();
        for (column, expr) in self.exprs.iter().enumerate() {
            if is_monotone_in(expr, watermark.column)
                && let Some(value) =
                    derive(expr, &self.input_schema, watermark.column, &watermark.value)?
            {
                derived.push(Watermark { column, value });
            }
        }
        Ok(derived)
    }
}

/// Keeps the rows where a predicate is true.
#[derive(Debug)]
pub struct Filter {
    predicate: Arc<dyn PhysicalExpr>,
    evaluator: Evaluator,
}

impl Filter {
    /// A filter on `predicate`.
    pub fn new(predicate: Arc<dyn PhysicalExpr>, evaluator: Evaluator) -> Self {
        Self {
            predicate,
            evaluator,
        }
    }
}

impl Operator for Filter {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let mask = self
            .evaluator
            .eval_predicate(&self.predicate, &chunk.batch)?;
        out.extend(chunk.filter(&mask)?);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        _port: usize,
        watermark: Watermark,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        Ok(vec![watermark])
    }
}

/// `UNION ALL` of projections of one input, as one operator: every chunk
/// goes through each branch and the results leave as one chunk, so the
/// input is read, and the output dispatched, once rather than once per
/// branch. HOP windows are such a union (a branch per window a row falls
/// in).
#[derive(Debug)]
pub struct ProjectUnion {
    branches: Vec<Project>,
    schema: SchemaRef,
}

impl ProjectUnion {
    /// The union of `branches`, each producing `schema`.
    pub fn new(branches: Vec<Project>, schema: SchemaRef) -> Self {
        Self { branches, schema }
    }
}

impl Operator for ProjectUnion {
    fn process(
        &mut self,
        port: usize,
        chunk: StreamChunk,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let mut projected = Vec::with_capacity(self.branches.len());
        for branch in &mut self.branches {
            branch.process(port, chunk.clone(), &mut projected)?;
        }
        let batches: Vec<&RecordBatch> = projected.iter().map(|c| &c.batch).collect();
        let batch = datafusion::arrow::compute::concat_batches(&self.schema, batches)?;
        let ops: Arc<[_]> = projected
            .iter()
            .flat_map(|c| c.ops.iter().copied())
            .collect();
        out.push(StreamChunk { batch, ops });
        Ok(())
    }

    /// A column's watermark is the least of the branches' (as the union's
    /// inputs' would merge), when every branch derives one.
    fn on_watermark(
        &mut self,
        port: usize,
        watermark: Watermark,
        out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        let mut least: Option<Vec<Watermark>> = None;
        for branch in &mut self.branches {
            let derived = branch.on_watermark(port, watermark.clone(), out)?;
            least = Some(match least {
                None => derived,
                Some(so_far) => so_far
                    .into_iter()
                    .filter_map(|w| {
                        let other = derived.iter().find(|d| d.column == w.column)?;
                        Some(if other.value < w.value {
                            other.clone()
                        } else {
                            w
                        })
                    })
                    .collect(),
            });
        }
        Ok(least.unwrap_or_default())
    }
}
