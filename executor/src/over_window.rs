//! Window functions over a changelog: `f(...) OVER (PARTITION BY p ORDER BY
//! o [frame])` for every function DataFusion has (aggregates over any
//! frame, `rank`, `lag`, `first_value`, ...), several sharing one
//! partitioning and order; and top-N, `ROW_NUMBER()` cut at N.
//!
//! Every input row is kept per partition, in order ([`OrderedPartitions`]):
//! a top-N keeps more than N, as a deleted winner is replaced by the next,
//! unless its input only inserts: then it keeps N.
//! At the barrier the rows of every touched partition are decoded into one
//! batch, and each window expression is evaluated by DataFusion's own
//! implementation over each partition's slice of it, so a view computes
//! exactly what the batch query does (a top-N numbers its first N rows
//! itself). The partition's output rows (input columns, then one column
//! per function) are compared with those last emitted as multisets, and
//! only the difference goes out: deletions, then insertions; for a top-N
//! that is the positions whose row changed. A change costs the size of its
//! partition at the next barrier (a top-N: N), whatever the frame;
//! partitions are meant to be keys, not the whole stream.
//!
//! Checkpoints hold the rows; recovery evaluates every partition in memory
//! once to know what was emitted. With the `rocksdb` state backend the
//! partitions used lately are in memory and the others in the store: a
//! chunk's partitions are read back before it is applied, and evaluated
//! then to know what they emitted.
//!
//! A PARTITION BY column with a watermark (a window's bound) closes
//! partitions: when the watermark passes one, its pending changes go out
//! and it leaves state, rows behind the watermark are dropped as late, and
//! the watermark passes on, as the output's rows of a closed partition
//! never change again (see [`crate::closing_partitions`]).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::WindowExpr;

use crate::checkpoint::{StateEntries, StateWriter};
use crate::codec::RowCodec;
use crate::error::Result;
use crate::eval::Evaluator;
use crate::hash::HashMap;
use crate::keyed_state::{StateConfig, StoreTable};
use crate::late_rows::LateRows;
use crate::message::{Barrier, Op, StreamChunk, Watermark};
use crate::operator::{Operator, StateSize};
use crate::ordered_partitions::{Encoded, OrderedPartitions};

/// Input rows a partition batch is cut at, so one barrier's evaluation
/// does not decode every touched partition at once.
const BATCH_ROWS: usize = 8192;

/// What a window operator computes for each partition.
#[derive(Debug, Clone)]
pub enum WindowFunctions {
    /// `ROW_NUMBER()`, only for rows numbered up to `limit` if there is one
    /// (a top-N).
    RowNumber {
        /// The highest number kept.
        limit: Option<usize>,
    },
    /// DataFusion's window expressions, one output column each.
    Exprs(Vec<Arc<dyn WindowExpr>>),
}

/// The window-function operator.
#[derive(Debug)]
pub struct OverWindow {
    rows: OrderedPartitions,
    functions: WindowFunctions,
    input: SchemaRef,
    schema: SchemaRef,
    out_codec: RowCodec,
}

impl OverWindow {
    /// `functions` over rows of `input` partitioned by `partition_by` and
    /// ordered by `order_by` (the functions' own), giving `schema`: the
    /// input's columns, then one per function.
    pub fn new(
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        functions: WindowFunctions,
        input: &SchemaRef,
        schema: SchemaRef,
        evaluator: Evaluator,
    ) -> Result<Self> {
        Ok(Self {
            rows: OrderedPartitions::new(partition_by, order_by, input, evaluator)?,
            functions,
            input: input.clone(),
            out_codec: RowCodec::for_schema(&schema)?,
            schema,
        })
    }

    /// Tells a top-N its input only inserts, so each partition keeps only
    /// its first N rows (see [`OrderedPartitions::keep_first`]); other
    /// window functions need every row still.
    pub fn over_append_only_input(mut self) -> Self {
        if let WindowFunctions::RowNumber { limit: Some(n) } = self.functions {
            self.rows.keep_first(n);
        }
        self
    }

