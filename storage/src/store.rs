//! The RocksDB store: catalog entries, table rows and checkpoints.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{
    BlockBasedOptions, Cache, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions,
};

use crate::catalog::CatalogEntry;
use crate::checkpoint::{
    CHECKPOINTED, CheckpointBatch, CheckpointMeta, FAILED, LOG, LoggedChange, META_EPOCH, META_LOG,
    META_PARALLELISM, STATE, StoredFailure, log_key, read_u64, relation_key, relation_prefix,
};
use crate::error::{Result, StorageError};
use crate::job_history::StoredJob;
use crate::row_parts::{ROW_PARTS, StoredPart, StoredRows, read_part};

const CATALOG: u8 = b'c';
const ROWS: u8 = b'r';
/// `p<name>` -> value: system parameters set with `ALTER SYSTEM SET`.
const PARAMETER: u8 = b'p';
/// `j <rel:u32be>` -> a job's history (see [`crate::job_history`]).
const JOB: u8 = b'j';

/// RocksDB's cache of uncompressed blocks, shared by everything stored.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

/// One change to a table's rows, applied atomically with the others of a statement.
#[derive(Debug)]
pub enum RowWrite {
    /// Insert or overwrite the row stored under `key`.
    Put {
        /// Row key (primary key or hidden row id, encoded by the caller).
        key: Vec<u8>,
        /// Encoded row.
        value: Vec<u8>,
    },
    /// Remove the row stored under `key`.
    Delete {
        /// Row key.
        key: Vec<u8>,
    },
}

/// Handle to the data directory. Cheap to share behind an `Arc`.
pub struct Store {
    db: DB,
    /// The last table change logged (see [`crate::checkpoint`]).
    last_seq: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

fn row_prefix(table: u32) -> [u8; 5] {
    relation_prefix(ROWS, table)
}

fn row_key(table: u32, key: &[u8]) -> Vec<u8> {
    relation_key(ROWS, table, key)
}

/// The least key above every key starting with `prefix`; None if there is
/// none (`prefix` is all 0xff bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while end.last() == Some(&0xff) {
        end.pop();
    }
    let last = end.last_mut()?;
    *last += 1;
    Some(end)
}

