//! The RocksDB store: catalog entries and table rows.

use std::path::Path;

use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::catalog::CatalogEntry;
use crate::error::{Result, StorageError};

const CATALOG: u8 = b'c';
const ROWS: u8 = b'r';

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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .finish()
    }
}

fn row_prefix(table: u32) -> [u8; 5] {
    let mut p = [ROWS, 0, 0, 0, 0];
    p[1..].copy_from_slice(&table.to_be_bytes());
    p
}

fn row_key(table: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + key.len());
    k.extend_from_slice(&row_prefix(table));
    k.extend_from_slice(key);
    k
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
        match DB::open(&opts, dir) {
            Ok(db) => Ok(Self { db }),
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

    /// Removes a relation: its catalog entry and all of its rows, atomically.
    pub fn drop_relation(&self, id: u32) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.delete(catalog_key(id));
        let start = row_prefix(id);
        let end = row_prefix(id + 1);
        batch.delete_range(start, end);
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

    /// Applies a statement's row changes to `table` atomically and durably.
    pub fn write_rows(&self, table: u32, writes: &[RowWrite]) -> Result<()> {
        let mut batch = WriteBatch::default();
        for w in writes {
            match w {
                RowWrite::Put { key, value } => batch.put(row_key(table, key), value),
                RowWrite::Delete { key } => batch.delete(row_key(table, key)),
            }
        }
        self.write_synced(batch)
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
    pub fn scan_rows(&self, table: u32, mut visit: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let prefix = row_prefix(table);
        let iter = self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            visit(&key[prefix.len()..], &value);
        }
        Ok(())
    }

    /// The greatest row key of `table`, if any (used to continue hidden row ids).
    pub fn last_row_key(&self, table: u32) -> Result<Option<Vec<u8>>> {
        let end = row_prefix(table + 1);
        let prefix = row_prefix(table);
        let mut iter = self
            .db
            .iterator(IteratorMode::From(&end, Direction::Reverse));
        match iter.next() {
            Some(item) => {
                let (key, _) = item?;
                Ok(key
                    .starts_with(&prefix)
                    .then(|| key[prefix.len()..].to_vec()))
            }
            None => Ok(None),
        }
    }
}
