//! Everything Eddy keeps on disk, in one RocksDB database.
//!
//! Key space (all keys start with a one-byte tag so ranges never overlap):
//!
//! ```text
//! c <id:u32be>              -> catalog entry (JSON): one DDL statement that created a relation
//! r <id:u32be> <row key>    -> one table row (Arrow row format bytes of every column)
//! m <name>                  -> small metadata (counters)
//! p <name>                  -> a system parameter set with SQL (its value as text)
//! j <id:u32be>              -> a view's or sink's job history: see [`job_history`]
//! v, s, k, l                -> checkpoints: see [`checkpoint`]
//! ```
//!
//! Invariants:
//! - A write that returns `Ok` is in the WAL and fsynced: it survives `kill -9`.
//! - One process owns a data directory at a time (RocksDB's `LOCK` file); a
//!   second opener gets [`StorageError::Locked`].
//! - Row keys are opaque here; the server encodes them so byte order is the
//!   primary-key order.

mod catalog;
pub mod checkpoint;
mod error;
pub mod job_history;
mod row_parts;
mod store;

pub use catalog::{CatalogEntry, RelationKind};
pub use checkpoint::{CheckpointBatch, CheckpointMeta, LoggedChange, StoredFailure};
pub use error::{Result, StorageError};
pub use job_history::StoredJob;
pub use row_parts::{PartKind, RowPartWriter, StoredPart, StoredRows};
pub use store::{RowWrite, Store, prefix_end};
