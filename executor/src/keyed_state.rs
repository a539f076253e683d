//! An operator's keyed state, under one of two state backends.
//!
//! - `memory`: every entry is in a hash map; checkpoints write what changed.
//!   Recovery reads all entries back.
//! - `rocksdb`: the checkpointed entries in the store are the state, and
//!   the map is a cache of the entries used lately, of about
//!   `cache_bytes`. An operator [`KeyedState::load`]s the keys a batch
//!   needs before it reads them (one `multi_get` for the misses), so state
//!   may be far larger than memory and recovery reads nothing up front.
//!
//! Both write the same keys (`v <key>` -> value, `n` -> number of keys,
//! under the operator's keyed range, see [`crate::checkpoint`]), so a data
//! directory recovers under either backend.
//!
//! Invariants of the cache:
//! - An entry that differs from the store — changed since the last
//!   checkpoint, or written by a checkpoint whose epoch is not durable yet —
//!   is never evicted. A removed key stays cached, as absent, until its
//!   deletion is durable. So a key not in the map has exactly the value
//!   the store holds.
//! - Only keys loaded (or inserted) in the current call are read: eviction
//!   runs at checkpoints, between calls.
//! - Until an entry first leaves memory (and after a restore, while no key
//!   is stored), every key present is in memory, so a key not in the map
//!   is absent and is not read: a state that fits its cache never reads.

use std::collections::VecDeque;
use std::sync::Arc;

use eddy_storage::Store;

use tokio::sync::watch;

use crate::checkpoint::{KEYED, StateWriter, state_prefix};
use crate::error::{ExecutorError, Result};
use crate::hash::HashMap;

/// Where an operator's keyed state lives between checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// All of it in memory.
    #[default]
    Memory,
    /// In the store, with a cache.
    Rocksdb,
}

impl StateBackend {
    /// The backend called `name`.
    pub fn named(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "memory" => Some(Self::Memory),
            "rocksdb" => Some(Self::Rocksdb),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Rocksdb => "rocksdb",
        }
    }
}

/// How a pipeline keeps its keyed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateConfig {
    /// The backend.
    pub backend: StateBackend,
    /// The `rocksdb` backend's cache, per operator and partition.
    pub cache_bytes: u64,
}

impl StateConfig {
    /// The cache's size in bytes when state may leave memory (the
    /// `rocksdb` backend); None when all of it stays.
    pub fn cache_limit(&self) -> Option<usize> {
        (self.backend == StateBackend::Rocksdb)
            .then(|| usize::try_from(self.cache_bytes).unwrap_or(usize::MAX))
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Memory,
            cache_bytes: 64 << 20,
        }
    }
}

/// Bytes counted for a cached entry besides its key and value: the map's
/// slot and bookkeeping.
const ENTRY_OVERHEAD: usize = 64;

/// The value tag of an entry's state key, and the key of the count.
const VALUE: u8 = b'v';
const COUNT: &[u8] = b"n";

/// An operator's place in the store.
#[derive(Debug, Clone)]
pub struct StoreTable {
    store: Arc<Store>,
    relation: u32,
    /// `scope operator|KEYED`.
    prefix: [u8; 6],
    /// `prefix VALUE`: where the entries are.
    value_prefix: [u8; 7],
    /// The last durable epoch.
    durable: watch::Receiver<u64>,
}

impl StoreTable {
    /// The keyed state of operator `operator` of scope `scope` of relation
    /// `relation`'s pipeline.
    pub fn new(
        store: Arc<Store>,
        relation: u32,
        scope: u32,
        operator: u16,
        durable: watch::Receiver<u64>,
    ) -> Self {
        let prefix = state_prefix(scope, operator | KEYED);
        let mut value_prefix = [VALUE; 7];
        value_prefix[..6].copy_from_slice(&prefix);
        Self {
            store,
            relation,
            prefix,
            value_prefix,
            durable,
        }
    }

    /// Visits the checkpointed entries of the keyed range whose keys start
    /// with `prefix`, in key order, `prefix` removed.
    pub(crate) fn scan(&self, prefix: &[u8], visit: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let mut full = self.prefix.to_vec();
        full.extend_from_slice(prefix);
        Ok(self.store.scan_state(self.relation, &full, visit)?)
    }

    /// Visits the checkpointed entries of the keyed range whose keys are
    /// `prefix` followed by a suffix from `from` up to, not including, `to`,
    /// in key order, `prefix` removed.
    pub(crate) fn scan_between(
        &self,
        prefix: &[u8],
        range: (&[u8], &[u8]),
        visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<()> {
        let mut full = self.prefix.to_vec();
        full.extend_from_slice(prefix);
        Ok(self
            .store
            .scan_state_between(self.relation, &full, range, visit)?)
    }

    /// The checkpointed value of `key` in the keyed range.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.get_many([key])?.into_iter().next().flatten())
    }

