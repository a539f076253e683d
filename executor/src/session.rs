//! Session windows over a changelog.
//!
//! Each input row comes out with its session's bounds appended (see
//! `eddy_planner::same_session` for what a session is). State per partition:
//! its sessions (first time -> last time) and its rows by time. A change can
//! move session bounds — an insert may join sessions, a delete may split one.
//! Changes only update state during an epoch; at its end (or before a
//! watermark leaves), each touched partition compares its sessions with
//! those it last emitted: every row of a session that changed is retracted
//! with its old bounds and inserted with the new ones, and rows changed
//! within an unchanged session are emitted as they are. So a session that
//! grows by many rows in one epoch is re-emitted once, not once per row.
//!
//! With a watermark `w` on the time column, a session whose end (last time
//! plus gap) is at most `w` can never change: a row at `t >= w` is at least
//! `gap` after its last row. Such sessions leave state, rows below `w` are
//! late (dropped and counted), and every later output row has
//! `window_end > w`, so `w` is the output's watermark on `window_end`.
//! `window_start` and the time column get none: a merge re-emits old rows.
//!
//! Checkpoints hold the rows (`r <partition> <time> <row>` -> multiplicity)
//! and the watermark (`w`); sessions follow from the rows' times and are
//! computed again on recovery.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;

use eddy_planner::{SessionBound, nanos_to_time, same_session, scalar_nanos, time_nanos};

use crate::checkpoint::{
    Dirty, StateEntries, StateWriter, ValueReader, ValueWriter, push_part, split_part,
};
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::hash::HashMap;
use crate::key::KeyEncoder;
use crate::late_rows::LateRows;
use crate::message::{Barrier, Op, StreamChunk, Watermark};
use crate::operator::{Operator, StateSize};

/// An encoded value (Arrow row format).
type Encoded = Arc<[u8]>;

/// A session: (first time, last time), in nanoseconds.
type Span = (i64, i64);

#[derive(Debug, Default)]
struct Partition {
    /// First time -> last time of each session; sessions never overlap.
    sessions: BTreeMap<i64, i64>,
    /// Time -> row -> multiplicity.
    rows: BTreeMap<i64, HashMap<Encoded, i64>>,
}

impl Partition {
    /// Runs of this partition's row times within `span` that form sessions.
    fn split(&self, span: Span, gap: i64) -> Vec<Span> {
        let mut runs: Vec<Span> = Vec::new();
        for &t in self.rows.range(span.0..=span.1).map(|(t, _)| t) {
            match runs.last_mut() {
                Some(run) if same_session(run.1, t, gap) => run.1 = t,
                _ => runs.push((t, t)),
            }
        }
        runs
    }
}

/// The session window operator.
#[derive(Debug)]
pub struct SessionWindow {
    partitions_of: KeyEncoder,
    time: Arc<dyn PhysicalExpr>,
    /// The input column `time` is, when it is one (watermarks arrive on it).
    time_column: Option<usize>,
    time_type: DataType,
    gap: i64,
    bounds: Vec<SessionBound>,
    row_codec: RowCodec,
    schema: SchemaRef,
    evaluator: Evaluator,
    late: LateRows,
    partitions: HashMap<Encoded, Partition>,
    /// (end, partition, first) of every session in state, to close by watermark.
    by_end: BTreeSet<(i64, Encoded, i64)>,
    /// Distinct (time, row) entries in state.
    stored: u64,
    /// Rows below this time are late.
    closed_below: Option<i64>,
    /// Partitions changed this epoch.
    touched: HashMap<Encoded, Touched>,
    /// Net change this epoch of rows with a NULL time (they have no session).
    untimed: HashMap<Encoded, i64>,
    /// (partition, time, row) changed since the last checkpoint.
    dirty: Dirty<(Encoded, i64, Encoded)>,
}

/// State key of a stored row.
fn row_state_key(partition: &[u8], time: i64, row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(13 + partition.len() + row.len());
    k.push(b'r');
    push_part(&mut k, partition);
    k.extend_from_slice(&time.to_be_bytes());
    k.extend_from_slice(row);
    k
}

/// One partition's changes this epoch.
#[derive(Debug, Default)]
struct Touched {
    /// Its sessions as last emitted.
    before: BTreeMap<i64, i64>,
    /// Net row changes: time -> row -> count.
    delta: HashMap<i64, HashMap<Encoded, i64>>,
}

