//! State ordered by time: entries under (time, key), taken in time order
//! once time passes them. A temporal filter's rows wait here under the
//! time their visibility changes next.
//!
//! Under the `memory` backend every entry is in a B-tree; checkpoints write
//! what changed. Under `rocksdb` the store's entries are the state, and
//! memory holds the earliest entries (the next to be taken) and any the
//! store may lack: beyond the cache's size, a checkpoint evicts the latest
//! entries first, so what time passes next is what memory holds. Under
//! either, the entries taken leave the checkpoint in one range deletion.
//!
//! Layout, in the operator's keyed range (see [`crate::checkpoint`]):
//!
//! ```text
//! <tag> <time: 8 bytes> <key> -> value
//! # <tag>                     -> entries stored
//! ```
//!
//! Invariants:
//! - Every entry with a time below `store_from` (every entry, when it is
//!   None) is in memory. At or above it, an entry not in memory has
//!   exactly the value the store holds.
//! - An entry that differs from the store (changed since the last
//!   checkpoint, or written by a checkpoint not durable yet) is never
//!   evicted; a removed one stays, as absent, until its deletion is durable.
//! - Nothing is added below a time already taken (`taken_below`): the
//!   store's entries there leave with the range deletion, and until it is
//!   durable no read looks there.

use std::collections::{BTreeMap, VecDeque, btree_map};
use std::sync::Arc;

use crate::checkpoint::StateWriter;
use crate::error::{ExecutorError, Result};
use crate::keyed_state::StatePlace;

/// `time` as bytes that sort as the times do.
pub(crate) fn time_bytes(time: i64) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time of an entry's key (its first 8 bytes).
pub(crate) fn time_of(key: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = key
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ExecutorError::CorruptState("a time-ordered state key".into()))?;
    Ok((u64::from_be_bytes(bytes) ^ (1 << 63)) as i64)
}

/// The key of the entry at (`time`, `key`): its time's bytes, then `key`.
fn entry_key(time: i64, key: &[u8]) -> Box<[u8]> {
    [&time_bytes(time)[..], key].concat().into()
}

/// Bytes counted for an entry besides its key: the map's node and value.
const ENTRY_OVERHEAD: usize = 64;

/// The tag of the entry count's key.
const COUNT: u8 = b'#';

#[derive(Debug)]
struct Slot<V> {
    /// None: absent (removed, or looked up and not found).
    value: Option<V>,
    /// Changed since the last checkpoint.
    changed: bool,
    /// The epoch of the last checkpoint that wrote it (0: the store has it).
    written: u64,
    /// Whether the store holds it, or a checkpoint on its way wrote it.
    in_store: bool,
    /// Bytes counted for it.
    bytes: usize,
}

/// One entry taken: its time, key and value.
pub(crate) type Taken<V> = (i64, Arc<[u8]>, V);

/// Entries `V` under (time, key), in time order.
#[derive(Debug)]
pub(crate) struct TimeOrderedState<V> {
    /// The first byte of its keys in the keyed range.
    tag: u8,
    /// Entries in memory, by [`entry_key`].
    slots: BTreeMap<Box<[u8]>, Slot<V>>,
    /// Keys changed since the last checkpoint (duplicates allowed).
    changed: Vec<Box<[u8]>>,
    /// Absent entries by the epoch whose checkpoint wrote their deletion
    /// (0: the store never had them): forgotten once that is durable.
    deletions: VecDeque<(u64, Box<[u8]>)>,
    /// Entries present, in memory or not.
    len: u64,
    /// `len` as last checkpointed.
    written_len: u64,
    /// Entries present in memory.
    cached: u64,
    /// Bytes counted for the slots.
    bytes: usize,
    /// Entries at or above this time may be in the store alone.
    store_from: Option<i64>,
    /// Entries below this time were taken.
    taken_below: Option<i64>,
    /// The next checkpoint deletes the stored entries below this time.
    deleted_below: Option<i64>,
    place: StatePlace,
    encode: fn(&V) -> Vec<u8>,
    decode: fn(&[u8]) -> Result<V>,
}