    /// The checkpointed values of `keys` in the keyed range, in order.
    pub(crate) fn get_many<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self.store.get_state(self.relation, &self.prefix, keys)?)
    }

    /// The last durable epoch: a checkpoint of a later one may not be in
    /// the store yet.
    pub(crate) fn durable(&self) -> u64 {
        *self.durable.borrow()
    }
}

/// Where an operator's state lives: how its backend keeps it, and its
/// place in the store once the server has a data directory.
#[derive(Debug, Clone, Default)]
pub struct StatePlace {
    config: StateConfig,
    table: Option<StoreTable>,
}

impl StatePlace {
    /// Kept as `config` says, at `table`.
    pub fn new(config: StateConfig, table: StoreTable) -> Self {
        Self {
            config,
            table: Some(table),
        }
    }

    /// Keeps the state as `config` says (the `rocksdb` backend takes effect
    /// once the state has a place in a store).
    pub fn configure(&mut self, config: StateConfig) {
        self.config = config;
    }

    /// Gives the state its place in the store: where recovery reads it and
    /// the `rocksdb` backend reads and evicts it.
    pub fn attach(&mut self, table: StoreTable) {
        self.table = Some(table);
    }

    /// The cache limit, when entries leave memory: the `rocksdb` backend,
    /// with a place in a store.
    pub fn cache_limit(&self) -> Option<usize> {
        self.table.as_ref().and(self.config.cache_limit())
    }

    /// Its place in the store, if it has one.
    pub fn table(&self) -> Option<&StoreTable> {
        self.table.as_ref()
    }
}

/// Which cached entries to evict, least recently used first, to bring
/// `bytes` down to three quarters of `limit` (so eviction runs once in a
/// while rather than at every checkpoint). `candidates` are the evictable
/// entries: (epoch last used, bytes, key).
pub(crate) fn eviction_victims<K>(
    mut candidates: Vec<(u64, usize, K)>,
    bytes: usize,
    limit: usize,
) -> Vec<K> {
    if bytes <= limit {
        return Vec::new();
    }
    let target = limit / 4 * 3;
    candidates.sort_unstable_by_key(|(used, _, _)| *used);
    let mut left = bytes;
    candidates
        .into_iter()
        .take_while(|(_, size, _)| {
            let evict = left > target;
            left = left.saturating_sub(*size);
            evict
        })
        .map(|(_, _, key)| key)
        .collect()
}

#[derive(Debug)]
struct Slot<V> {
    /// None: absent (removed, or looked up and not found).
    value: Option<V>,
    /// Changed since the last checkpoint.
    changed: bool,
    /// The epoch of the last checkpoint that wrote it (0: the store has it).
    written: u64,
    /// Whether the store holds a value for it, or a checkpoint wrote one:
    /// a key that comes and goes between two checkpoints writes nothing.
    in_store: bool,
    /// The epoch it was last used in.
    used: u64,
    /// Bytes counted for it.
    bytes: usize,
}

impl<V> Slot<V> {
    /// A slot holding what the store holds, last used in epoch `used`.
    fn stored(value: Option<V>, used: u64, bytes: usize) -> Self {
        Self {
            in_store: value.is_some(),
            value,
            changed: false,
            written: 0,
            used,
            bytes,
        }
    }
}

/// Bytes counted for an entry of `key` whose value encodes to `value_len` bytes.
fn entry_bytes(key: &[u8], value_len: usize) -> usize {
    ENTRY_OVERHEAD + key.len() + value_len
}

/// Sees every key and value of restored state (to rebuild an index).
pub type KeyVisitor<'a, V> = dyn FnMut(&[u8], &V) + 'a;

/// Keyed state: encoded key -> `V`.
#[derive(Debug)]
pub struct KeyedState<V> {
    slots: HashMap<Box<[u8]>, Slot<V>>,
    /// Keys changed since the last checkpoint (duplicates allowed).
    changed: Vec<Box<[u8]>>,
    /// Keys present, cached or not.
    len: u64,
    /// Keys present in memory.
    cached: u64,
    /// Removed keys whose deletion a checkpoint wrote, by that epoch: the
    /// `rocksdb` backend forgets them once it is durable.
    deletions: VecDeque<(u64, Box<[u8]>)>,
    /// Stored keys below this were removed since the last checkpoint, to
    /// be deleted in one range deletion ([`Self::remove_below`]).
    deleted_below: Option<Box<[u8]>>,
    /// `len` as last checkpointed.
    written_len: u64,
    place: StatePlace,
    /// The epoch being processed.
    epoch: u64,
    /// Bytes counted for cached entries.
    bytes: usize,
    /// Every key present is in memory (see the module docs).
    all_in_memory: bool,
}

