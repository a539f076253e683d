//! Symmetric hash join over two changelogs.
//!
//! Each side keeps its rows by join key: key -> row -> (copies, degree),
//! where *degree* is how many rows of the other side the row currently
//! matches (equal key and residual filter true). A change on one side probes
//! the other side's rows of the same key, emits joined rows with the
//! change's op, and updates degrees. Degrees are what make outer, semi and
//! anti joins exact under deletes:
//!
//! ```text
//! left outer:  degree 0 -> 1   retract (l, NULL), emit (l, r)
//!              degree 1 -> 0   retract (l, r),    emit (l, NULL)
//! semi:        emit l while degree > 0;  anti: emit l while degree == 0
//! ```
//!
//! Rows with a NULL key never match (unless the join says NULLs are equal),
//! so they are never stored; they only ever produce their padded row.
//!
//! An interval join (time columns of both sides related by constants in the
//! residual filter) also drops rows no later change can meet, by watermark:
//! see [`expiry`].
//!
//! With a state TTL, a stored row no change touched for the TTL is expired:
//! deleted as if its input had deleted it, results and all (see
//! [`crate::state_ttl`]); a later retraction of it is ignored.
//!
//! Checkpoints hold every stored row (copies and time, and stamp with a
//! TTL; rows with a time keyed by it, see [`state_key`]) and the interval
//! join's watermarks. Degrees are not written: they follow from the two
//! sides' rows and are computed again when a join key's rows are read
//! back, on recovery or by the `rocksdb` backend (see [`state`]; only
//! outer, semi and anti joins read them).

mod apply;
mod expiry;
mod state;
mod state_key;
mod ttl;

use state::{Encoded, JoinState};
use ttl::JoinTtl;

pub use expiry::{Expiry, expiry_rules, key_rules, time_columns};

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;

use eddy_planner::{JoinKind, nanos_to_time, scalar_nanos};

