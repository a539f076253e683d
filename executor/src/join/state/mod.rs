//! A join's stored rows, per side: join key -> row -> entry.
//!
//! Under the `memory` backend all of them are in memory, and checkpoints
//! write the rows changed since the last one. Under the `rocksdb` backend,
//! the store's rows are the state and memory holds the join keys used
//! lately: a change first [`JoinState::load`]s, under its key, the other
//! side's rows in whole (one prefix scan of the keyed range, to probe) and
//! its own row's entry (one `multi_get` per chunk), so neither a large
//! state nor a key with many rows on the changing side (a fact table's
//! rows under one dimension key) is read for each change. A join that
//! reads degrees (outer, semi, anti) loads both sides' rows in whole, as
//! degrees are computed from them. The rows of an interval join, or of a
//! join with a state TTL, stay all in memory while they fit the cache (an
//! interval join's kept by time); the first checkpoint at which they do
//! not moves them to the store, by join key, for good, with their indexes:
//! an interval join's by time per side ([`TimeOrderedState`]), which the
//! watermark takes the expired ones from whether memory holds them or not
//! (see [`state_key`]); the TTL's by stamp (see `super::ttl`).
//!
//! Invariants of the held keys (`rocksdb` backend):
//! - Per side, a held join key has all its rows in memory (complete), or
//!   some: rows read one by one, and those removed since as tombstones (an
//!   entry without copies), so reading the rest later cannot bring one
//!   back. A key not held has no rows in memory, and the store holds
//!   exactly its rows. Only complete sides are probed.
//! - Until a key first leaves memory (and after a restore, while no rows
//!   are stored), every stored row is in memory: a key not held has none,
//!   so a new key is held complete without reading the store. A join whose
//!   state fits its cache never reads.
//! - A key whose rows changed since the last durable checkpoint (in this
//!   epoch, or written by a checkpoint not durable yet) stays held: the
//!   store may not have its changes yet.
//! - Rows leave memory only at checkpoints, after the changed rows were
//!   written, so only keys loaded in the current call are read.
//! - A row is in the index by time of its side exactly while it is stored
//!   with a time. A row the index expires that memory does not hold
//!   leaves a tombstone under its (held) key, as a removed row does. Over the
//!   cache's size, the rows of incomplete sides go first (they were read
//!   to be changed, and are seldom read again), then the keys used
//!   longest ago, whole.

mod stored;

use std::sync::Arc;

use super::state_key::{self, BY_TIME};
use crate::checkpoint::{ValueReader, ValueWriter, split_part};
use crate::error::{ExecutorError, Result};
use crate::hash::HashMap;
use crate::keyed_state::{StateConfig, StatePlace, StoreTable};
use crate::time_ordered_state::TimeOrderedState;

/// An encoded row or join key, shared (not copied) by the state, the
/// probe's candidates, the expiry index and the changed-row list.
pub(super) type Encoded = Arc<[u8]>;

/// One join key's rows of one side.
pub(super) type Bucket = HashMap<Encoded, Entry>;

/// A stored row.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Entry {
    pub copies: i64,
    /// How many rows of the other side it matches (see the join's docs).
    pub degree: i64,
    /// The row's time, in an interval join.
    pub time: Option<i64>,
    /// When it last changed, with a state TTL.
    pub stamp: i64,
    /// Listed in `changed` since the last checkpoint.
    changed: bool,
}

/// A stored row changed since the last checkpoint.
#[derive(Debug)]
struct ChangedRow {
    side: u8,
    key: Encoded,
    row: Encoded,
    time: Option<i64>,
    /// Whether it was stored before this epoch changed it, and so is in the
    /// store: a row that comes and goes between two checkpoints (an
    /// aggregate's old value, retracted) writes nothing.
    in_store: bool,
}

/// Bytes counted for a held key or row besides its bytes: map slots and
/// bookkeeping.
const OVERHEAD: usize = 64;

/// The join keys held in memory under the `rocksdb` backend.
#[derive(Debug)]
struct HeldKeys {
    keys: HashMap<Encoded, HeldKey>,
    /// Bytes counted for held keys and their rows.
    bytes: usize,
    limit: usize,
    /// Every stored row is in memory: no row left it since the state
    /// started empty. Then a key not held has no rows, and is not read.
    all_in_memory: bool,
}