    /// Keeps the partitions as `config` says.
    pub fn with_state_config(mut self, config: StateConfig) -> Self {
        self.rows.configure(config);
        self
    }

    /// Closes partitions as input column `column`'s watermark passes them
    /// (it must be a PARTITION BY column); rows behind it go to `late`.
    pub fn closed_by_watermark(mut self, column: usize, late: LateRows) -> Result<Self> {
        self.rows.close_by_watermark(column, &self.input, late)?;
        Ok(self)
    }

    /// The changes to the output of partitions `keys`, and the output rows
    /// they now have.
    fn changes(&self, keys: &[Encoded], out: &mut Vec<StreamChunk>) -> Result<Vec<Vec<Encoded>>> {
        let outputs = self.evaluate(keys)?;
        let mut changes = Vec::new();
        for (key, new) in keys.iter().zip(&outputs) {
            let old = self.rows.get(key).map_or(&[][..], |p| &p.emitted);
            changes.extend(difference(old, new));
        }
        if !changes.is_empty() {
            let columns = self.out_codec.decode(changes.iter().map(|(_, r)| *r))?;
            out.push(StreamChunk {
                batch: RecordBatch::try_new(self.schema.clone(), columns)?,
                ops: changes.iter().map(|(op, _)| *op).collect::<Vec<_>>().into(),
            });
        }
        Ok(outputs)
    }

    /// The rows of a partition the functions' output covers.
    fn limit(&self) -> usize {
        match self.functions {
            WindowFunctions::RowNumber { limit: Some(n) } => n,
            _ => usize::MAX,
        }
    }

    /// The output rows of each of `keys`' partitions as they stand, encoded,
    /// in order.
    fn evaluate(&self, keys: &[Encoded]) -> Result<Vec<Vec<Encoded>>> {
        let mut out = Vec::with_capacity(keys.len());
        let mut start = 0;
        while start < keys.len() {
            // One batch of whole partitions, of about BATCH_ROWS rows.
            let mut rows: Vec<&[u8]> = Vec::new();
            let mut lens = Vec::new();
            let mut end = start;
            while end < keys.len() && (end == start || rows.len() < BATCH_ROWS) {
                let before = rows.len();
                if let Some(partition) = self.rows.get(&keys[end]) {
                    rows.extend(partition.rows().take(self.limit()).map(|r| r.as_ref()));
                }
                lens.push(rows.len() - before);
                end += 1;
            }
            out.extend(self.evaluate_batch(&rows, &lens)?);
            start = end;
        }
        Ok(out)
    }

    /// The output rows of consecutive partitions of `lens` rows each, whose
    /// input rows, in order, are `rows`.
    fn evaluate_batch(&self, rows: &[&[u8]], lens: &[usize]) -> Result<Vec<Vec<Encoded>>> {
        if rows.is_empty() {
            return Ok(vec![Vec::new(); lens.len()]);
        }
        let columns = self.rows.row_codec().decode(rows.iter().copied())?;
        let batch = RecordBatch::try_new(self.input.clone(), columns)?;
        let mut columns = batch.columns().to_vec();
        match &self.functions {
            WindowFunctions::RowNumber { .. } => {
                let numbers = lens.iter().flat_map(|len| 1..=*len as u64);
                columns.push(Arc::new(UInt64Array::from_iter_values(numbers)));
            }
            WindowFunctions::Exprs(functions) => {
                let mut results: Vec<Vec<ArrayRef>> = vec![Vec::new(); functions.len()];
                let mut offset = 0;
                for len in lens {
                    let partition = batch.slice(offset, *len);
                    for (result, function) in results.iter_mut().zip(functions) {
                        result.push(function.evaluate(&partition)?);
                    }
                    offset += len;
                }
                for result in &results {
                    let parts: Vec<&dyn datafusion::arrow::array::Array> =
                        result.iter().map(|a| a.as_ref()).collect();
                    columns.push(concat(&parts)?);
                }
            }
        }
        let encoded = self.out_codec.encode(&columns)?;
        let mut out = Vec::with_capacity(lens.len());
        let mut offset = 0;
        for len in lens {
            out.push(
                (offset..offset + len)
                    .map(|i| Encoded::from(encoded.row(i).as_ref()))
                    .collect(),
            );
            offset += len;
        }
        Ok(out)
    }
}

