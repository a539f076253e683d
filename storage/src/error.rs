//! Storage errors.

use std::path::PathBuf;

/// Errors from the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process holds the data directory.
    #[error(
        "data directory {0} is in use by another eddy process; stop it or choose another --data-dir"
    )]
    Locked(PathBuf),
    /// The data directory cannot be created or read.
    #[error("cannot use data directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// RocksDB reported an error.
    #[error("storage error: {0}")]
    RocksDb(#[from] rocksdb::Error),
    /// A stored catalog entry could not be read back; this is a bug in Eddy or a damaged data dir.
    #[error("catalog entry {id} is unreadable: {reason}")]
    CorruptCatalog {
        /// Relation id of the entry.
        id: u32,
        /// What went wrong.
        reason: String,
    },
    /// A relation's stored rows could not be read back.
    #[error("the checkpointed rows of relation {id} are unreadable: {reason}")]
    CorruptRows {
        /// The relation.
        id: u32,
        /// What went wrong.
        reason: String,
    },
}

/// Result alias for the storage crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// Whether the write failed because the disk (or the file system's
    /// quota) is full. RocksDB reports ENOSPC as an `IO error` whose
    /// sub-code text is the OS's; the data written before is intact.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::RocksDb(e) => {
                e.kind() == rocksdb::ErrorKind::IOError
                    && e.as_ref().contains("No space left on device")
            }
            StorageError::Io { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}
