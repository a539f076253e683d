//! Checkpoints: everything one epoch changed, written in one atomic batch.
//!
//! Key space (next to the catalog's and the tables' in [`crate::store`]):
//!
//! ```text
//! v <rel:u32be> <epoch> <seq> -> part    committed rows of a table or view (see [`crate::row_parts`])
//! s <rel:u32be> <key>        -> bytes   operator state and source positions of a view's pipeline
//! k <rel:u32be>              -> u64be   the epoch that first held the relation
//! l <seq:u64be>              -> <table:u32be> <change>   a table change no checkpoint holds yet
//! f <rel:u32be>              -> <log:u64be> <restartable:u8> <cause:u32be> <reason>   a failed pipeline (see [`StoredFailure`])
//! m epoch | log | parallelism -> u64be
//! ```
//!
//! Invariants:
//! - A checkpoint holds, for its epoch, the rows of every relation, the
//!   state of every pipeline and the position of every reader, and
//!   `m epoch`; it is one `WriteBatch`, so after a crash the store holds
//!   all of the last committed epoch and nothing of a later one.
//! - Table changes are logged (`l`) in the same synced write as the rows
//!   they change. `m log` is the last change an epoch holds; a checkpoint
//!   deletes the log up to it, recovery replays the rest — but for the
//!   changes a failed pipeline's checkpoint lacks: the log is kept after
//!   the oldest restartable failure's position (`f`), so its restart can
//!   replay them, until it checkpoints again.
//! - State keys are opaque here: the executor lays out `s <rel> ...`.

use std::collections::HashMap;

use rocksdb::WriteBatch;

use crate::row_parts::{PartKind, ROW_PARTS, RowPartWriter};

/// Key tags (one byte, so ranges never overlap).
pub(crate) const STATE: u8 = b's';
pub(crate) const CHECKPOINTED: u8 = b'k';
pub(crate) const LOG: u8 = b'l';
pub(crate) const FAILED: u8 = b'f';

pub(crate) const META_EPOCH: &[u8] = b"mepoch";
pub(crate) const META_LOG: &[u8] = b"mlog";
pub(crate) const META_PARALLELISM: &[u8] = b"mparallelism";

/// `tag` followed by relation `id`: the prefix of that relation's keys.
pub(crate) fn relation_prefix(tag: u8, id: u32) -> [u8; 5] {
    let mut p = [tag, 0, 0, 0, 0];
    p[1..].copy_from_slice(&id.to_be_bytes());
    p
}

pub(crate) fn relation_key(tag: u8, id: u32, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + rest.len());
    k.extend_from_slice(&relation_prefix(tag, id));
    k.extend_from_slice(rest);
    k
}

pub(crate) fn log_key(seq: u64) -> [u8; 9] {
    let mut k = [LOG, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// What recovery starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointMeta {
    /// The last committed epoch (0: none yet).
    pub epoch: u64,
    /// The last table change that epoch holds.
    pub log_position: u64,
    /// Partitions the checkpointed pipelines ran with, if any were written.
    pub parallelism: Option<u64>,
}

/// One table change that no checkpoint holds yet.
#[derive(Debug)]
pub struct LoggedChange {
    /// Its position in the log.
    pub seq: u64,
    /// The table it changed.
    pub table: u32,
    /// The change, as the executor encoded it.
    pub change: Vec<u8>,
}

/// A pipeline that failed, as the checkpoints after its failure record it:
/// its own checkpoint stays at its last good epoch, so a restart (or a
/// recovery) must know where that epoch left the table log, and which
/// epoch it was (the views it reads are replayed what they changed since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFailure {
    /// The last table change its checkpoint holds.
    pub log_position: u64,
    /// The epoch its checkpoint holds; `None` when recorded by a version
    /// that did not record it.
    pub epoch: Option<u64>,
    /// Whether restarting from its checkpoint is exact; when not, it stays
    /// failed, across restarts of the server too, until dropped.
    pub restartable: bool,
    /// The relation whose failure it failed with (it reads it), if any:
    /// they restart together.
    pub cause: Option<u32>,
    /// Why it failed.
    pub reason: String,
}

/// Flags of a stored failure: restartable, and an epoch follows the cause
/// (records written before epochs were recorded lack it).
const RESTARTABLE: u8 = 1;
const HAS_EPOCH: u8 = 2;

impl StoredFailure {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = self.log_position.to_be_bytes().to_vec();
        let epoch_flag = if self.epoch.is_some() { HAS_EPOCH } else { 0 };
        v.push(u8::from(self.restartable) | epoch_flag);
        v.extend_from_slice(&self.cause.unwrap_or(u32::MAX).to_be_bytes());
        if let Some(epoch) = self.epoch {
            v.extend_from_slice(&epoch.to_be_bytes());
        }
        v.extend_from_slice(self.reason.as_bytes());
        v
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let flags = *bytes.get(8)?;
        let cause = u32::from_be_bytes(bytes.get(9..13)?.try_into().ok()?);
        let (epoch, reason) = if flags & HAS_EPOCH != 0 {
            (Some(read_u64(bytes.get(13..21)?)?), bytes.get(21..)?)
        } else {
            (None, bytes.get(13..)?)
        };
        Some(Self {
            log_position: read_u64(bytes.get(..8)?)?,
            epoch,
            restartable: flags & RESTARTABLE != 0,
            cause: (cause != u32::MAX).then_some(cause),
            reason: String::from_utf8_lossy(reason).into_owned(),
        })
    }
}