impl HeldKeys {
    /// The entry of `key`, held from now on if it was not.
    fn hold(&mut self, key: &Encoded, epoch: u64) -> &mut HeldKey {
        let Self {
            keys,
            bytes,
            all_in_memory,
            ..
        } = self;
        keys.entry(key.clone()).or_insert_with(|| {
            *bytes += OVERHEAD + key.len();
            HeldKey {
                used: epoch,
                written: 0,
                complete: [*all_in_memory; 2],
            }
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct HeldKey {
    /// The epoch it was last used in.
    used: u64,
    /// The epoch of the last checkpoint that wrote one of its rows.
    written: u64,
    /// Per side, whether all its rows are in memory: else only some (read
    /// one by one, to change them), and a row removed since is kept as a
    /// tombstone (no copies), so reading the rest cannot bring it back.
    complete: [bool; 2],
}

/// Both sides' stored rows.
#[derive(Debug)]
pub(super) struct JoinState {
    sides: [HashMap<Encoded, Bucket>; 2],
    /// Distinct rows stored per side, in memory or not.
    rows: [u64; 2],
    /// `rows` as last checkpointed.
    written_rows: [u64; 2],
    /// Rows in memory.
    held_rows: u64,
    /// Stored rows changed since the last checkpoint: each once while it
    /// stays stored (its entry's `changed` says so), so no sorting.
    changed: Vec<ChangedRow>,
    /// Per side, the watermark's expiry threshold since the last
    /// checkpoint: its rows below it leave the checkpoint in one range.
    expired_below: [Option<i64>; 2],
    /// Values carry a TTL stamp.
    stamped: bool,
    config: StateConfig,
    table: Option<StoreTable>,
    /// `rocksdb` backend, rows that may leave memory: the keys held.
    held: Option<HeldKeys>,
    /// Rows may have a time (an interval join's).
    timed: bool,
    /// Held rows with a time: per side, their index by time.
    by_time: Option<Box<[TimeOrderedState<()>; 2]>>,
    /// `rocksdb` backend, timed rows kept by time in memory: past this many
    /// bytes they move to the store (see [`Self::move_to_store`]).
    overflow_limit: Option<usize>,
    /// [`INDEXED`] was written.
    marked: bool,
    /// The epoch being processed.
    epoch: u64,
}

impl JoinState {
    pub fn new() -> Self {
        Self {
            sides: [HashMap::default(), HashMap::default()],
            rows: [0, 0],
            written_rows: [0, 0],
            held_rows: 0,
            changed: Vec::new(),
            expired_below: [None, None],
            stamped: false,
            config: StateConfig::default(),
            table: None,
            held: None,
            timed: false,
            by_time: None,
            overflow_limit: None,
            marked: false,
            epoch: 1,
        }
    }

    /// Values carry a TTL stamp.
    pub fn stamped(&mut self, stamped: bool) {
        self.stamped = stamped;
    }

    /// Keeps the rows as `config` says (once the state has a place in a store).
    pub fn configure(&mut self, config: StateConfig) {
        self.config = config;
    }

    /// Gives the state its place in the store; `timed`: whether rows may
    /// have a time.
    pub fn attach(&mut self, table: StoreTable, timed: bool) {
        self.table = Some(table);
        self.timed = timed;
        let limit = self.config.cache_limit();
        // Rows with a time or a stamp start in memory (kept by time, or
        // named by the TTL's index there) until they outgrow it.
        let indexed = timed || self.stamped;
        self.overflow_limit = limit.filter(|_| indexed);
        self.arrange(limit.is_some() && !indexed);
    }

    /// How it keeps its rows.
    pub fn config(&self) -> StateConfig {
        self.config
    }

    /// The epoch being processed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether rows may be in the store alone (and keys are held).
    pub fn in_store(&self) -> bool {
        self.held.is_some()
    }

    /// Every row in memory: (side, join key, row, entry).
    pub fn rows_in_memory(&self) -> impl Iterator<Item = (usize, &Encoded, &Encoded, &Entry)> {
        self.sides.iter().enumerate().flat_map(|(side, keys)| {
            keys.iter().flat_map(move |(key, bucket)| {
                bucket
                    .iter()
                    .filter(|(_, e)| e.copies != 0)
                    .map(move |(row, e)| (side, key, row, e))
            })
        })
    }

    /// Holds the keys used lately, rows in the store (when they may leave
    /// memory), or all rows.
    fn arrange(&mut self, in_store: bool) {
        let Some(table) = self.table.as_ref().filter(|_| in_store) else {
            (self.held, self.by_time) = (None, None);
            return;
        };
        let limit = usize::try_from(self.config.cache_bytes).unwrap_or(usize::MAX);
        self.held = Some(HeldKeys {
            keys: HashMap::default(),
            bytes: 0,
            limit,
            all_in_memory: true,
        });
        self.by_time = self.timed.then(|| {
            Box::new(BY_TIME.map(|tag| {
                let mut index = TimeOrderedState::new(tag, |_| Vec::new(), |_| Ok(()));
                *index.place() = StatePlace::new(self.config, table.clone());
                index
            }))
        });
    }

    /// Whether timed rows are indexed by time here, not in the join's
    /// [`super::Expiry`].
    pub fn indexes_times(&self) -> bool {
        self.by_time.is_some()
    }

    /// Join keys in memory (counted per side), rows stored, rows in memory.
    pub fn size(&self) -> (u64, u64, u64) {
        let keys = self.sides.iter().map(|s| s.len() as u64).sum();
        (keys, self.rows.iter().sum(), self.held_rows)
    }

    /// The rows of `side` under `key` (loaded).
    pub fn bucket(&self, side: usize, key: &[u8]) -> Option<&Bucket> {
        self.sides[side].get(key)
    }

    /// Adds `delta` to the degree of `row` of `side` under `key` (loaded;
    /// checkpoints do not hold degrees); returns the entry as it was.
    pub fn add_degree(&mut self, side: usize, key: &[u8], row: &[u8], delta: i64) -> Option<Entry> {
        let entry = self.sides[side].get_mut(key)?.get_mut(row)?;
        let before = *entry;
        entry.degree += delta;
        Some(before)
    }

    /// The join keys with rows on both sides.
    pub fn keys_on_both_sides(&self) -> Vec<Encoded> {
        self.sides[0]
            .keys()
            .filter(|k| self.sides[1].contains_key(*k))
            .cloned()
            .collect()
    }

    /// Makes sure a change of `side` to `rows` ((join key, row) pairs) can
    /// be applied: under each key, the other side's rows are all in memory
    /// (to probe), and so is each row's own entry if it is stored; with
    /// `whole`, all of both sides' rows are (a join that reads degrees).
    /// Returns the keys whose rows of both sides were just read in whole:
    /// their degrees are not known yet.
    pub fn load<'k>(
        &mut self,
        side: usize,
        rows: impl IntoIterator<Item = (&'k Encoded, &'k [u8])>,
        whole: bool,
    ) -> Result<Vec<Encoded>> {
        let Self {
            sides,
            held_rows,
            held,
            table,
            stamped,
            epoch,
            ..
        } = self;
        let (Some(held), Some(table)) = (held.as_mut(), table.as_ref()) else {
            return Ok(Vec::new());
        };
        let other = 1 - side;
        let mut read_whole = Vec::new();
        let mut lookups: Vec<(&Encoded, &[u8])> = Vec::new();
        for (key, row) in rows {
            let h = held.hold(key, *epoch);
            h.used = *epoch;
            let was = h.complete;
            let mut complete = was;
            for s in [other, side] {
                if !complete[s] && (s == other || whole) {
                    let bucket = sides[s].entry(key.clone()).or_default();
                    let (rows, bytes) = read_rows(table, *stamped, key, s, bucket)?;
                    *held_rows += rows;
                    held.bytes = held.bytes + bytes.0 - bytes.1;
                    if bucket.is_empty() {
                        sides[s].remove(key);
                    }
                    complete[s] = true;
                }
            }
            if complete != was {
                held.hold(key, *epoch).complete = complete;
                if complete == [true, true] {
                    read_whole.push(key.clone());
                }
            }
            if !complete[side] && !sides[side].get(key).is_some_and(|b| b.contains_key(row)) {
                lookups.push((key, row));
            }
        }
        if lookups.is_empty() {
            return Ok(read_whole);
        }
        lookups.sort_unstable();
        lookups.dedup();
        let keys: Vec<Vec<u8>> = lookups
            .iter()
            .map(|(key, row)| state_key::row_key(side as u8, key, row))
            .collect();
        let values = table.get_many(keys.iter().map(Vec::as_slice))?;
        for ((key, row), value) in lookups.into_iter().zip(values) {
            let Some(value) = value else {
                continue;
            };
            let entry = decode_entry(&value, *stamped)?;
            sides[side]
                .entry(key.clone())
                .or_default()
                .insert(row.into(), entry);
            *held_rows += 1;
            held.bytes += OVERHEAD + row.len();
        }
        Ok(read_whole)
    }

    /// The entry of `row` of `side` under `key` (loaded), to change; created
    /// with `time` if the row is not stored. Also says whether it was.
    pub fn change(
        &mut self,
        side: usize,
        key: &Encoded,
        row: &[u8],
        time: Option<i64>,
    ) -> (&mut Entry, bool, Encoded) {
        let row = Encoded::from(row);
        let shared = row.clone();
        let bucket = self.sides[side].entry(key.clone()).or_default();
        let mut created = false;
        let entry = bucket.entry(row.clone()).or_insert_with(|| {
            created = true;
            Entry::default()
        });
        let was_stored = entry.copies != 0;
        if !was_stored {
            entry.time = time;
            self.rows[side] += 1;
            self.held_rows += 1;
            if let (Some(by_time), Some(t)) = (self.by_time.as_mut(), time) {
                by_time[side].set(t, &state_key::part_and_row(key, &row), Some(()));
            }
        }
        if created && let Some(held) = self.held.as_mut() {
            held.bytes += OVERHEAD + row.len();
        }
        if !std::mem::replace(&mut entry.changed, true) {
            self.changed.push(ChangedRow {
                side: side as u8,
                key: key.clone(),
                row,
                time: entry.time,
                in_store: was_stored,
            });
        }
        (entry, was_stored, shared)
    }

    /// Removes `row` of `side` under `key`, whose copies came to zero.
    pub fn remove(&mut self, side: usize, key: &[u8], row: &[u8]) {
        let Some(bucket) = self.sides[side].get_mut(key) else {
            return;
        };
        if let (Some(by_time), Some(t)) =
            (self.by_time.as_mut(), bucket.get(row).and_then(|e| e.time))
        {
            by_time[side].remove_present(t, &state_key::part_and_row(key, row));
        }
        let partial = self
            .held
            .as_ref()
            .and_then(|h| h.keys.get(key))
            .is_some_and(|h| !h.complete[side]);
        if partial {
            // A tombstone: its entry stays, with no copies.
            if bucket.contains_key(row) {
                self.rows[side] -= 1;
                self.held_rows -= 1;
            }
            return;
        }
        if bucket.remove(row).is_some() {
            self.rows[side] -= 1;
            self.held_rows -= 1;
            if let Some(held) = self.held.as_mut() {
                held.bytes -= OVERHEAD + row.len();
            }
        }
        if bucket.is_empty() {
            self.sides[side].remove(key);
        }
    }

    /// Drops the rows of `side` whose time is below `threshold` (watermark
    /// expiry), showing each held one to `forget` first: those named by
    /// `rows` (join key, row), or with an index by time, those it names.
    /// Only those rows are looked at, not their keys' others.
    pub fn expire(
        &mut self,
        side: usize,
        threshold: i64,
        rows: Vec<(Encoded, Encoded)>,
        mut forget: impl FnMut(&Encoded, &Encoded, &Entry),
    ) -> Result<()> {
        if let Some(by_time) = self.by_time.as_mut() {
            for (_, name, ()) in by_time[side].take_below(threshold)? {
                let (key, row) = split_part(&name)?;
                self.expire_indexed(side, key, row, &mut forget);
            }
            return Ok(());
        }
        // The checkpoint drops them by their time, all at once.
        let below = &mut self.expired_below[side];
        *below = Some(below.map_or(threshold, |b| b.max(threshold)));
        for (key, row) in rows {
            let Some(bucket) = self.sides[side].get_mut(&key) else {
                continue;
            };
            // A row's time is a column of it: if it is still there, it is
            // this entry's (retracted and stored again, it is listed twice).
            if let Some(entry) = bucket.remove(&row) {
                debug_assert!(entry.time.is_some_and(|t| t < threshold));
                forget(&key, &row, &entry);
                self.rows[side] -= 1;
                self.held_rows -= 1;
            }
            if bucket.is_empty() {
                self.sides[side].remove(&key);
            }
        }
        Ok(())
    }

    /// Drops `row` of `side` under `key`, which the index by time expired:
    /// from memory if held, and, as a change, from the store.
    fn expire_indexed(
        &mut self,
        side: usize,
        key: &[u8],
        row: &[u8],
        forget: &mut impl FnMut(&Encoded, &Encoded, &Entry),
    ) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let epoch = self.epoch;
        let key = Encoded::from(key);
        let complete = held.hold(&key, epoch).complete[side];
        let bucket = self.sides[side].entry(key.clone()).or_default();
        let row = Encoded::from(row);
        let entry = match bucket.get_mut(&row) {
            Some(e) => {
                debug_assert!(e.copies != 0, "an indexed row is stored");
                forget(&key, &row, e);
                self.held_rows -= 1;
                e.copies = 0;
                e
            }
            // In the store alone: a tombstone keeps a read of the rest
            // from bringing it back.
            None => {
                debug_assert!(!complete, "a complete side holds every row");
                held.bytes += OVERHEAD + row.len();
                bucket.entry(row.clone()).or_default()
            }
        };
        let time = entry.time;
        if !std::mem::replace(&mut entry.changed, true) {
            self.changed.push(ChangedRow {
                side: side as u8,
                key: key.clone(),
                row: row.clone(),
                time,
                in_store: true,
            });
        }
        if complete {
            bucket.remove(&row);
            held.bytes -= OVERHEAD + row.len();
            if bucket.is_empty() {
                self.sides[side].remove(&key);
            }
        }
        self.rows[side] -= 1;
    }

    /// Epoch `epoch` ends: the next checkpoint is its.
    pub fn end_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }
}

/// Reads the stored rows of `side` under `key` into `bucket`, which holds
/// some of them already (those are newer, and kept), and drops its
/// tombstones. Returns the rows added, and the bytes added and dropped.
fn read_rows(
    table: &StoreTable,
    stamped: bool,
    key: &[u8],
    side: usize,
    bucket: &mut Bucket,
) -> Result<(u64, (usize, usize))> {
    let (mut rows, mut added) = (0, 0);
    let mut failed = None;
    table.scan(&state_key::side_prefix(key, side as u8), |row, value| {
        if failed.is_some() || bucket.contains_key(row) {
            return;
        }
        match decode_entry(value, stamped) {
            Ok(entry) => {
                bucket.insert(row.into(), entry);
                rows += 1;
                added += OVERHEAD + row.len();
            }
            Err(e) => failed = Some(e),
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let mut dropped = 0;
    bucket.retain(|row, e| {
        if e.copies == 0 {
            dropped += OVERHEAD + row.len();
        }
        e.copies != 0
    });
    Ok((rows, (added, dropped)))
}

/// A stored row's value: copies, time, and stamp if `stamped`.
fn encode_entry(entry: &Entry, stamped: bool) -> Vec<u8> {
    let mut value = ValueWriter::new();
    value.i64(entry.copies).opt_i64(entry.time);
    if stamped {
        value.i64(entry.stamp);
    }
    value.finish()
}

fn decode_entry(value: &[u8], stamped: bool) -> Result<Entry> {
    let mut value = ValueReader::new(value);
    let copies = value.i64()?;
    let time = value.opt_i64()?;
    let stamp = if stamped { value.i64()? } else { 0 };
    if copies == 0 {
        return Err(ExecutorError::CorruptState(
            "a join's stored row has no copies".into(),
        ));
    }
    Ok(Entry {
        copies,
        degree: 0,
        time,
        stamp,
        changed: false,
    })
}