/// The session of `sessions` containing `t`, if any.
fn containing(sessions: &BTreeMap<i64, i64>, t: i64) -> Option<Span> {
    sessions
        .range(..=t)
        .next_back()
        .filter(|(_, last)| **last >= t)
        .map(|(f, l)| (*f, *l))
}

fn corrupt_key() -> ExecutorError {
    ExecutorError::CorruptState("a session window's state key is unknown".into())
}

/// Sessions of `a` that `b` does not have, bounds and all.
fn changed(a: &BTreeMap<i64, i64>, b: &BTreeMap<i64, i64>) -> Vec<Span> {
    a.iter()
        .filter(|(first, last)| b.get(first) != Some(last))
        .map(|(f, l)| (*f, *l))
        .collect()
}

/// Everything [`SessionWindow::new`] needs.
#[derive(Debug)]
pub struct SessionWindowSpec {
    /// Partitioning expressions.
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// The time expression.
    pub time: Arc<dyn PhysicalExpr>,
    /// The input column `time` is, if it is one.
    pub time_column: Option<usize>,
    /// Gap in nanoseconds.
    pub gap: i64,
    /// Bounds appended to each row, in order.
    pub bounds: Vec<SessionBound>,
}

impl SessionWindow {
    /// Session windows over rows of `input`, producing `schema`.
    pub fn new(
        spec: SessionWindowSpec,
        input: &SchemaRef,
        schema: SchemaRef,
        evaluator: Evaluator,
        late: LateRows,
    ) -> Result<Self> {
        let time_type = spec.time.data_type(input)?;
        Ok(Self {
            partitions_of: KeyEncoder::new(spec.partition_by, input)?,
            time: spec.time,
            time_column: spec.time_column,
            time_type,
            gap: spec.gap,
            bounds: spec.bounds,
            row_codec: RowCodec::for_schema(input)?,
            schema,
            evaluator,
            late,
            partitions: HashMap::default(),
            by_end: BTreeSet::new(),
            stored: 0,
            closed_below: None,
            touched: HashMap::default(),
            untimed: HashMap::default(),
            dirty: Dirty::default(),
        })
    }

    fn end(&self, span: Span) -> i64 {
        span.1.saturating_add(self.gap)
    }

    /// Replaces sessions `old` of partition `key` by `new` (and in the index).
    fn reshape(&mut self, key: &Encoded, old: &[Span], new: &[Span]) {
        if let Some(partition) = self.partitions.get_mut(key) {
            for span in old {
                partition.sessions.remove(&span.0);
            }
            for span in new {
                partition.sessions.insert(span.0, span.1);
            }
        }
        for span in old {
            self.by_end.remove(&(self.end(*span), key.clone(), span.0));
        }
        for span in new {
            self.by_end.insert((self.end(*span), key.clone(), span.0));
        }
    }

    /// Remembers partition `key`'s sessions as emitted, at its first change this epoch.
    fn touch(&mut self, key: &Encoded) {
        if !self.touched.contains_key(key) {
            let before = self
                .partitions
                .get(key)
                .map(|p| p.sessions.clone())
                .unwrap_or_default();
            self.touched.insert(
                key.clone(),
                Touched {
                    before,
                    delta: HashMap::default(),
                },
            );
        }
    }

    /// Adds one copy of `row`.
    fn insert(&mut self, key: &Encoded, row: &Encoded, t: i64) {
        let gap = self.gap;
        let partition = self.partitions.entry(key.clone()).or_default();
        let mut joined: Vec<Span> = Vec::new();
        if let Some((&first, &last)) = partition.sessions.range(..=t).next_back()
            && (last >= t || same_session(last, t, gap))
        {
            joined.push((first, last));
        }
        if let Some((&first, &last)) = partition
            .sessions
            .range((Bound::Excluded(t), Bound::Unbounded))
            .next()
            && same_session(t, first, gap)
        {
            joined.push((first, last));
        }
        let copies = partition
            .rows
            .entry(t)
            .or_default()
            .entry(row.clone())
            .or_insert(0);
        if *copies == 0 {
            self.stored += 1;
        }
        *copies += 1;
        let first = joined.iter().map(|s| s.0).fold(t, i64::min);
        let last = joined.iter().map(|s| s.1).fold(t, i64::max);
        let span = (first, last);
        if joined != [span] {
            self.reshape(key, &joined, &[span]);
        }
    }

