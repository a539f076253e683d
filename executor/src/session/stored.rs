//! Where a session window's rows live in checkpoints, and how partitions
//! come and go from memory under the `rocksdb` backend.
//!
//! ```text
//! keyed range (see crate::checkpoint):
//!   r <partition part> <time: 8 bytes> <row> -> multiplicity
//! operator range:
//!   w                                      -> the watermark sessions closed at
//! ```
//!
//! One partition's rows sit together, in time order: the `rocksdb` backend
//! reads a partition with one prefix scan, and recovery's read of the
//! operator range leaves the rows alone (the `memory` backend reads them
//! all itself; the `rocksdb` one reads their keys once, to know the
//! sessions). Sessions are not stored: they follow from the rows' times.

use eddy_planner::same_session;

use super::{Encoded, Partition, SessionWindow, Span};
use crate::checkpoint::{StateWriter, ValueReader, ValueWriter, push_part, split_part};
use crate::error::{ExecutorError, Result};
use crate::keyed_state::{StoreTable, eviction_victims};
use crate::time_ordered_state::{time_bytes, time_of};

const ROW: u8 = b'r';

/// The prefix of partition `partition`'s rows.
fn partition_prefix(partition: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + partition.len());
    k.push(ROW);
    push_part(&mut k, partition);
    k
}

/// The key of a stored row.
fn row_key(partition: &[u8], time: i64, row: &[u8]) -> Vec<u8> {
    let mut k = partition_prefix(partition);
    k.extend_from_slice(&time_bytes(time));
    k.extend_from_slice(row);
    k
}

/// A stored row's (time, row), after its partition's prefix.
fn parse_time_row(rest: &[u8]) -> Result<(i64, &[u8])> {
    Ok((time_of(rest)?, &rest[8..]))
}

fn read_count(value: &[u8]) -> Result<i64> {
    let count = ValueReader::new(value).i64()?;
    if count <= 0 {
        return Err(ExecutorError::CorruptState(
            "a session window's stored row has no copies".into(),
        ));
    }
    Ok(count)
}

/// Sessions of rows at `times` (ascending), `gap` apart at most within one.
pub(super) struct SessionRuns {
    gap: i64,
    runs: Vec<Span>,
}

impl SessionRuns {
    pub(super) fn new(gap: i64) -> Self {
        Self {
            gap,
            runs: Vec::new(),
        }
    }

    /// A row at `t`, no earlier than the last.
    pub(super) fn push(&mut self, t: i64) {
        match self.runs.last_mut() {
            Some(run) if same_session(run.1, t, self.gap) => run.1 = t,
            _ => self.runs.push((t, t)),
        }
    }

    pub(super) fn finish(self) -> Vec<Span> {
        self.runs
    }
}