use crate::checkpoint::{StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::codec::RowCodec;
use crate::error::Result;
use crate::eval::Evaluator;
use crate::keyed_state::{StateConfig, StoreTable};
use crate::late_rows::LateRows;
use crate::message::{Barrier, Op, StreamChunk, Watermark};
use crate::operator::{Operator, StateSize};

/// Fixed description of one join input.
#[derive(Debug)]
pub struct JoinSide {
    /// Key expressions over this side's rows.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// This side's row codec.
    pub codec: RowCodec,
}

/// The symmetric hash join operator.
#[derive(Debug)]
pub struct HashJoin {
    // Fixed at plan time.
    kind: JoinKind,
    nulls_equal: bool,
    sides: [JoinSide; 2],
    key_types: Vec<DataType>,
    key_codec: RowCodec,
    null_rows: [Box<[u8]>; 2],
    filter: Option<Arc<dyn PhysicalExpr>>,
    /// Schema of `left ++ right` (what the residual filter sees).
    joined_schema: SchemaRef,
    schema: SchemaRef,
    evaluator: Evaluator,
    // State.
    state: JoinState,
    expiry: Option<Expiry>,
    ttl: Option<JoinTtl>,
    /// Output columns carrying a side's watermark: (column, its type,
    /// side); see [`watermark_columns`].
    watermark_columns: Vec<(usize, DataType, usize)>,
    /// Per side, the watermark last passed on, in nanoseconds.
    passed: [Option<i64>; 2],
}

/// The output columns of a join of `kind` (whose left side has
/// `left_width` columns) that carry a watermark: each side's time column
/// whose rows expire (`time`, left and right; see
/// [`Expiry::output_watermark`]), where the output holds it and never
/// pads it with NULL (a padded row's NULL time would sort below every
/// watermark). Returns (output column, side).
pub fn watermark_columns(
    kind: JoinKind,
    left_width: usize,
    time: [Option<usize>; 2],
) -> Vec<(usize, usize)> {
    let left = time[0].map(|c| (c, 0));
    let right = time[1].map(|c| (left_width + c, 1));
    match kind {
        JoinKind::Inner => left.into_iter().chain(right).collect(),
        JoinKind::Left | JoinKind::LeftSemi | JoinKind::LeftAnti => left.into_iter().collect(),
        JoinKind::Right => right.into_iter().collect(),
        JoinKind::RightSemi | JoinKind::RightAnti => time[1].map(|c| (c, 1)).into_iter().collect(),
        JoinKind::Full => Vec::new(),
    }
}

/// One output row: left and right encoded rows (None = this side absent).
type OutRow<'a> = (Op, Option<&'a [u8]>, Option<&'a [u8]>);

impl HashJoin {
    /// A join of `kind`. `key_types` are the (common) key types.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: JoinKind,
        nulls_equal: bool,
        sides: [JoinSide; 2],
        key_types: Vec<DataType>,
        filter: Option<Arc<dyn PhysicalExpr>>,
        joined_schema: SchemaRef,
        schema: SchemaRef,
        evaluator: Evaluator,
        expiry: Option<Expiry>,
    ) -> Result<Self> {
        let null_rows = [sides[0].codec.null_row()?, sides[1].codec.null_row()?];
        let time = [0, 1].map(|side| expiry.as_ref().and_then(|e| e.time_column(side)));
        let watermark_columns = watermark_columns(kind, sides[0].codec.types().len(), time)
            .into_iter()
            .map(|(c, side)| (c, schema.field(c).data_type().clone(), side))
            .collect();
        Ok(Self {
            kind,
            nulls_equal,
            key_codec: RowCodec::new(key_types.clone())?,
            key_types,
            sides,
            null_rows,
            filter,
            joined_schema,
            schema,
            evaluator,
            state: JoinState::new(),
            expiry,
            ttl: None,
            watermark_columns,
            passed: [None, None],
        })
    }

    /// Expires stored rows no change touched for `ttl`.
    pub fn with_state_ttl(mut self, ttl: Option<Duration>) -> Self {
        let fields = self.joined_schema.fields();
        let left = self.sides[0].codec.types().len();
        let side = |range: std::ops::Range<usize>| {
            Arc::new(Schema::new(fields[range].to_vec())) as SchemaRef
        };
        self.ttl = ttl.map(|ttl| JoinTtl::new(ttl, [side(0..left), side(left..fields.len())]));
        self.state.stamped(self.ttl.is_some());
        self
    }

    /// Keeps the stored rows as `config` says.
    pub fn with_state_config(mut self, config: StateConfig) -> Self {
        self.state.configure(config);
        self
    }

    /// Whether degrees matter: only outer, semi and anti joins read them.
    fn reads_degrees(&self) -> bool {
        self.filtered_side().is_some() || self.pads(0) || self.pads(1)
    }

    /// Computes the degrees of the rows under `keys` from the two sides
    /// (their rows were read back from a checkpoint).
    fn compute_degrees(&mut self, keys: &[Encoded]) -> Result<()> {
        for key in keys {
            let (Some(left), Some(right)) = (self.state.bucket(0, key), self.state.bucket(1, key))
            else {
                continue;
            };
            let pairs: Vec<([Encoded; 2], [i64; 2])> = left
                .iter()
                .flat_map(|(l, le)| {
                    right
                        .iter()
                        .map(move |(r, re)| ([l.clone(), r.clone()], [le.copies, re.copies]))
                })
                .collect();
            let lefts: Vec<&[u8]> = pairs.iter().map(|([l, _], _)| l.as_ref()).collect();
            let rights: Vec<&[u8]> = pairs.iter().map(|([_, r], _)| r.as_ref()).collect();
            let passes = self.filter_pairs(0, &lefts, &rights)?;
            for (([l, r], [left_copies, right_copies]), pass) in pairs.iter().zip(passes) {
                if !pass {
                    continue;
                }
                self.state.add_degree(0, key, l, *right_copies);
                self.state.add_degree(1, key, r, *left_copies);
            }
        }
        Ok(())
    }

    fn pads(&self, side: usize) -> bool {
        if side == 0 {
            self.kind.pads_left()
        } else {
            self.kind.pads_right()
        }
    }

    /// Whether a row of `side` with `degree` matches appears in the output
    /// on its own: NULL-padded in an outer join, or as a semi / anti result.
    fn shows_alone(&self, side: usize, degree: i64) -> bool {
        match self.filtered_side() {
            Some((s, semi)) => s == side && (degree > 0) == semi,
            None => degree == 0 && self.pads(side),
        }
    }

    /// For semi/anti joins: the side whose rows are output.
    fn filtered_side(&self) -> Option<(usize, bool)> {
        match self.kind {
            JoinKind::LeftSemi => Some((0, true)),
            JoinKind::LeftAnti => Some((0, false)),
            JoinKind::RightSemi => Some((1, true)),
            JoinKind::RightAnti => Some((1, false)),
            _ => None,
        }
    }

    /// Encoded keys of `batch` on `side`; None where a key is NULL and NULLs don't match.
    fn keys(&self, side: usize, batch: &RecordBatch) -> Result<Vec<Option<Encoded>>> {
        if self.key_types.is_empty() {
            // A cross join: every row has the same (empty) key.
            return Ok(vec![Some(Encoded::from(&[][..])); batch.num_rows()]);
        }
        let columns = self.evaluator.eval_all(&self.sides[side].keys, batch)?;
        let columns: Vec<ArrayRef> = columns
            .iter()
            .zip(&self.key_types)
            .map(|(c, t)| {
                if c.data_type() == t {
                    Ok(c.clone())
                } else {
                    cast(c, t)
                }
            })
            .collect::<Result<_, _>>()?;
        let rows = self.key_codec.encode(&columns)?;
        Ok((0..batch.num_rows())
            .map(|i| {
                let has_null = columns.iter().any(|c| c.is_null(i));
                (self.nulls_equal || !has_null).then(|| rows.row(i).as_ref().into())
            })
            .collect())
    }

    /// Decodes output rows into a batch of the output schema.
    fn build(&self, rows: &[OutRow<'_>]) -> Result<StreamChunk> {
        let ops: Vec<Op> = rows.iter().map(|r| r.0).collect();
        let mut columns = Vec::new();
        let (with_left, with_right) = match self.filtered_side() {
            Some((0, _)) => (true, false),
            Some(_) => (false, true),
            None => (true, true),
        };
        if with_left {
            columns.extend(
                self.sides[0]
                    .codec
                    .decode(rows.iter().map(|r| r.1.unwrap_or(&self.null_rows[0])))?,
            );
        }
        if with_right {
            columns.extend(
                self.sides[1]
                    .codec
                    .decode(rows.iter().map(|r| r.2.unwrap_or(&self.null_rows[1])))?,
            );
        }
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(StreamChunk {
            batch,
            ops: ops.into(),
        })
    }

    /// Which candidate pairs pass the residual filter.
    fn filter_pairs(&self, side: usize, mine: &[&[u8]], theirs: &[&[u8]]) -> Result<Vec<bool>> {
        let Some(filter) = &self.filter else {
            return Ok(vec![true; mine.len()]);
        };
        if mine.is_empty() {
            return Ok(vec![]);
        }
        let (left, right) = if side == 0 {
            (mine, theirs)
        } else {
            (theirs, mine)
        };
        let mut columns = self.sides[0].codec.decode(left.iter().copied())?;
        columns.extend(self.sides[1].codec.decode(right.iter().copied())?);
        let batch = RecordBatch::try_new(self.joined_schema.clone(), columns)?;
        let mask = self.evaluator.eval_predicate(filter, &batch)?;
        Ok((0..mask.len())
            .map(|i| mask.is_valid(i) && mask.value(i))
            .collect())
    }
}

impl Operator for HashJoin {
    fn state_size(&self) -> Option<StateSize> {
        let (keys, rows, held) = self.state.size();
        Some(StateSize {
            operator: "HashJoin",
            keys,
            rows,
            cached: held,
        })
    }

    fn late_rows(&mut self) -> Option<&mut LateRows> {
        self.expiry.as_mut().map(Expiry::late_rows)
    }

    fn attach_store(&mut self, table: StoreTable) {
        if let Some(ttl) = self.ttl.as_mut() {
            ttl.attach(table.clone(), self.state.config());
        }
        self.state.attach(table, self.expiry.is_some());
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        let epoch = self.state.epoch();
        self.state.checkpoint(state);
        if let Some(ttl) = self.ttl.as_mut() {
            ttl.checkpoint(&self.state, state, epoch);
        }
        if self.state.indexes_times()
            && let Some(expiry) = self.expiry.as_mut()
        {
            expiry.forget_stored();
        }
        if let Some(expiry) = &self.expiry {
            let mut value = ValueWriter::new();
            for (side, column, w) in expiry.watermarks() {
                value.u8(side as u8).u32(column as u32).i64(w);
            }
            state.put(state_key::WATERMARKS, value.finish());
        }
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        if let Some(ttl) = self.ttl.as_mut() {
            ttl.clear();
        }
        let (expiry, ttl) = (&mut self.expiry, &mut self.ttl);
        let watermarks = self.state.restore(entries, |side, key, row, entry| {
            if let Some(ttl) = ttl.as_mut() {
                let stored_row = (side as u8, key.clone(), row.clone());
                ttl.restored(&stored_row, entry.stamp);
            }
            if let (Some(expiry), Some(t)) = (expiry.as_mut(), entry.time) {
                expiry.stored(side, t, key, row);
            }
        })?;
        if let Some(watermarks) = watermarks {
            let mut value = ValueReader::new(&watermarks);
            while !value.rest().is_empty() {
                let (side, column, w) = (value.u8()?, value.u32()?, value.i64()?);
                if let Some(expiry) = self.expiry.as_mut() {
                    expiry.observe(usize::from(side).min(1), column as usize, w);
                }
            }
        }
        if self.reads_degrees() {
            let keys = self.state.keys_on_both_sides();
            self.compute_degrees(&keys)?;
        }
        if let Some(ttl) = self.ttl.as_mut() {
            ttl.restore(&self.state)?;
        }
        Ok(())
    }

    fn process(
        &mut self,
        side: usize,
        chunk: StreamChunk,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let (chunk, times) = self.drop_late(side, chunk)?;
        self.apply(side, chunk, times, out)
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        self.state.end_epoch(barrier.epoch);
        self.expire(barrier.now, out)
    }

    fn on_watermark(
        &mut self,
        port: usize,
        watermark: Watermark,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        let Some(expiry) = self.expiry.as_mut() else {
            return Ok(vec![]);
        };
        let Some(nanos) = scalar_nanos(&watermark.value) else {
            return Ok(vec![]);
        };
        if !expiry.observe(port, watermark.column, nanos) {
            return Ok(vec![]);
        }
        for side in 0..2 {
            let Some(expiry) = self.expiry.as_mut() else {
                break;
            };
            let Some((threshold, rows)) = expiry.expired(side) else {
                continue;
            };
            let mut ttl = self.ttl.as_mut();
            self.state
                .expire(side, threshold, rows, |key, row, entry| {
                    if let Some(ttl) = ttl.as_mut() {
                        ttl.forget(&(side as u8, key.clone(), row.clone()), entry.stamp);
                    }
                })?;
        }
        // A TTL retracts expired rows whatever their time.
        if self.ttl.is_some() {
            return Ok(vec![]);
        }
        let mut out = Vec::new();
        for (column, data_type, side) in &self.watermark_columns {
            let Some(w) = self.expiry.as_ref().and_then(|e| e.output_watermark(*side)) else {
                continue;
            };
            if self.passed[*side].is_some_and(|p| p >= w) {
                continue;
            }
            self.passed[*side] = Some(w);
            let value = nanos_to_time(Int64Array::from(vec![w]), data_type)?;
            out.push(Watermark {
                column: *column,
                value: ScalarValue::try_from_array(&value, 0)?,
            });
        }
        Ok(out)
    }
}