impl<V> TimeOrderedState<V> {
    /// Entries under `tag`, stored with `encode` and read back with `decode`.
    pub fn new(tag: u8, encode: fn(&V) -> Vec<u8>, decode: fn(&[u8]) -> Result<V>) -> Self {
        debug_assert_ne!(tag, COUNT);
        Self {
            tag,
            slots: BTreeMap::new(),
            changed: Vec::new(),
            deletions: VecDeque::new(),
            len: 0,
            written_len: 0,
            cached: 0,
            bytes: 0,
            store_from: None,
            taken_below: None,
            deleted_below: None,
            place: StatePlace::default(),
            encode,
            decode,
        }
    }

    /// Where it lives, to configure and attach.
    pub fn place(&mut self) -> &mut StatePlace {
        &mut self.place
    }

    /// Entries present.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Entries present in memory.
    pub fn cached(&self) -> u64 {
        self.cached
    }

    /// Whether an entry at `time` may be in the store and not in memory.
    fn may_be_stored_alone(&self, time: i64) -> bool {
        self.store_from.is_some_and(|from| time >= from)
            && self.taken_below.is_none_or(|taken| time >= taken)
    }

    /// Makes sure each of `entries` (time, key) can be read and set: the
    /// ones that may be in the store alone are read from it, in one
    /// `multi_get`.
    pub fn load<'k>(&mut self, entries: impl IntoIterator<Item = (i64, &'k [u8])>) -> Result<()> {
        if self.store_from.is_none() {
            return Ok(());
        }
        let mut missing: Vec<Box<[u8]>> = entries
            .into_iter()
            .filter(|(time, _)| self.may_be_stored_alone(*time))
            .map(|(time, key)| entry_key(time, key))
            .filter(|key| !self.slots.contains_key(key))
            .collect();
        let Some(table) = self.place.table().filter(|_| !missing.is_empty()) else {
            return Ok(());
        };
        missing.sort_unstable();
        missing.dedup();
        let stored_keys: Vec<Vec<u8>> = missing
            .iter()
            .map(|key| [&[self.tag][..], key].concat())
            .collect();
        let values = table.get_many(stored_keys.iter().map(Vec::as_slice))?;
        for (key, value) in missing.into_iter().zip(values) {
            let value = value.map(|v| (self.decode)(&v)).transpose()?;
            let bytes = ENTRY_OVERHEAD + key.len();
            self.bytes += bytes;
            match value {
                Some(_) => self.cached += 1,
                // Nothing to keep once read, unless it is set.
                None => self.deletions.push_back((0, key.clone())),
            }
            self.slots.insert(
                key,
                Slot {
                    in_store: value.is_some(),
                    value,
                    changed: false,
                    written: 0,
                    bytes,
                },
            );
        }
        Ok(())
    }

    /// Sets the entry at (`time`, `key`) (loaded) to `value`, or with None
    /// removes it. `time` is not below a time taken.
    pub fn set(&mut self, time: i64, key: &[u8], value: Option<V>) {
        self.update(time, key, |_| value);
    }

    /// Sets the entry at (`time`, `key`) (loaded) to what `f` makes of its
    /// value (None: absent, and removes it). `time` is not below a time
    /// taken.
    pub fn update(&mut self, time: i64, key: &[u8], f: impl FnOnce(Option<&V>) -> Option<V>) {
        debug_assert!(self.taken_below.is_none_or(|taken| time >= taken));
        // The key is listed as changed once per checkpoint.
        let (slot, first_change) = match self.slots.entry(entry_key(time, key)) {
            btree_map::Entry::Occupied(o) => {
                let first_change = (!o.get().changed).then(|| o.key().clone());
                (o.into_mut(), first_change)
            }
            btree_map::Entry::Vacant(v) => {
                let bytes = ENTRY_OVERHEAD + v.key().len();
                self.bytes += bytes;
                let first_change = Some(v.key().clone());
                let slot = v.insert(Slot {
                    value: None,
                    changed: false,
                    written: 0,
                    in_store: false,
                    bytes,
                });
                (slot, first_change)
            }
        };
        let value = f(slot.value.as_ref());
        match (slot.value.is_some(), value.is_some()) {
            (false, true) => {
                self.len += 1;
                self.cached += 1;
            }
            (true, false) => {
                self.len -= 1;
                self.cached -= 1;
            }
            _ => {}
        }
        slot.value = value;
        slot.changed = true;
        self.changed.extend(first_change);
    }

    /// Removes the entry at (`time`, `key`), which is present (its owner
    /// knows) or was taken, whether memory holds it or not: no read needed.
    pub fn remove_present(&mut self, time: i64, key: &[u8]) {
        if self.taken_below.is_some_and(|taken| time < taken) {
            return;
        }
        let entry = entry_key(time, key);
        if self.slots.contains_key(&entry) {
            self.set(time, key, None);
            return;
        }
        // In the store alone.
        let bytes = ENTRY_OVERHEAD + entry.len();
        self.bytes += bytes;
        debug_assert!(self.len > 0, "an entry removed as present is counted");
        self.len = self.len.saturating_sub(1);
        self.changed.push(entry.clone());
        self.slots.insert(
            entry,
            Slot {
                value: None,
                changed: true,
                written: 0,
                in_store: true,
                bytes,
            },
        );
    }

    /// Takes every entry with a time below `threshold`, in (time, key)
    /// order; the next checkpoint deletes them from the store in one range.
    pub fn take_below(&mut self, threshold: i64) -> Result<Vec<Taken<V>>> {
        if self.taken_below.is_some_and(|taken| taken >= threshold) {
            return Ok(Vec::new());
        }
        let bound = time_bytes(threshold);
        let later = self.slots.split_off(&bound[..]);
        let in_memory = std::mem::replace(&mut self.slots, later);
        let mut taken: Vec<(Box<[u8]>, V)> = Vec::new();
        if let (Some(from), Some(table)) = (self.store_from, self.place.table())
            && from < threshold
        {
            let from = from.max(self.taken_below.unwrap_or(i64::MIN));
            let mut failed = None;
            table.scan_between(&[self.tag], (&time_bytes(from), &bound), |key, value| {
                // Memory's copy is the newer one.
                if failed.is_some() || in_memory.contains_key(key) {
                    return;
                }
                match (self.decode)(value) {
                    Ok(value) => taken.push((key.into(), value)),
                    Err(e) => failed = Some(e),
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            self.len -= taken.len() as u64;
            self.store_from = Some(threshold);
        }
        for (key, slot) in in_memory {
            self.bytes -= slot.bytes;
            if let Some(value) = slot.value {
                self.len -= 1;
                self.cached -= 1;
                taken.push((key, value));
            }
        }
        taken.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.taken_below = Some(threshold);
        self.deleted_below = Some(threshold);
        taken
            .into_iter()
            .map(|(key, value)| Ok((time_of(&key)?, Arc::from(&key[8..]), value)))
            .collect()
    }

    /// Writes what changed since the last checkpoint, which is epoch
    /// `epoch`'s; then drops from memory what the backend need not keep.
    pub fn checkpoint(&mut self, state: &mut StateWriter<'_>, epoch: u64) {
        let mut state = state.keyed();
        let tag = self.tag;
        // First, so that it cannot delete an entry the writes below set.
        if let Some(threshold) = self.deleted_below.take() {
            state.delete_range(&[tag], &[&[tag][..], &time_bytes(threshold)].concat());
        }
        let limited = self.place.cache_limit().is_some();
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        let mut key_buf = Vec::new();
        for key in changed {
            // Taken since: the range deletion covers it.
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            key_buf.clear();
            key_buf.push(tag);
            key_buf.extend_from_slice(&key);
            slot.changed = false;
            slot.written = epoch;
            match &slot.value {
                Some(value) => {
                    state.put(&key_buf, (self.encode)(value));
                    slot.in_store = true;
                }
                None => {
                    if std::mem::take(&mut slot.in_store) {
                        state.delete(&key_buf);
                    }
                    if limited {
                        self.deletions.push_back((epoch, key));
                    } else if let Some(slot) = self.slots.remove(&key) {
                        // Nothing reads the store back: forget it now.
                        self.bytes -= slot.bytes;
                    }
                }
            }
        }
        if self.len != self.written_len {
            state.put(&[COUNT, tag], self.len.to_be_bytes().to_vec());
            self.written_len = self.len;
        }
        self.shed();
    }

    /// `rocksdb` backend: forgets absent entries the store agrees with and,
    /// beyond the cache's size, evicts the latest entries it holds.
    fn shed(&mut self) {
        let (Some(limit), Some(table)) = (self.place.cache_limit(), self.place.table()) else {
            return;
        };
        let durable = table.durable();
        let settled = |slot: &Slot<V>| !slot.changed && slot.written <= durable;
        while let Some((epoch, _)) = self.deletions.front() {
            if *epoch > durable {
                break;
            }
            let Some((_, key)) = self.deletions.pop_front() else {
                break;
            };
            // Set again since, or taken.
            if self
                .slots
                .get(&key)
                .is_some_and(|slot| slot.value.is_none() && settled(slot))
                && let Some(slot) = self.slots.remove(&key)
            {
                self.bytes -= slot.bytes;
            }
        }
        if self.bytes <= limit {
            return;
        }
        let target = limit / 4 * 3;
        let mut left = self.bytes;
        let victims: Vec<Box<[u8]>> = self
            .slots
            .iter()
            .rev()
            .filter(|(_, slot)| slot.value.is_some() && settled(slot))
            .take_while(|(_, slot)| {
                let evict = left > target;
                left = left.saturating_sub(slot.bytes);
                evict
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in victims {
            if let Ok(time) = time_of(&key) {
                self.store_from = Some(self.store_from.map_or(time, |from| from.min(time)));
            }
            if let Some(slot) = self.slots.remove(&key) {
                self.bytes -= slot.bytes;
                self.cached -= 1;
            }
        }
    }

    /// Starts from the checkpointed entries: the `memory` backend reads
    /// them all, the `rocksdb` one only their count.
    pub fn restore(&mut self) -> Result<()> {
        self.slots.clear();
        self.changed.clear();
        self.deletions.clear();
        (self.len, self.cached, self.bytes) = (0, 0, 0);
        (self.store_from, self.taken_below, self.deleted_below) = (None, None, None);
        let Some(table) = self.place.table().cloned() else {
            self.written_len = 0;
            return Ok(());
        };
        if self.place.cache_limit().is_none() {
            let mut failed = None;
            table.scan(&[self.tag], |key, value| {
                if failed.is_some() {
                    return;
                }
                match (self.decode)(value) {
                    Ok(value) => {
                        let bytes = ENTRY_OVERHEAD + key.len();
                        self.bytes += bytes;
                        self.slots.insert(
                            key.into(),
                            Slot {
                                value: Some(value),
                                changed: false,
                                written: 0,
                                in_store: true,
                                bytes,
                            },
                        );
                    }
                    Err(e) => failed = Some(e),
                }
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            self.len = self.slots.len() as u64;
            self.cached = self.len;
        } else {
            self.store_from = Some(i64::MIN);
            self.len = match table.get(&[COUNT, self.tag])? {
                Some(v) => v
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| {
                        ExecutorError::CorruptState("a time-ordered state's count".into())
                    })?,
                None => 0,
            };
        }
        self.written_len = self.len;
        Ok(())
    }
}
