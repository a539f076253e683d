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
//! Checkpoints hold the stored rows (`r <row>` -> count, appear, expire)
//! and `now` (`n`), so a recovered filter emits at its first barrier
//! exactly the changes an uninterrupted one would at that time.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;

use eddy_planner::NowIs;

use crate::checkpoint::{Dirty, StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::hash::HashMap;
use crate::message::{Barrier, Op, StreamChunk};
use crate::operator::{Operator, StateSize};

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
}

#[derive(Debug, Clone, Copy)]
struct Stored {
    count: i64,
    span: Span,
}

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
    rows: HashMap<Encoded, Stored>,
    /// (time, row): when a stored row appears or expires.
    changes_at: BTreeSet<(i64, Encoded)>,
    /// Rows changed since the last checkpoint.
    dirty: Dirty<Encoded>,
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
            rows: HashMap::default(),
            changes_at: BTreeSet::new(),
            dirty: Dirty::default(),
            now_changed: true,
        })
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

    fn forget(&mut self, row: &Encoded, span: Span) {
        self.changes_at.remove(&(span.appear, row.clone()));
        self.changes_at.remove(&(span.expire, row.clone()));
    }

    /// Adds `delta` copies of `row` to the state, if it must be kept.
    fn store(&mut self, row: Encoded, span: Span, delta: i64) {
        if !span.stored(self.now) {
            return;
        }
        self.dirty.push(row.clone());
        let entry = self
            .rows
            .entry(row.clone())
            .or_insert(Stored { count: 0, span });
        entry.count += delta;
        if entry.count == 0 {
            self.rows.remove(&row);
            self.forget(&row, span);
            return;
        }
        for t in [span.appear, span.expire] {
            if t > self.now && t != i64::MAX {
                self.changes_at.insert((t, row.clone()));
            }
        }
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
            for (i, span) in spans.iter().enumerate() {
                self.store(rows.row(i).as_ref().into(), *span, chunk.ops[i].sign());
            }
        }
        let mask: BooleanArray = spans.iter().map(|s| Some(s.visible(self.now))).collect();
        out.extend(chunk.filter(&mask)?);
        Ok(())
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        let (before, now) = (self.now, barrier.now.max(self.now));
        if now == before {
            return Ok(());
        }
        self.now = now;
        self.now_changed = true;
        let mut due = Vec::new();
        while let Some(first) = self.changes_at.first()
            && first.0 <= now
        {
            if let Some((_, row)) = self.changes_at.pop_first() {
                due.push(row);
            }
        }
        due.sort_unstable();
        due.dedup();
        let mut changes = Vec::new();
        for row in due {
            let Some(stored) = self.rows.get(&row).copied() else {
                continue;
            };
            let shown = |t| i64::from(stored.span.visible(t)) * stored.count;
            let diff = shown(now) - shown(before);
            let op = if diff > 0 { Op::Insert } else { Op::Delete };
            for _ in 0..diff.unsigned_abs() {
                changes.push((op, row.clone()));
            }
            if !stored.span.stored(now) {
                self.rows.remove(&row);
                self.forget(&row, stored.span);
                self.dirty.push(row);
            }
        }
        self.emit(&changes, out)
    }

    fn state_size(&self) -> Option<StateSize> {
        Some(StateSize::in_memory(
            "TemporalFilter",
            self.rows.len() as u64,
            self.rows.len() as u64,
        ))
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        for row in self.dirty.take() {
            let mut key = Vec::with_capacity(1 + row.len());
            key.push(b'r');
            key.extend_from_slice(&row);
            match self.rows.get(&row) {
                Some(s) => state.put(
                    &key,
                    ValueWriter::new()
                        .i64(s.count)
                        .i64(s.span.appear)
                        .i64(s.span.expire)
                        .finish(),
                ),
                None => state.delete(&key),
            }
        }
        if std::mem::take(&mut self.now_changed) {
            state.put(b"n", ValueWriter::new().i64(self.now).finish());
        }
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.rows.clear();
        self.changes_at.clear();
        let mut rows = Vec::new();
        for (key, value) in entries {
            let mut value = ValueReader::new(&value);
            match key.split_first() {
                Some((b'r', row)) => {
                    let count = value.i64()?;
                    let span = Span {
                        appear: value.i64()?,
                        expire: value.i64()?,
                    };
                    rows.push((Encoded::from(row), span, count));
                }
                Some((b'n', [])) => self.now = value.i64()?,
                _ => {
                    return Err(ExecutorError::CorruptState(
                        "a temporal filter's state key is unknown".into(),
                    ));
                }
            }
        }
        for (row, span, count) in rows {
            self.store(row, span, count);
        }
        // Restoring is not a change to write back.
        self.dirty.take();
        self.now_changed = false;
        Ok(())
    }
}