fn catalog_key(id: u32) -> [u8; 5] {
    let mut k = [CATALOG, 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // The `rocksdb` state backend reads operator state by key: bloom
        // filters answer most lookups of new keys without reading a block,
        // and a block cache keeps hot blocks decoded.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        opts.set_block_based_table_factory(&table);
        match DB::open(&opts, dir) {
            Ok(db) => {
                let store = Self {
                    db,
                    last_seq: AtomicU64::new(0),
                };
                let last_logged = store
                    .last_key_with(&[LOG])?
                    .and_then(|k| read_u64(&k[1..]))
                    .unwrap_or(0);
                let seq = last_logged.max(store.meta()?.log_position);
                store.last_seq.store(seq, Ordering::SeqCst);
                Ok(store)
            }
            // RocksDB reports a held LOCK file as an IO error naming "lock".
            Err(e) if e.to_string().to_lowercase().contains("lock") => {
                Err(StorageError::Locked(dir.to_path_buf()))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Persists a catalog entry.
    pub fn put_catalog(&self, entry: &CatalogEntry) -> Result<()> {
        let value = serde_json::to_vec(entry).map_err(|e| StorageError::CorruptCatalog {
            id: entry.id,
            reason: e.to_string(),
        })?;
        let mut batch = WriteBatch::default();
        batch.put(catalog_key(entry.id), value);
        self.write_synced(batch)
    }

    /// Persists system parameter `name` (durable when this returns).
    pub fn put_parameter(&self, name: &str, value: &str) -> Result<()> {
        let mut key = vec![PARAMETER];
        key.extend_from_slice(name.as_bytes());
        let mut batch = WriteBatch::default();
        batch.put(key, value.as_bytes());
        self.write_synced(batch)
    }

    /// Every stored system parameter.
    pub fn parameters(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        self.scan_prefix(&[PARAMETER], |name, value| {
            out.push((
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            ));
        })?;
        Ok(out)
    }

    /// Persists the history of relation `id`'s job (durable when this returns).
    pub fn put_job(&self, id: u32, job: &StoredJob) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(relation_prefix(JOB, id), job.encode());
        self.write_synced(batch)
    }

    /// Every stored job history, by relation id.
    pub fn jobs(&self) -> Result<Vec<(u32, StoredJob)>> {
        let mut out = Vec::new();
        self.scan_prefix(&[JOB], |id, value| {
            let id = id.try_into().ok().map(u32::from_be_bytes);
            if let (Some(id), Some(job)) = (id, StoredJob::decode(value)) {
                out.push((id, job));
            }
        })?;
        Ok(out)
    }

    /// Removes a relation: its catalog entry, rows and checkpointed state, atomically.
    pub fn drop_relation(&self, id: u32) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete(catalog_key(id));
        for tag in [ROWS, ROW_PARTS, STATE, CHECKPOINTED, FAILED, JOB] {
            batch.delete_range(relation_prefix(tag, id), relation_prefix(tag, id + 1));
        }
        self.write_synced(batch)
    }

    /// All catalog entries, in id (creation) order.
    pub fn catalog(&self) -> Result<Vec<CatalogEntry>> {
        let mut out = Vec::new();
        let iter = self
            .db
            .iterator(IteratorMode::From(&[CATALOG], Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if key.first() != Some(&CATALOG) {
                break;
            }
            let id = key
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            let entry =
                serde_json::from_slice(&value).map_err(|e| StorageError::CorruptCatalog {
                    id,
                    reason: e.to_string(),
                })?;
            out.push(entry);
        }
        Ok(out)
    }

    /// Applies a statement's row changes to `table` atomically and durably,
    /// logging `change` (what the table's readers will be sent) with them.
    /// Returns the change's position in the log. Callers serialize writes.
    pub fn write_rows(&self, table: u32, writes: &[RowWrite], change: &[u8]) -> Result<u64> {
        let mut batch = WriteBatch::default();
        for w in writes {
            match w {
                RowWrite::Put { key, value } => batch.put(row_key(table, key), value),
                RowWrite::Delete { key } => batch.delete(row_key(table, key)),
            }
        }
        let seq = self.last_seq.load(Ordering::SeqCst) + 1;
        let mut logged = Vec::with_capacity(4 + change.len());
        logged.extend_from_slice(&table.to_be_bytes());
        logged.extend_from_slice(change);
        batch.put(log_key(seq), logged);
        self.write_synced(batch)?;
        self.last_seq.store(seq, Ordering::SeqCst);
        Ok(seq)
    }

    /// Writes a checkpoint, durably. On error nothing of it was written and
    /// it can be written again.
    pub fn commit_checkpoint(&self, checkpoint: &CheckpointBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        // RocksDB consumes the batch it writes; a copy keeps ours for a retry.
        let batch = WriteBatch::from_data(checkpoint.batch.data());
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// Where the last committed checkpoint left off.
    pub fn meta(&self) -> Result<CheckpointMeta> {
        let get = |key: &[u8]| -> Result<Option<u64>> {
            Ok(self.db.get_pinned(key)?.and_then(|v| read_u64(&v)))
        };
        Ok(CheckpointMeta {
            epoch: get(META_EPOCH)?.unwrap_or(0),
            log_position: get(META_LOG)?.unwrap_or(0),
            parallelism: get(META_PARALLELISM)?,
        })
    }

    /// Relation `id`'s failure, if the last checkpoint records one.
    pub fn failure(&self, id: u32) -> Result<Option<StoredFailure>> {
        let value = self.db.get_pinned(relation_prefix(FAILED, id))?;
        Ok(value.and_then(|v| StoredFailure::decode(&v)))
    }

    /// Every failure the last checkpoint records, by relation.
    pub fn failures(&self) -> Result<Vec<(u32, StoredFailure)>> {
        let mut out = Vec::new();
        self.scan_prefix(&[FAILED], |key, value| {
            let id = key
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes);
            if let (Some(id), Some(failure)) = (id, StoredFailure::decode(value)) {
                out.push((id, failure));
            }
        })?;
        Ok(out)
    }

    /// Whether a committed checkpoint holds relation `id`.
    pub fn is_checkpointed(&self, id: u32) -> Result<bool> {
        Ok(self.checkpoint_layout(id)?.is_some())
    }

    /// The state layout version relation `id`'s checkpoints were written
    /// in (0: before layouts had versions), if a checkpoint holds it.
    pub fn checkpoint_layout(&self, id: u32) -> Result<Option<u32>> {
        let value = self.db.get_pinned(relation_prefix(CHECKPOINTED, id))?;
        Ok(value.map(|v| {
            v.get(8..12)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_be_bytes)
        }))
    }

    /// Visits the committed rows of relation `id`, oldest part first (see
    /// [`crate::row_parts`]). Returns what the parts hold.
    pub fn scan_committed_rows(
        &self,
        id: u32,
        visit: impl FnMut(StoredPart<'_>),
    ) -> Result<StoredRows> {
        self.scan_committed_rows_until(id, u64::MAX, visit)
    }

    /// Visits the parts of relation `id`'s rows up to epoch `until`,
    /// oldest first: its rows at that epoch, if no base part written since
    /// replaced them.
    pub fn scan_committed_rows_until(
        &self,
        id: u32,
        until: u64,
        mut visit: impl FnMut(StoredPart<'_>),
    ) -> Result<StoredRows> {
        let mut stored = StoredRows::default();
        let mut failed = None;
        let prefix = relation_prefix(ROW_PARTS, id);
        // Parts are keyed by epoch first: the later ones are not read.
        let end = until.checked_add(1).map(|after| {
            let mut end = prefix.to_vec();
            end.extend_from_slice(&after.to_be_bytes());
            end
        });
        self.scan_prefix_below(&prefix, end, |key, part| {
            if failed.is_none() {
                stored.stored_bytes += part.len() as u64;
                failed = read_part(id, key, part, &mut visit).err();
            }
        })?;
        failed.map_or(Ok(stored), Err)
    }

    /// The checkpointed state entries of relation `id`'s pipeline whose keys
    /// start with `prefix`, in key order, `prefix` removed.
    pub fn state(&self, id: u32, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan_state(id, prefix, |k, v| out.push((k.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    /// Visits the checkpointed state entries of relation `id` whose keys
    /// start with `prefix`, in key order, `prefix` removed.
    pub fn scan_state(
        &self,
        id: u32,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<()> {
        self.scan_prefix(&relation_key(STATE, id, prefix), visit)
    }

    /// Visits the checkpointed state entries of relation `id` whose keys
    /// are `prefix` followed by a suffix from `from` up to, not including,
    /// `to`, in key order, `prefix` removed.
    pub fn scan_state_between(
        &self,
        id: u32,
        prefix: &[u8],
        (from, to): (&[u8], &[u8]),
        visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<()> {
        let prefix = relation_key(STATE, id, prefix);
        let start = [prefix.as_slice(), from].concat();
        let end = [prefix.as_slice(), to].concat();
        self.scan_between(&prefix, &start, Some(end), visit)
    }

    /// The checkpointed values of relation `id`'s state keys `prefix ++ key`
    /// for each of `keys` (None where absent), in order.
    pub fn get_state<'k>(
        &self,
        id: u32,
        prefix: &[u8],
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let full = keys.into_iter().map(|key| {
            let mut k = relation_key(STATE, id, prefix);
            k.extend_from_slice(key);
            k
        });
        self.db
            .multi_get(full)
            .into_iter()
            .map(|r| r.map_err(StorageError::from))
            .collect()
    }

    /// Table changes after `position`, in log order.
    pub fn logged_after(&self, position: u64) -> Result<Vec<LoggedChange>> {
        let mut out = Vec::new();
        let start = log_key(position.saturating_add(1));
        let iter = self
            .db
            .iterator(IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if key.first() != Some(&LOG) {
                break;
            }
            let (Some(seq), Some(table)) = (
                read_u64(&key[1..]),
                value.get(..4).and_then(|b| b.try_into().ok()),
            ) else {
                continue;
            };
            out.push(LoggedChange {
                seq,
                table: u32::from_be_bytes(table),
                change: value[4..].to_vec(),
            });
        }
        Ok(out)
    }

    fn scan_prefix(&self, prefix: &[u8], visit: impl FnMut(&[u8], &[u8])) -> Result<()> {
        self.scan_prefix_below(prefix, None, visit)
    }

    /// [`Self::scan_prefix`], stopping at key `end` if given.
    fn scan_prefix_below(
        &self,
        prefix: &[u8],
        end: Option<Vec<u8>>,
        visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<()> {
        self.scan_between(prefix, prefix, end, visit)
    }

    /// [`Self::scan_prefix_below`], starting at key `start` (at or after
    /// `prefix`).
    fn scan_between(
        &self,
        prefix: &[u8],
        start: &[u8],
        end: Option<Vec<u8>>,
        mut visit: impl FnMut(&[u8], &[u8]),
    ) -> Result<()> {
        // The bound keeps the iterator from reading a block past the
        // prefix (and files that hold none of it): a join's per-key scans
        // would otherwise read and decompress one more block each.
        let mut options = ReadOptions::default();
        if let Some(end) = end.or_else(|| prefix_end(prefix)) {
            options.set_iterate_upper_bound(end);
        }
        let iter = self
            .db
            .iterator_opt(IteratorMode::From(start, Direction::Forward), options);
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            visit(&key[prefix.len()..], &value);
        }
        Ok(())
    }

    /// The greatest key starting with `prefix` (which must not be all 0xff bytes).
    fn last_key_with(&self, prefix: &[u8]) -> Result<Option<Vec<u8>>> {
        // Seek backwards from the least key above every key with `prefix`.
        let end = prefix_end(prefix).unwrap_or_default();
        let mut iter = self
            .db
            .iterator(IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item?;
                Ok(key.starts_with(prefix).then(|| key.to_vec()))
            }
            None => Ok(None),
        }
    }

    /// Whether `table` holds a row under `key`.
    pub fn row_exists(&self, table: u32, key: &[u8]) -> Result<bool> {
        Ok(self.db.get_pinned(row_key(table, key))?.is_some())
    }

    /// Values of the rows under `keys` (None where absent), in order.
    pub fn get_rows(&self, table: u32, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.db
            .multi_get(keys.iter().map(|k| row_key(table, k)))
            .into_iter()
            .map(|r| r.map_err(StorageError::from))
            .collect()
    }

    /// Visits every row of `table` in key order as `(key, value)`.
    pub fn scan_rows(&self, table: u32, visit: impl FnMut(&[u8], &[u8])) -> Result<()> {
        self.scan_prefix(&row_prefix(table), visit)
    }

    /// The greatest row key of `table`, if any (used to continue hidden row ids).
    pub fn last_row_key(&self, table: u32) -> Result<Option<Vec<u8>>> {
        let prefix = row_prefix(table);
        Ok(self
            .last_key_with(&prefix)?
            .map(|key| key[prefix.len()..].to_vec()))
    }
}