impl<V> Default for KeyedState<V> {
    fn default() -> Self {
        Self {
            slots: HashMap::default(),
            changed: Vec::new(),
            len: 0,
            cached: 0,
            deletions: VecDeque::new(),
            deleted_below: None,
            written_len: 0,
            place: StatePlace::default(),
            epoch: 1,
            bytes: 0,
            all_in_memory: true,
        }
    }
}

impl<V> KeyedState<V> {
    /// Where it lives, to configure and attach.
    pub fn place(&mut self) -> &mut StatePlace {
        &mut self.place
    }

    /// Keys present.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no key is present.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys present in memory.
    pub fn cached(&self) -> u64 {
        self.cached
    }

    /// Makes sure every one of `keys` can be read: the `rocksdb` backend
    /// reads the ones it does not hold from the store, with `decode`.
    pub fn load<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k [u8]>,
        decode: impl Fn(&[u8]) -> Result<V>,
    ) -> Result<()> {
        if self.place.cache_limit().is_none() || self.all_in_memory {
            // Everything is in memory.
            return Ok(());
        }
        let epoch = self.epoch;
        let mut missing: Vec<&[u8]> = Vec::new();
        for key in keys {
            match self.slots.get_mut(key) {
                Some(slot) => slot.used = epoch,
                None => missing.push(key),
            }
        }
        let Some(table) = self.place.table().filter(|_| !missing.is_empty()) else {
            return Ok(());
        };
        missing.sort_unstable();
        missing.dedup();
        let values =
            table
                .store
                .get_state(table.relation, &table.value_prefix, missing.iter().copied())?;
        for (key, value) in missing.into_iter().zip(values) {
            let bytes = entry_bytes(key, value.as_ref().map_or(0, Vec::len));
            let value = value.map(|v| decode(&v)).transpose()?;
            self.cache(key, Slot::stored(value, epoch, bytes));
        }
        Ok(())
    }

    /// Holds `slot`, as read from the store, under `key`.
    fn cache(&mut self, key: &[u8], slot: Slot<V>) {
        self.bytes += slot.bytes;
        self.cached += u64::from(slot.value.is_some());
        self.slots.insert(key.into(), slot);
    }

    /// The value of `key` (loaded).
    pub fn get(&self, key: &[u8]) -> Option<&V> {
        self.slots.get(key).and_then(|s| s.value.as_ref())
    }

    /// Whether `key` is present (loaded).
    pub fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key` (loaded), to change.
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let slot = self.slots.get_mut(key)?;
        let value = slot.value.as_mut()?;
        if !slot.changed {
            slot.changed = true;
            self.changed.push(key.into());
        }
        Some(value)
    }

    /// Sets `key` (loaded) to `value`; returns it, to change further.
    pub fn insert(&mut self, key: Box<[u8]>, value: V) -> &mut V {
        let epoch = self.epoch;
        let slot = self.slots.entry(key.clone()).or_insert_with(|| {
            let bytes = entry_bytes(&key, 0);
            self.bytes += bytes;
            Slot::stored(None, epoch, bytes)
        });
        if slot.value.is_none() {
            self.len += 1;
            self.cached += 1;
        }
        if !slot.changed {
            slot.changed = true;
            self.changed.push(key);
        }
        slot.used = epoch;
        slot.value.insert(value)
    }

    /// Removes `key` (loaded); returns its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let slot = self.slots.get_mut(key)?;
        let value = slot.value.take()?;
        self.len -= 1;
        self.cached -= 1;
        if !slot.changed {
            slot.changed = true;
            self.changed.push(key.into());
        }
        Some(value)
    }

    /// Removes `key` (loaded), which is below `bound`, as [`Self::remove`]
    /// does; but the next checkpoint deletes it, with every other key
    /// below the highest such bound, in one range deletion. Only for keys
    /// that cannot come back before then (a closed window's groups).
    pub fn remove_below(&mut self, bound: &[u8], key: &[u8]) -> Option<V> {
        debug_assert!(key < bound, "a key removed below a bound is under it");
        let value = self.remove(key)?;
        // The range deletion stands for this key's own.
        let stored = self
            .slots
            .get_mut(key)
            .is_some_and(|slot| std::mem::take(&mut slot.in_store));
        if stored && self.deleted_below.as_deref().is_none_or(|b| b < bound) {
            self.deleted_below = Some(bound.into());
        }
        Some(value)
    }

    /// Epoch `epoch` ends: the next checkpoint is its.
    pub fn end_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Writes what changed since the last checkpoint with `encode`; then
    /// drops from memory what the backend need not keep.
    pub fn checkpoint(&mut self, state: &mut StateWriter<'_>, encode: impl Fn(&V) -> Vec<u8>) {
        let epoch = self.epoch;
        let mut state = state.keyed();
        let mut changed = std::mem::take(&mut self.changed);
        changed.sort_unstable();
        changed.dedup();
        let limited = self.place.cache_limit().is_some();
        let mut key_buf = Vec::new();
        // First, so that it cannot delete a key the writes below set.
        if let Some(bound) = self.deleted_below.take() {
            key_buf.push(VALUE);
            key_buf.extend_from_slice(&bound);
            state.delete_range(&[VALUE], &key_buf);
        }
        for key in changed {
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            key_buf.clear();
            key_buf.push(VALUE);
            key_buf.extend_from_slice(&key);
            slot.changed = false;
            slot.written = epoch;
            match &slot.value {
                Some(value) => {
                    let value = encode(value);
                    let bytes = entry_bytes(&key, value.len());
                    state.put(&key_buf, value);
                    slot.in_store = true;
                    self.bytes = self.bytes + bytes - slot.bytes;
                    slot.bytes = bytes;
                }
                None => {
                    if std::mem::take(&mut slot.in_store) {
                        state.delete(&key_buf);
                    }
                    if limited {
                        self.deletions.push_back((epoch, key));
                    } else {
                        // Nothing reads the store back: forget it now.
                        self.bytes -= slot.bytes;
                        self.slots.remove(&key);
                    }
                }
            }
        }
        if self.len != self.written_len {
            state.put(COUNT, self.len.to_be_bytes().to_vec());
            self.written_len = self.len;
        }
        self.epoch = epoch + 1;
        self.shed();
    }

    /// `rocksdb` backend: forgets removed keys whose deletion is durable
    /// and, beyond the cache's size, evicts the entries used longest ago.
    fn shed(&mut self) {
        let (Some(limit), Some(table)) = (self.place.cache_limit(), self.place.table()) else {
            return;
        };
        let durable = table.durable();
        while let Some((epoch, _)) = self.deletions.front() {
            if *epoch > durable {
                break;
            }
            let Some((_, key)) = self.deletions.pop_front() else {
                break;
            };
            // A later change of the key may not be durable yet.
            if let Some(slot) = self.slots.get(&key)
                && slot.value.is_none()
                && !slot.changed
                && slot.written <= durable
            {
                self.bytes -= slot.bytes;
                self.slots.remove(&key);
            }
        }
        if self.bytes <= limit {
            return;
        }
        let candidates: Vec<(u64, usize, Box<[u8]>)> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.changed && s.written <= durable)
            .map(|(k, s)| (s.used, s.bytes, k.clone()))
            .collect();
        let evict = eviction_victims(candidates, self.bytes, limit);
        self.all_in_memory &= evict.is_empty();
        for key in evict {
            if let Some(slot) = self.slots.remove(&key) {
                self.bytes -= slot.bytes;
                self.cached -= u64::from(slot.value.is_some());
            }
        }
    }

    /// Starts from the checkpointed state: the `memory` backend reads every
    /// entry; the `rocksdb` backend reads only the count, unless `visit`
    /// must see every entry (to rebuild an index of the operator's).
    pub fn restore(
        &mut self,
        decode: impl Fn(&[u8]) -> Result<V>,
        visit: Option<&mut KeyVisitor<'_, V>>,
    ) -> Result<()> {
        self.slots.clear();
        self.changed.clear();
        self.deletions.clear();
        self.deleted_below = None;
        self.bytes = 0;
        self.len = 0;
        self.cached = 0;
        self.all_in_memory = true;
        let Some(table) = self.place.table().cloned() else {
            return Ok(());
        };
        let keep = self.place.cache_limit().is_none();
        if keep || visit.is_some() {
            let mut visit = visit;
            let mut failed = None;
            table
                .store
                .scan_state(table.relation, &table.value_prefix, |key, value| {
                    if failed.is_some() {
                        return;
                    }
                    match decode(value) {
                        Ok(v) => {
                            if let Some(visit) = visit.as_mut() {
                                visit(key, &v);
                            }
                            if keep {
                                let bytes = entry_bytes(key, value.len());
                                self.cache(key, Slot::stored(Some(v), 0, bytes));
                            }
                        }
                        Err(e) => failed = Some(e),
                    }
                })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        let count = table
            .store
            .get_state(table.relation, &table.prefix, [COUNT])?;
        self.len = match count.into_iter().next().flatten() {
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| ExecutorError::CorruptState("a keyed state's count".into()))?,
            None => 0,
        };
        self.all_in_memory = keep || self.len == 0;
        self.written_len = self.len;
        Ok(())
    }
}
