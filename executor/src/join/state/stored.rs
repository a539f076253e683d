//! A join's state in checkpoints: writing what changed, evicting what
//! need not stay in memory, and reading it back (see [`super::state_key`]
//! for where each row is kept).

use super::{Bucket, ChangedRow, Encoded, Entry, JoinState, OVERHEAD, decode_entry, encode_entry};
use crate::checkpoint::{Bytes, StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::error::Result;
use crate::join::state_key::{self, COUNTS, INDEXED, ROWS, StoredKey};
use crate::keyed_state::eviction_victims;

impl JoinState {
    /// Writes the rows changed since the last checkpoint; then, under the
    /// `rocksdb` backend, drops from memory what need not stay.
    pub fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        let epoch = self.epoch;
        for changed in std::mem::take(&mut self.changed) {
            let ChangedRow {
                side,
                key,
                row,
                time,
                in_store,
            } = changed;
            if let Some(h) = self.held.as_mut().and_then(|h| h.keys.get_mut(&key)) {
                h.written = epoch;
            }
            let entry = self.sides[usize::from(side)]
                .get_mut(&key)
                .and_then(|b| b.get_mut(&row));
            let value = match entry {
                // Listed again after it left and came back: written.
                Some(e) if !e.changed => continue,
                Some(e) if e.copies != 0 => {
                    e.changed = false;
                    Some(encode_entry(e, self.stamped))
                }
                // The range deletion below covers it (most rows of a fast
                // stream come and expire within one checkpoint).
                // Removed (a tombstone, or gone from memory).
                removed => {
                    if let Some(e) = removed {
                        e.changed = false;
                    }
                    let expired = time
                        .zip(self.expired_below[usize::from(side)])
                        .is_some_and(|(t, below)| t < below);
                    if !in_store || expired {
                        continue;
                    }
                    None
                }
            };
            // Indexed, timed rows are kept as any other.
            let time = time.filter(|_| self.by_time.is_none());
            match (time, value) {
                (Some(t), Some(v)) => state.put(&state_key::timed_row_key(side, t, &key, &row), v),
                (Some(t), None) => state.delete(&state_key::timed_row_key(side, t, &key, &row)),
                (None, Some(v)) => state.keyed().put(&state_key::row_key(side, &key, &row), v),
                (None, None) => state.keyed().delete(&state_key::row_key(side, &key, &row)),
            }
        }
        for (side, threshold) in self.expired_below.iter_mut().enumerate() {
            if let Some(threshold) = threshold.take() {
                let (from, to) = state_key::expired_range(side as u8, threshold);
                state.delete_range(&from, &to);
            }
        }
        if let Some(by_time) = self.by_time.as_mut() {
            for index in by_time.iter_mut() {
                index.checkpoint(state, epoch);
            }
            if !std::mem::replace(&mut self.marked, true) {
                state.put(INDEXED, Vec::new());
            }
        }
        if self.rows != self.written_rows {
            let mut value = ValueWriter::new();
            value.i64(self.rows[0] as i64).i64(self.rows[1] as i64);
            state.keyed().put(COUNTS, value.finish());
            self.written_rows = self.rows;
        }
        if self.outgrew_memory() {
            self.move_to_store(state, epoch);
        }
        self.epoch = epoch + 1;
        self.shed();
    }

    /// Whether rows kept in memory (with a time or a stamp) outgrew the cache.
    fn outgrew_memory(&self) -> bool {
        let Some(limit) = self.overflow_limit.filter(|_| self.held.is_none()) else {
            return false;
        };
        // Counting bytes visits every row: only when they may be over.
        if (self.held_rows as usize).saturating_mul(2 * OVERHEAD) <= limit {
            return false;
        }
        let bytes: usize = self
            .sides
            .iter()
            .flat_map(|side| side.iter())
            .map(|(key, bucket)| {
                OVERHEAD + key.len() + bucket.keys().map(|r| OVERHEAD + r.len()).sum::<usize>()
            })
            .sum();
        bytes > limit
    }

    /// Moves the rows to the store for good: timed rows, which this
    /// checkpoint just wrote under `t`, to `r` and the indexes by time
    /// (rows without a time are under `r` already; the TTL's index by stamp
    /// follows, see `super::super::ttl`). Every row is in memory, so each
    /// key is held whole, and the next checkpoints evict as for any join.
    fn move_to_store(&mut self, state: &mut StateWriter<'_>, epoch: u64) {
        let (from, to) = state_key::timed_rows_range();
        state.delete_range(&from, &to);
        self.arrange(true);
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let mut by_time = self.by_time.as_mut();
        let mut keyed = state.keyed();
        for (side, rows) in self.sides.iter().enumerate() {
            for (key, bucket) in rows {
                let h = held.hold(key, epoch);
                h.complete = [true, true];
                h.written = epoch;
                for (row, entry) in bucket {
                    held.bytes += OVERHEAD + row.len();
                    let (Some(t), Some(by_time)) = (entry.time, by_time.as_mut()) else {
                        // Kept under `r` already.
                        continue;
                    };
                    let value = encode_entry(entry, self.stamped);
                    keyed.put(&state_key::row_key(side as u8, key, row), value);
                    by_time[side].set(t, &state_key::part_and_row(key, row), Some(()));
                }
            }
        }
        for index in by_time.into_iter().flat_map(|b| b.iter_mut()) {
            index.checkpoint(state, epoch);
        }
        state.put(INDEXED, Vec::new());
        self.marked = true;
    }

    /// `rocksdb` backend: beyond the cache's size, evicts the keys used
    /// longest ago whose rows the store holds.
    fn shed(&mut self) {
        let Self {
            sides,
            held,
            held_rows,
            table,
            ..
        } = self;
        let (Some(held), Some(table)) = (held.as_mut(), table.as_ref()) else {
            return;
        };
        if held.bytes <= held.limit {
            return;
        }
        let durable = table.durable();
        let rows_bytes =
            |bucket: &Bucket| -> usize { bucket.keys().map(|row| OVERHEAD + row.len()).sum() };
        let live = |bucket: &Bucket| bucket.values().filter(|e| e.copies != 0).count() as u64;
        // Rows read one by one, to change them, are seldom read again: they
        // go first, and the sides that probes read in whole stay.
        for (key, h) in held.keys.iter().filter(|(_, h)| h.written <= durable) {
            for (side, complete) in sides.iter_mut().zip(h.complete) {
                if !complete && let Some(bucket) = side.remove(key) {
                    held.bytes -= rows_bytes(&bucket);
                    *held_rows -= live(&bucket);
                }
            }
        }
        let candidates: Vec<(u64, usize, Encoded)> = held
            .keys
            .iter()
            .filter(|(_, h)| h.written <= durable)
            .map(|(key, h)| {
                let rows: usize = sides
                    .iter()
                    .filter_map(|s| s.get(key))
                    .map(rows_bytes)
                    .sum();
                (h.used, OVERHEAD + key.len() + rows, key.clone())
            })
            .collect();
        for key in eviction_victims(candidates, held.bytes, held.limit) {
            held.all_in_memory = false;
            held.keys.remove(&key);
            held.bytes -= OVERHEAD + key.len();
            for side in sides.iter_mut() {
                if let Some(bucket) = side.remove(&key) {
                    held.bytes -= rows_bytes(&bucket);
                    *held_rows -= live(&bucket);
                }
            }
        }
    }

    /// Starts from the checkpointed rows: the timed ones in `entries` (the
    /// operator's own range), the others in the keyed range, which the
    /// `rocksdb` backend leaves in the store. `visit` sees every row read.
    /// Returns the value of the watermarks' key, if any.
    pub fn restore(
        &mut self,
        entries: StateEntries,
        mut visit: impl FnMut(usize, &Encoded, &Encoded, &Entry),
    ) -> Result<Option<Bytes>> {
        let (table, config, stamped) = (self.table.take(), self.config, self.stamped);
        let timed = self.timed;
        *self = Self::new();
        self.stamped = stamped;
        self.config = config;
        if let Some(table) = table {
            self.attach(table, timed);
        }
        // Rows with a time or a stamp stay where the last checkpoint kept
        // them: in the store (marked), or in memory.
        let entries: Vec<_> = entries.into_iter().collect();
        self.marked = entries.iter().any(|(key, _)| key.as_ref() == INDEXED);
        if timed || stamped {
            self.arrange(self.marked);
        }
        let mut watermarks = None;
        for (key, value) in entries {
            if key.as_ref() == INDEXED {
                continue;
            }
            match state_key::parse_timed(&key)? {
                Some(stored) => self.restored(stored, &value, &mut visit)?,
                None => watermarks = Some(value),
            }
        }
        if let Some(by_time) = self.by_time.as_mut() {
            for index in by_time.iter_mut() {
                index.restore()?;
            }
        }
        let Some(table) = self.table.clone() else {
            return Ok(watermarks);
        };
        if self.held.is_none() {
            let mut failed = None;
            table.scan(ROWS, |rest, value| {
                if failed.is_none() {
                    failed = state_key::parse_row(rest)
                        .and_then(|stored| self.restored(stored, value, &mut visit))
                        .err();
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        } else if let Some(counts) = table.get(COUNTS)? {
            let mut value = ValueReader::new(&counts);
            self.rows = [value.i64()? as u64, value.i64()? as u64];
            if let Some(held) = self.held.as_mut() {
                // The rows stay in the store: keys are read as they come.
                held.all_in_memory = self.rows == [0, 0];
            }
        }
        self.written_rows = self.rows;
        Ok(watermarks)
    }

    /// Holds a row read back from a checkpoint.
    fn restored(
        &mut self,
        stored: StoredKey<'_>,
        value: &[u8],
        visit: &mut impl FnMut(usize, &Encoded, &Encoded, &Entry),
    ) -> Result<()> {
        let StoredKey {
            side,
            join_key,
            row,
        } = stored;
        let entry = decode_entry(value, self.stamped)?;
        let (key, row) = (Encoded::from(join_key), Encoded::from(row));
        visit(side, &key, &row, &entry);
        self.sides[side].entry(key).or_default().insert(row, entry);
        self.rows[side] += 1;
        self.held_rows += 1;
        Ok(())
    }
}
