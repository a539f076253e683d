//! The temporal filter: keeps a row while `NOW() <is> bound(row)` holds for
//! each of its bounds, where `NOW()` is the time of the last barrier (see
//! `eddy_planner::TemporalBound`).
//!
//! Each row is visible during one span of processing time, `[appear,
//! expire)`, computed from its bounds. Invariant: after every chunk and
//! every barrier, the rows emitted so far are exactly the input's rows
//! visible at `now` (the last barrier's time), with their multiplicities.
//!
//! - A chunk is filtered at `now`, as a plain filter would: the output is
//!   the input's rows visible at `now`, with their ops.
//! - A barrier at `t` moves `now` to `t`: every stored row whose
//!   visibility differs between the two times is inserted or retracted.
//! - Stored are the rows that may change visibility later: not yet
//!   expired, and either not yet visible or due to expire. A row that
//!   never expires and is visible needs no state (its later changes pass
//!   as they are), and neither does an expired one (no change to it can
//!   show). Counts may go negative: a row's retraction can reach this
//!   instance before its insertion did reach another, and the sum over
//!   instances is what is emitted.
//!
//! Stored rows wait in a [`TimeOrderedState`] under the next time their
//! visibility changes (when they appear if that is later than `now`, else
//! when they expire), with their count and span: a barrier takes the rows
//! whose time came, in one range, and stores again those that can still
//! change. So under the `rocksdb` backend memory holds the rows due next
//! and reads the others back from the store when their time comes.
//! Checkpoints hold the stored rows and `now` (`n`, in the operator's own
//! range), so a recovered filter emits at its first barrier exactly the
//! changes an uninterrupted one would at that time.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use eddy_planner::NowIs;

use crate::checkpoint::{StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::keyed_state::{StateConfig, StoreTable};
use crate::message::{Barrier, Op, StreamChunk};
use crate::operator::{Operator, StateSize};
use crate::time_ordered_state::TimeOrderedState;

/// An encoded row (Arrow row format).
type Encoded = Arc<[u8]>;

/// When a row is visible: `appear <= now < expire`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    appear: i64,
    expire: i64,
}

impl Span {
    /// Never visible: a bound was NULL.
    const NEVER: Span = Span {
        appear: i64::MAX,
        expire: i64::MIN,
    };

    fn visible(self, now: i64) -> bool {
        self.appear <= now && now < self.expire
    }

    /// Whether the row must be kept at `now` (see the module docs).
    fn stored(self, now: i64) -> bool {
        now < self.expire && (now < self.appear || self.expire != i64::MAX)
    }

    /// When, after `now`, the row's visibility changes next (it is stored).
    fn next_change(self, now: i64) -> i64 {
        if now < self.appear {
            self.appear
        } else {
            self.expire
        }
    }
}

/// A stored row's copies and span.
#[derive(Debug, Clone, Copy)]
struct Stored {
    count: i64,
    span: Span,
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        ValueWriter::new()
            .i64(self.count)
            .i64(self.span.appear)
            .i64(self.span.expire)
            .finish()
    }

    fn decode(value: &[u8]) -> Result<Self> {
        let mut value = ValueReader::new(value);
        Ok(Self {
            count: value.i64()?,
            span: Span {
                appear: value.i64()?,
                expire: value.i64()?,
            },
        })
    }
}

/// The tag of the stored rows in the keyed range.
const ROWS: u8 = b't';

/// One bound, evaluated to nanoseconds since the Unix epoch.
#[derive(Debug)]
struct Bound {
    is: NowIs,
    expr: Arc<dyn PhysicalExpr>,
}

/// The temporal filter operator.
#[derive(Debug)]
pub struct TemporalFilter {
    bounds: Vec<Bound>,
    codec: RowCodec,
    schema: SchemaRef,
    evaluator: Evaluator,
    now: i64,
    /// The stored rows, under their next change's time.
    rows: TimeOrderedState<Stored>,
    /// The epoch being processed.
    epoch: u64,
    now_changed: bool,
}

impl TemporalFilter {
    /// A filter of rows of `schema` on `bounds` (each `Int64`
    /// nanoseconds), starting at time `now`.
    pub fn new(
        bounds: Vec<(NowIs, Arc<dyn PhysicalExpr>)>,
        schema: SchemaRef,
        evaluator: Evaluator,
        now: i64,
    ) -> Result<Self> {
        Ok(Self {
            bounds: bounds
                .into_iter()
                .map(|(is, expr)| Bound { is, expr })
                .collect(),
            codec: RowCodec::for_schema(&schema)?,
            schema,
            evaluator,
            now,
            rows: TimeOrderedState::new(ROWS, Stored::encode, Stored::decode),
            epoch: 1,
            now_changed: true,
        })
    }

    /// Keeps the stored rows as `config` says.
    pub fn with_state_config(mut self, config: StateConfig) -> Self {
        self.rows.place().configure(config);
        self
    }