/// What turns `old` into `new`, as a multiset: (op, row), deletions first.
fn difference<'a>(old: &'a [Encoded], new: &'a [Encoded]) -> Vec<(Op, &'a [u8])> {
    if old == new {
        return Vec::new();
    }
    let mut counts: HashMap<&[u8], i64> = HashMap::default();
    for row in old {
        *counts.entry(row).or_default() -= 1;
    }
    for row in new {
        *counts.entry(row).or_default() += 1;
    }
    let mut changes = Vec::new();
    // Walk the rows in their order (not the map's), so output is deterministic.
    for (rows, op) in [(old, Op::Delete), (new, Op::Insert)] {
        for row in rows {
            if let Some(n) = counts.get_mut(row.as_ref())
                && *n != 0
                && (*n > 0) == (op == Op::Insert)
            {
                *n -= op.sign();
                changes.push((op, row.as_ref()));
            }
        }
    }
    changes
}

impl Operator for OverWindow {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let partitions = self.rows.partitions_of(&chunk)?;
        let read = self.rows.load(partitions.keys())?;
        // What a partition read back emitted is what its rows give now.
        for (key, emitted) in read.iter().zip(self.evaluate(&read)?) {
            self.rows.set_emitted(key, emitted);
        }
        self.rows.apply(&chunk, partitions)
    }

    fn state_size(&self) -> Option<StateSize> {
        Some(self.rows.state_size(match self.functions {
            WindowFunctions::RowNumber { .. } => "TopN",
            WindowFunctions::Exprs(_) => "OverWindow",
        }))
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        self.rows.checkpoint(state);
    }

    fn attach_store(&mut self, table: StoreTable) {
        self.rows.attach(table);
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.rows.restore(entries)?;
        let keys = self.rows.keys();
        for (key, emitted) in keys.iter().zip(self.evaluate(&keys)?) {
            self.rows.set_emitted(key, emitted);
        }
        Ok(())
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        self.rows.end_epoch(barrier.epoch);
        let mut keys = self.rows.take_touched();
        if keys.is_empty() {
            return Ok(());
        }
        // Same input, same output order: hash sets iterate in no fixed order.
        keys.sort_unstable();
        let outputs = self.changes(&keys, out)?;
        for (key, new) in keys.iter().zip(outputs) {
            self.rows.set_emitted(key, new);
        }
        Ok(())
    }

    fn late_rows(&mut self) -> Option<&mut LateRows> {
        self.rows.closing().map(|c| c.late_rows())
    }

    fn on_watermark(
        &mut self,
        _port: usize,
        watermark: Watermark,
        out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        let Some(closing) = self.rows.closing() else {
            return Ok(vec![]);
        };
        if watermark.column != closing.column() {
            return Ok(vec![]);
        }
        let closed = closing.close_below(&watermark.value)?;
        // Their rows leave state: count them (the `rocksdb` backend reads
        // the ones not in memory).
        self.rows.load(&closed)?;
        // Their last changes go out now: they leave before the barrier.
        let pending: Vec<Encoded> = closed
            .iter()
            .filter(|key| self.rows.is_touched(key))
            .cloned()
            .collect();
        self.changes(&pending, out)?;
        self.rows.forget(&closed);
        // Output columns start with the input's, at the same places.
        Ok(vec![watermark])
    }
}