    /// Retracts one copy of `row`; false if there was none.
    fn delete(&mut self, key: &Encoded, row: &Encoded, t: i64) -> bool {
        let Some(partition) = self.partitions.get_mut(key) else {
            return false;
        };
        let Some(span) = containing(&partition.sessions, t) else {
            return false;
        };
        let Some(rows) = partition.rows.get_mut(&t) else {
            return false;
        };
        let Some(n) = rows.get_mut(row) else {
            return false;
        };
        *n -= 1;
        if *n <= 0 {
            rows.remove(row);
            self.stored -= 1;
            if rows.is_empty() {
                partition.rows.remove(&t);
            }
        }
        let runs = partition.split(span, self.gap);
        let empty = partition.rows.is_empty();
        if runs != [span] {
            self.reshape(key, &[span], &runs);
        }
        if empty {
            self.partitions.remove(key);
        }
        true
    }

    /// Drops sessions that end at or before `watermark` from state.
    fn close(&mut self, watermark: i64) {
        while let Some((end, key, first)) = self.by_end.first().cloned() {
            if end > watermark {
                break;
            }
            self.by_end.pop_first();
            let Some(partition) = self.partitions.get_mut(&key) else {
                continue;
            };
            if let Some(last) = partition.sessions.remove(&first) {
                let times: Vec<i64> = partition
                    .rows
                    .range(first..=last)
                    .map(|(t, _)| *t)
                    .collect();
                for t in times {
                    if let Some(rows) = partition.rows.remove(&t) {
                        self.stored -= rows.len() as u64;
                        for row in rows.into_keys() {
                            self.dirty.push((key.clone(), t, row));
                        }
                    }
                }
            }
            if partition.sessions.is_empty() {
                self.partitions.remove(&key);
            }
        }
    }

