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
//! Checkpoints hold the rows and the watermark (see [`stored`]); sessions
//! follow from the rows' times and are computed again on recovery.
//!
//! Under the `rocksdb` backend memory holds the partitions used lately: a
//! chunk's partitions not held, and those of sessions a watermark closes,
//! are read back (one prefix scan each) before they are changed. The
//! session index (`by_end`) and the keys of partitions left in the store
//! stay in memory. A partition stays while the store may lack its changes
//! (its last checkpoint is not durable), and an emptied one until its
//! deletions are durable, so one read back is always current.

mod emit;
mod stored;

use stored::SessionRuns;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use datafusion::arrow::array::Array;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::physical_expr::PhysicalExpr;

use eddy_planner::{SessionBound, same_session, scalar_nanos, time_nanos};

use crate::checkpoint::{Dirty, StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::hash::{HashMap, HashSet};
use crate::key::KeyEncoder;
use crate::keyed_state::{StateConfig, StoreTable};
use crate::late_rows::LateRows;
use crate::message::{Barrier, Op, StreamChunk, Watermark};
use crate::operator::{Operator, StateSize};

/// An encoded value (Arrow row format).
type Encoded = Arc<[u8]>;

/// A session: (first time, last time), in nanoseconds.
type Span = (i64, i64);

/// Bytes counted for a stored row besides its own: map slots.
const ROW_OVERHEAD: usize = 48;

#[derive(Debug, Default)]
struct Partition {
    /// First time -> last time of each session; sessions never overlap.
    sessions: BTreeMap<i64, i64>,
    /// Time -> row -> multiplicity.
    rows: BTreeMap<i64, HashMap<Encoded, i64>>,
    /// Bytes counted for its rows.
    bytes: usize,
    /// The epoch it was last used in.
    used: u64,
    /// The epoch of the last checkpoint that wrote its rows.
    written: u64,
}

impl Partition {
    /// Holds `count` copies of `row` at `t`, as read from a checkpoint.
    fn add_stored(&mut self, t: i64, row: Encoded, count: i64) {
        self.bytes += ROW_OVERHEAD + row.len();
        self.rows.entry(t).or_default().insert(row, count);
    }

    /// Distinct (time, row) entries.
    fn distinct_rows(&self) -> u64 {
        self.rows.values().map(|rows| rows.len() as u64).sum()
    }

    /// Runs of this partition's row times within `span` that form sessions.
    fn split(&self, span: Span, gap: i64) -> Vec<Span> {
        let mut runs = SessionRuns::new(gap);
        for &t in self.rows.range(span.0..=span.1).map(|(t, _)| t) {
            runs.push(t);
        }
        runs.finish()
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
    /// The partitions in memory: all of them, but under `rocksdb`.
    partitions: HashMap<Encoded, Partition>,
    /// (end, partition, first) of every session in state, to close by watermark.
    by_end: BTreeSet<(i64, Encoded, i64)>,
    /// Distinct (time, row) entries in state.
    stored: u64,
    /// Partitions with rows in state.
    live_partitions: u64,
    /// `rocksdb` backend: the cache's size; partitions not in memory, whose
    /// rows the store holds; emptied partitions held until their deletions
    /// are durable; bytes and distinct rows in memory.
    cache_limit: Option<usize>,
    evicted: HashSet<Encoded>,
    emptied: Vec<Encoded>,
    held_bytes: usize,
    held_rows: u64,
    config: StateConfig,
    table: Option<StoreTable>,
    /// The epoch being processed.
    epoch: u64,
    /// Rows below this time are late.
    closed_below: Option<i64>,
    /// Partitions changed this epoch.
    touched: HashMap<Encoded, Touched>,
    /// Net change this epoch of rows with a NULL time (they have no session).
    untimed: HashMap<Encoded, i64>,
    /// (partition, time, row) changed since the last checkpoint.
    dirty: Dirty<(Encoded, i64, Encoded)>,
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
            live_partitions: 0,
            cache_limit: None,
            evicted: HashSet::default(),
            emptied: Vec::new(),
            held_bytes: 0,
            held_rows: 0,
            config: StateConfig::default(),
            table: None,
            epoch: 1,
            closed_below: None,
            touched: HashMap::default(),
            untimed: HashMap::default(),
            dirty: Dirty::default(),
        })
    }

    /// Keeps the partitions as `config` says.
    pub fn with_state_config(mut self, config: StateConfig) -> Self {
        self.config = config;
        self
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
        partition.used = self.epoch;
        if partition.rows.is_empty() {
            self.live_partitions += 1;
        }
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
            self.held_rows += 1;
            partition.bytes += ROW_OVERHEAD + row.len();
            self.held_bytes += ROW_OVERHEAD + row.len();
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
            self.held_rows -= 1;
            partition.bytes -= ROW_OVERHEAD + row.len();
            self.held_bytes -= ROW_OVERHEAD + row.len();
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
            self.emptied(key);
        }
        true
    }

    /// Partition `key` has no rows left: it goes, but under `rocksdb` not
    /// before its deletions are durable (the store still has its rows).
    fn emptied(&mut self, key: &Encoded) {
        self.live_partitions -= 1;
        if self.cache_limit.is_some() {
            self.emptied.push(key.clone());
        } else if let Some(p) = self.partitions.remove(key) {
            self.held_bytes -= p.bytes;
        }
    }

    /// Drops sessions that end at or before `watermark` from state.
    fn close(&mut self, watermark: i64) -> Result<()> {
        let closing: Vec<Encoded> = self
            .by_end
            .iter()
            .take_while(|(end, _, _)| *end <= watermark)
            .map(|(_, key, _)| key.clone())
            .collect();
        self.load(closing.iter())?;
        while let Some((end, key, first)) = self.by_end.first().cloned() {
            if end > watermark {
                break;
            }
            self.by_end.pop_first();
            let Some(partition) = self.partitions.get_mut(&key) else {
                continue;
            };
            let had_rows = !partition.rows.is_empty();
            if let Some(last) = partition.sessions.remove(&first) {
                let times: Vec<i64> = partition
                    .rows
                    .range(first..=last)
                    .map(|(t, _)| *t)
                    .collect();
                for t in times {
                    let Some(rows) = partition.rows.remove(&t) else {
                        continue;
                    };
                    self.stored -= rows.len() as u64;
                    self.held_rows -= rows.len() as u64;
                    for row in rows.into_keys() {
                        partition.bytes -= ROW_OVERHEAD + row.len();
                        self.held_bytes -= ROW_OVERHEAD + row.len();
                        self.dirty.push((key.clone(), t, row));
                    }
                }
            }
            if had_rows && partition.rows.is_empty() {
                self.emptied(&key);
            }
        }
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
        self.load(keys.iter())?;
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

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        self.epoch = barrier.epoch;
        self.flush(out)
    }

    fn late_rows(&mut self) -> Option<&mut LateRows> {
        Some(&mut self.late)
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        self.write_rows(state);
        if let Some(w) = self.closed_below {
            state.put(b"w", ValueWriter::new().i64(w).finish());
        }
    }

    fn attach_store(&mut self, table: StoreTable) {
        self.cache_limit = self.config.cache_limit();
        self.table = Some(table);
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.partitions.clear();
        self.by_end.clear();
        self.touched.clear();
        self.evicted.clear();
        self.emptied.clear();
        (
            self.stored,
            self.live_partitions,
            self.held_rows,
            self.held_bytes,
        ) = (0, 0, 0, 0);
        for (key, value) in entries {
            match key.as_ref() {
                b"w" => self.closed_below = Some(ValueReader::new(&value).i64()?),
                [b'r', ..] => {
                    return Err(ExecutorError::CorruptState(
                        "a session window's rows are stored as an older version kept them: recreate the view".into(),
                    ));
                }
                _ => return Err(corrupt_key()),
            }
        }
        self.read_rows()
    }

    fn state_size(&self) -> Option<StateSize> {
        Some(StateSize {
            operator: "SessionWindow",
            keys: self.live_partitions,
            rows: self.stored,
            cached: self.held_rows,
        })
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
        self.close(w)?;
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