impl SessionWindow {
    /// `rocksdb` backend: reads back the partitions of `keys` that left
    /// memory (one prefix scan each), so that they can be changed.
    pub(super) fn load<'k>(&mut self, keys: impl IntoIterator<Item = &'k Encoded>) -> Result<()> {
        if self.cache_limit.is_none() {
            // Every partition is in memory.
            return Ok(());
        }
        let epoch = self.epoch;
        for key in keys {
            if let Some(p) = self.partitions.get_mut(key) {
                p.used = epoch;
                continue;
            }
            if !self.evicted.remove(key) {
                continue;
            }
            let Some(table) = self.table.as_ref() else {
                continue;
            };
            let mut partition = read_partition(table, key)?;
            let runs = partition.split((i64::MIN, i64::MAX), self.gap);
            partition.sessions = runs.into_iter().collect();
            partition.used = epoch;
            self.held_bytes += partition.bytes;
            self.held_rows += partition.distinct_rows();
            self.partitions.insert(key.clone(), partition);
        }
        Ok(())
    }

    /// Writes every row changed since the last checkpoint; then, under the
    /// `rocksdb` backend, drops from memory what need not stay.
    pub(super) fn write_rows(&mut self, state: &mut StateWriter<'_>) {
        let epoch = self.epoch;
        let mut keyed = state.keyed();
        for (partition, t, row) in self.dirty.take() {
            let key = row_key(&partition, t, &row);
            let held = self.partitions.get_mut(&partition);
            let count = held
                .as_ref()
                .and_then(|p| p.rows.get(&t))
                .and_then(|rows| rows.get(&row))
                .copied();
            match count {
                Some(n) => keyed.put(&key, ValueWriter::new().i64(n).finish()),
                None => keyed.delete(&key),
            }
            if let Some(p) = held {
                p.written = epoch;
            }
        }
        self.epoch = epoch + 1;
        self.shed();
    }

    /// `rocksdb` backend: forgets emptied partitions once their deletions
    /// are durable and, beyond the cache's size, evicts the partitions used
    /// longest ago whose rows the store holds.
    fn shed(&mut self) {
        let (Some(limit), Some(table)) = (self.cache_limit, self.table.as_ref()) else {
            return;
        };
        let durable = table.durable();
        let emptied = std::mem::take(&mut self.emptied);
        for key in emptied {
            match self.partitions.get(&key) {
                Some(p) if p.rows.is_empty() && p.written <= durable => {
                    self.held_bytes -= p.bytes;
                    self.partitions.remove(&key);
                }
                Some(p) if p.rows.is_empty() => self.emptied.push(key),
                _ => {}
            }
        }
        if self.held_bytes <= limit {
            return;
        }
        let candidates: Vec<(u64, usize, Encoded)> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.written <= durable && !p.rows.is_empty())
            .map(|(key, p)| (p.used, p.bytes, key.clone()))
            .collect();
        for key in eviction_victims(candidates, self.held_bytes, limit) {
            if let Some(p) = self.partitions.remove(&key) {
                self.held_bytes -= p.bytes;
                self.held_rows -= p.distinct_rows();
                self.evicted.insert(key);
            }
        }
    }

    /// Reads the checkpointed rows: the `memory` backend keeps them all;
    /// the `rocksdb` backend reads only their keys, for the sessions and
    /// counts, and leaves the rows in the store.
    pub(super) fn read_rows(&mut self) -> Result<()> {
        let Some(table) = self.table.clone() else {
            return Ok(());
        };
        let keep = self.cache_limit.is_none();
        let mut current: Option<(Encoded, SessionRuns)> = None;
        let mut finished: Vec<(Encoded, Vec<Span>)> = Vec::new();
        let mut failed = None;
        table.scan(&[ROW], |key, value| {
            if failed.is_some() {
                return;
            }
            let read = split_part(key).and_then(|(partition, rest)| {
                let (t, row) = parse_time_row(rest)?;
                let count = read_count(value)?;
                if current
                    .as_ref()
                    .is_none_or(|(k, _)| k.as_ref() != partition)
                {
                    finished.extend(current.take().map(|(k, runs)| (k, runs.finish())));
                    current = Some((partition.into(), SessionRuns::new(self.gap)));
                }
                if let Some((k, runs)) = current.as_mut() {
                    runs.push(t);
                    if keep {
                        let p = self.partitions.entry(k.clone()).or_default();
                        p.add_stored(t, row.into(), count);
                    }
                }
                self.stored += 1;
                Ok(())
            });
            failed = read.err();
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        finished.extend(current.map(|(k, runs)| (k, runs.finish())));
        self.live_partitions = finished.len() as u64;
        for (key, runs) in finished {
            for span in &runs {
                self.by_end.insert((self.end(*span), key.clone(), span.0));
            }
            match self.partitions.get_mut(&key) {
                Some(p) => {
                    p.sessions = runs.into_iter().collect();
                    self.held_bytes += p.bytes;
                    self.held_rows += p.distinct_rows();
                }
                None => {
                    self.evicted.insert(key);
                }
            }
        }
        Ok(())
    }
}

/// Partition `key` as the store holds it.
fn read_partition(table: &StoreTable, key: &[u8]) -> Result<Partition> {
    let mut partition = Partition::default();
    let mut failed = None;
    table.scan(&partition_prefix(key), |rest, value| {
        if failed.is_none() {
            failed = parse_time_row(rest)
                .and_then(|(t, row)| {
                    partition.add_stored(t, row.into(), read_count(value)?);
                    Ok(())
                })
                .err();
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(partition),
    }
}