/// The writes of one epoch, built up by the coordinator and committed by
/// [`crate::Store::commit_checkpoint`].
#[derive(Default)]
pub struct CheckpointBatch {
    pub(crate) batch: WriteBatch,
    /// The epoch, once [`CheckpointBatch::finish`] was called.
    pub(crate) epoch: u64,
    /// Table changes after this position are kept whatever the epoch holds.
    keep_log_after: Option<u64>,
    /// Reused to build keys: a batch holds one write per changed state entry.
    key: Vec<u8>,
    /// The next sequence number of each relation's parts in this batch.
    part_seqs: HashMap<u32, u32>,
}

impl std::fmt::Debug for CheckpointBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointBatch")
            .field("epoch", &self.epoch)
            .field("bytes", &self.batch.size_in_bytes())
            .finish()
    }
}

impl CheckpointBatch {
    /// Sets (`Some`) or removes (`None`) `rest` under relation `id`'s `tag`.
    fn set(&mut self, tag: u8, id: u32, rest: &[u8], value: Option<&[u8]>) {
        self.key.clear();
        self.key.extend_from_slice(&relation_prefix(tag, id));
        self.key.extend_from_slice(rest);
        match value {
            Some(v) => self.batch.put(&self.key, v),
            None => self.batch.delete(&self.key),
        }
    }

    /// Starts a part of relation `id`'s rows for epoch `epoch`: a delta
    /// (the rows that changed), or with `base` every row, replacing every
    /// part stored before (see [`crate::row_parts`]).
    pub fn rows_part(&mut self, id: u32, epoch: u64, kind: PartKind) -> RowPartWriter<'_> {
        crate::row_parts::rows_part(self, id, epoch, kind)
    }

    /// Writes rows appended to relation `id` in epoch `epoch` (opaque bytes,
    /// read back as [`crate::StoredPart::Appended`]); returns the bytes written.
    pub fn appended_part(&mut self, id: u32, epoch: u64, rows: &[u8]) -> u64 {
        crate::row_parts::put_appended(self, id, epoch, rows)
    }

    /// Deletes every stored part of relation `id` after epoch `keep_through`
    /// (every part if None).
    pub(crate) fn delete_rows_after(&mut self, id: u32, keep_through: Option<u64>) {
        let from = match keep_through.and_then(|e| e.checked_add(1)) {
            Some(after) => relation_key(ROW_PARTS, id, &after.to_be_bytes()),
            None if keep_through.is_some() => return,
            None => relation_prefix(ROW_PARTS, id).to_vec(),
        };
        self.batch
            .delete_range(from, relation_prefix(ROW_PARTS, id + 1).to_vec());
    }

    pub(crate) fn next_part_seq(&mut self, id: u32) -> u32 {
        let seq = self.part_seqs.entry(id).or_default();
        *seq += 1;
        *seq
    }

    /// Sets (`Some`) or removes (`None`) the state entry `key` of relation `id`.
    pub fn set_state(&mut self, id: u32, key: &[u8], value: Option<&[u8]>) {
        self.set(STATE, id, key, value);
    }

    /// Removes relation `id`'s state entries from `from` up to, not
    /// including, `to`.
    pub fn delete_state_range(&mut self, id: u32, from: &[u8], to: &[u8]) {
        self.batch
            .delete_range(relation_key(STATE, id, from), relation_key(STATE, id, to));
    }

    /// Records that relation `id` is held by checkpoints from `epoch` on,
    /// its state keys laid out as version `layout` says.
    pub fn mark_checkpointed(&mut self, id: u32, epoch: u64, layout: u32) {
        let mut value = epoch.to_be_bytes().to_vec();
        value.extend_from_slice(&layout.to_be_bytes());
        self.batch.put(relation_prefix(CHECKPOINTED, id), value);
    }

    /// Records (`Some`) or clears (`None`) relation `id`'s failure.
    pub fn set_failure(&mut self, id: u32, failure: Option<&StoredFailure>) {
        let value = failure.map(StoredFailure::encode);
        self.set(FAILED, id, &[], value.as_deref());
    }

    /// Keeps the table changes after `position` in the log, for a failed
    /// pipeline's restart to replay.
    pub fn keep_log_after(&mut self, position: u64) {
        self.keep_log_after = Some(self.keep_log_after.map_or(position, |p| p.min(position)));
    }

    /// Seals the batch as epoch `epoch`, holding table changes up to
    /// `log_position`, for pipelines of `parallelism` partitions.
    pub fn finish(&mut self, epoch: u64, log_position: u64, parallelism: u64) {
        self.epoch = epoch;
        self.batch.put(META_EPOCH, epoch.to_be_bytes());
        self.batch.put(META_LOG, log_position.to_be_bytes());
        self.batch.put(META_PARALLELISM, parallelism.to_be_bytes());
        let held = self
            .keep_log_after
            .map_or(log_position, |p| p.min(log_position));
        self.batch.delete_range(
            log_key(0).as_slice(),
            log_key(held.saturating_add(1)).as_slice(),
        );
    }

    /// The epoch this batch holds (0 until finished).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes this batch writes.
    pub fn size_in_bytes(&self) -> usize {
        self.batch.size_in_bytes()
    }
}

/// A big-endian u64 value, if `bytes` is one.
pub(crate) fn read_u64(bytes: &[u8]) -> Option<u64> {
    bytes.try_into().ok().map(u64::from_be_bytes)
}