    /// The output changes of partition `key` since it was last emitted:
    /// (row, session, count) with a signed count.
    fn settle(
        &self,
        key: &Encoded,
        touched: &Touched,
        out: &mut Vec<(Encoded, Option<Span>, i64)>,
    ) {
        let Touched { before, delta } = touched;
        let partition = self.partitions.get(key);
        let no_sessions = BTreeMap::new();
        let after = partition.map_or(&no_sessions, |p| &p.sessions);
        let (gone, new) = (changed(before, after), changed(after, before));
        let now = |t: i64, row: &Encoded| {
            partition
                .and_then(|p| p.rows.get(&t))
                .and_then(|rows| rows.get(row))
                .copied()
                .unwrap_or(0)
        };
        let change = |t: i64, row: &Encoded| {
            delta
                .get(&t)
                .and_then(|rows| rows.get(row))
                .copied()
                .unwrap_or(0)
        };
        if let Some(p) = partition {
            for span in &new {
                for rows in p.rows.range(span.0..=span.1).map(|(_, r)| r) {
                    out.extend(rows.iter().map(|(row, n)| (row.clone(), Some(*span), *n)));
                }
            }
            // Rows still here that were in a changed session: their count before.
            for span in &gone {
                for (t, rows) in p.rows.range(span.0..=span.1) {
                    for (row, n) in rows {
                        let was = n - change(*t, row);
                        if was > 0 {
                            out.push((row.clone(), Some(*span), -was));
                        }
                    }
                }
            }
        }
        for (t, rows) in delta {
            let Some(old) = containing(before, *t) else {
                // In no session before: only in a new one, emitted above.
                continue;
            };
            let session_changed = gone.contains(&old);
            for (row, d) in rows.iter().filter(|(_, d)| **d != 0) {
                // In an unchanged session a row's own change is its output;
                // in a changed one, only rows gone entirely are left to retract.
                if !session_changed || now(*t, row) == 0 {
                    out.push((row.clone(), Some(old), *d));
                }
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<StreamChunk>) -> Result<()> {
        let mut changes: Vec<(Encoded, Option<Span>, i64)> = self
            .untimed
            .drain()
            .map(|(row, n)| (row, None, n))
            .collect();
        let touched = std::mem::take(&mut self.touched);
        for (key, t) in &touched {
            self.settle(key, t, &mut changes);
        }
        if changes.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        let mut spans: Vec<Option<Span>> = Vec::new();
        for (row, span, n) in &changes {
            let op = if *n > 0 { Op::Insert } else { Op::Delete };
            for _ in 0..n.unsigned_abs() {
                ops.push(op);
                rows.push(row);
                spans.push(*span);
            }
        }
        let mut columns: Vec<ArrayRef> = self.row_codec.decode(rows)?;
        for bound in &self.bounds {
            let nanos: Int64Array = spans
                .iter()
                .map(|s| {
                    s.map(|s| match bound {
                        SessionBound::Start => s.0,
                        SessionBound::End => self.end(s),
                    })
                })
                .collect();
            columns.push(nanos_to_time(nanos, &self.time_type)?);
        }
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(ops.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        out.push(StreamChunk {
            batch,
            ops: ops.into(),
        });
        Ok(())
    }
}

impl Operator for SessionWindow {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let batch = &chunk.batch;
        let keys: Vec<Encoded> = self.partitions_of.keys(&self.evaluator, batch)?;
        let times = time_nanos(&self.evaluator.eval(&self.time, batch)?)?;
        let rows = self.row_codec.encode(batch.columns())?;
        let mut late = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let row: Encoded = rows.row(i).as_ref().into();
            let op = chunk.ops[i];
            if times.is_null(i) {
                let n = self.untimed.entry(row).or_insert(0);
                *n += op.sign();
                continue;
            }
            let t = times.value(i);
            if self.closed_below.is_some_and(|w| t < w) {
                late.push(i);
                continue;
            }
            self.touch(&key);
            let applied = match op {
                Op::Insert => {
                    self.insert(&key, &row, t);
                    true
                }
                Op::Delete => self.delete(&key, &row, t),
            };
            if applied {
                self.dirty.push((key.clone(), t, row.clone()));
            }
            if applied && let Some(touched) = self.touched.get_mut(&key) {
                *touched.delta.entry(t).or_default().entry(row).or_insert(0) += op.sign();
            }
        }
        self.late.dropped(batch, &chunk.ops, &late)?;
        Ok(())
    }

    fn on_barrier(&mut self, _barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        self.flush(out)
    }

    fn late_rows(&mut self) -> Option<&mut LateRows> {
        Some(&mut self.late)
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        for (partition, t, row) in self.dirty.take() {
            let state_key = row_state_key(&partition, t, &row);
            let count = self
                .partitions
                .get(&partition)
                .and_then(|p| p.rows.get(&t))
                .and_then(|rows| rows.get(&row));
            match count {
                Some(n) => state.put(&state_key, ValueWriter::new().i64(*n).finish()),
                None => state.delete(&state_key),
            }
        }
        if let Some(w) = self.closed_below {
            state.put(b"w", ValueWriter::new().i64(w).finish());
        }
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.partitions.clear();
        self.by_end.clear();
        self.touched.clear();
        self.stored = 0;
        for (key, value) in entries {
            let mut value = ValueReader::new(&value);
            match key.split_first() {
                Some((b'r', rest)) => {
                    let (partition, rest) = split_part(rest)?;
                    let (time, row) = rest.split_at_checked(8).ok_or_else(corrupt_key)?;
                    let time = i64::from_be_bytes(time.try_into().map_err(|_| corrupt_key())?);
                    self.partitions
                        .entry(partition.into())
                        .or_default()
                        .rows
                        .entry(time)
                        .or_default()
                        .insert(row.into(), value.i64()?);
                    self.stored += 1;
                }
                Some((b'w', [])) => self.closed_below = Some(value.i64()?),
                _ => return Err(corrupt_key()),
            }
        }
        let gap = self.gap;
        let mut sessions = Vec::new();
        for (key, partition) in &mut self.partitions {
            let (Some(first), Some(last)) = (
                partition.rows.keys().next().copied(),
                partition.rows.keys().next_back().copied(),
            ) else {
                continue;
            };
            for span in partition.split((first, last), gap) {
                partition.sessions.insert(span.0, span.1);
                sessions.push((key.clone(), span));
            }
        }
        for (key, span) in sessions {
            self.by_end.insert((self.end(span), key, span.0));
        }
        Ok(())
    }

    fn state_size(&self) -> Option<StateSize> {
        Some(StateSize::in_memory(
            "SessionWindow",
            self.partitions.len() as u64,
            self.stored,
        ))
    }

    fn on_watermark(
        &mut self,
        _port: usize,
        watermark: Watermark,
        out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        if Some(watermark.column) != self.time_column {
            return Ok(vec![]);
        }
        let Some(w) = scalar_nanos(&watermark.value) else {
            return Ok(vec![]);
        };
        // Changes to sessions about to close go out before the watermark.
        self.flush(out)?;
        self.close(w);
        self.closed_below = Some(self.closed_below.map_or(w, |c| c.max(w)));
        let inputs = self.schema.fields().len() - self.bounds.len();
        Ok(self
            .bounds
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == SessionBound::End)
            .map(|(j, _)| Watermark {
                column: inputs + j,
                value: watermark.value.clone(),
            })
            .collect())
    }
}