    /// Each row's span.
    fn spans(&self, batch: &RecordBatch) -> Result<Vec<Span>> {
        let mut spans = vec![
            Span {
                appear: i64::MIN,
                expire: i64::MAX,
            };
            batch.num_rows()
        ];
        for bound in &self.bounds {
            let values = self.evaluator.eval(&bound.expr, batch)?;
            let values = values
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| {
                    ExecutorError::Internal("a temporal bound is not Int64 nanoseconds".into())
                })?;
            for (span, value) in spans.iter_mut().zip(values.iter()) {
                let Some(b) = value else {
                    *span = Span::NEVER;
                    continue;
                };
                match bound.is {
                    NowIs::Before => span.expire = span.expire.min(b),
                    NowIs::AtOrBefore => span.expire = span.expire.min(b.saturating_add(1)),
                    NowIs::After => span.appear = span.appear.max(b.saturating_add(1)),
                    NowIs::AtOrAfter => span.appear = span.appear.max(b),
                }
            }
        }
        Ok(spans)
    }

    /// Loads what [`Self::store`] reads for `rows` (row, span).
    fn load<'r>(&mut self, rows: impl IntoIterator<Item = (&'r [u8], Span)>) -> Result<()> {
        let now = self.now;
        self.rows.load(
            rows.into_iter()
                .filter(|(_, span)| span.stored(now))
                .map(|(row, span)| (span.next_change(now), row)),
        )
    }

    /// Adds `delta` copies of `row` (loaded) to the state, if it must be kept.
    fn store(&mut self, row: &[u8], span: Span, delta: i64) {
        if !span.stored(self.now) {
            return;
        }
        let time = span.next_change(self.now);
        self.rows.update(time, row, |stored| {
            let count = stored.map_or(0, |s| s.count) + delta;
            (count != 0).then_some(Stored { count, span })
        });
    }

    fn emit(&self, rows: &[(Op, Encoded)], out: &mut Vec<StreamChunk>) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let columns = self.codec.decode(rows.iter().map(|(_, r)| r.as_ref()))?;
        out.push(StreamChunk {
            batch: RecordBatch::try_new(self.schema.clone(), columns)?,
            ops: rows.iter().map(|(op, _)| *op).collect::<Vec<_>>().into(),
        });
        Ok(())
    }
}

impl Operator for TemporalFilter {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let spans = self.spans(&chunk.batch)?;
        if spans.iter().any(|s| s.stored(self.now)) {
            let rows = self.codec.encode(chunk.batch.columns())?;
            self.load(
                spans
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (rows.row(i).data(), *s)),
            )?;
            for (i, span) in spans.iter().enumerate() {
                self.store(rows.row(i).data(), *span, chunk.ops[i].sign());
            }
        }
        let mask: BooleanArray = spans.iter().map(|s| Some(s.visible(self.now))).collect();
        out.extend(chunk.filter(&mask)?);
        Ok(())
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        self.epoch = barrier.epoch;
        let (before, now) = (self.now, barrier.now.max(self.now));
        if now == before {
            return Ok(());
        }
        self.now = now;
        self.now_changed = true;
        let mut changes = Vec::new();
        let mut again = Vec::new();
        for (_, row, stored) in self.rows.take_below(now.saturating_add(1))? {
            let shown = |t| i64::from(stored.span.visible(t)) * stored.count;
            let diff = shown(now) - shown(before);
            let op = if diff > 0 { Op::Insert } else { Op::Delete };
            for _ in 0..diff.unsigned_abs() {
                changes.push((op, row.clone()));
            }
            if stored.span.stored(now) {
                again.push((row, stored));
            }
        }
        self.load(again.iter().map(|(row, s)| (row.as_ref(), s.span)))?;
        for (row, stored) in again {
            self.store(&row, stored.span, stored.count);
        }
        self.emit(&changes, out)
    }

    fn state_size(&self) -> Option<StateSize> {
        let rows = self.rows.len();
        Some(StateSize {
            operator: "TemporalFilter",
            keys: rows,
            rows,
            cached: self.rows.cached(),
        })
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        self.rows.checkpoint(state, self.epoch);
        if std::mem::take(&mut self.now_changed) {
            state.put(b"n", ValueWriter::new().i64(self.now).finish());
        }
    }

    fn attach_store(&mut self, table: StoreTable) {
        self.rows.place().attach(table);
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        for (key, value) in entries {
            match key.as_ref() {
                b"n" => self.now = ValueReader::new(&value).i64()?,
                _ => {
                    return Err(ExecutorError::CorruptState(
                        "a temporal filter's state key is unknown".into(),
                    ));
                }
            }
        }
        self.rows.restore()?;
        // Restoring is not a change to write back.
        self.now_changed = false;
        Ok(())
    }
}
