//! The committed rows of a table or view, stored as parts.
//!
//! ```text
//! v <rel:u32be> <epoch:u64be> <seq:u32be> -> part
//! part = 1 (base) | 2 (delta)  { <len:u32le> <row: len bytes> <multiplicity:i64le> }*
//!      | 3 (appended)          <rows appended, opaque here (the executor's Arrow IPC)>
//! ```
//!
//! An epoch writes one *delta* part per change it holds (split into values
//! of at most [`PART_BYTES`]): each changed row with its new multiplicity,
//! 0 for a row that is gone. A *base* part holds every row of the relation
//! at its epoch. A relation that has only ever been appended to stores the
//! appended rows instead, as they came. Writing parts costs one RocksDB
//! write per part instead of one per row, which is what keeps checkpoints
//! of views that change many rows per second cheap.
//!
//! Invariants:
//! - Reading a relation's parts in key order, appending appended rows and
//!   keeping each counted row's last multiplicity, gives its rows at the
//!   last committed epoch.
//! - The batch that writes a base part first deletes every part of the
//!   relation (a base that *keeps* the parts up to an epoch `e`, every part
//!   after `e`): reading parts in key order, a base replaces every row read
//!   before it ([`StoredPart::Base`]), and the parts up to `e` still fold to
//!   the rows at `e`. Appended parts only ever come before a base (the
//!   executor writes a base when a relation's rows stop being append-only).
//! - Superseded entries are garbage; [`StoredRows::rewrite_due`] bounds them
//!   to about the size of the live rows (the coordinator then writes a base).

use crate::checkpoint::{CheckpointBatch, relation_prefix};
use crate::error::{Result, StorageError};

pub(crate) const ROW_PARTS: u8 = b'v';

/// Values are cut at about this size, so no write holds one huge value.
const PART_BYTES: usize = 4 << 20;

/// Garbage under this many bytes is never worth a rewrite.
const MIN_REWRITE_BYTES: u64 = 64 << 10;

const BASE: u8 = 1;
const DELTA: u8 = 2;
const APPENDED: u8 = 3;

/// Which part [`CheckpointBatch::rows_part`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// The rows changed, with their new multiplicities.
    Delta,
    /// Every row, replacing every part before it.
    Base,
    /// Every row, replacing every part after the given epoch: the parts up
    /// to it stay, and still fold to the rows at that epoch.
    BaseKeeping(u64),
}

/// What a stored part holds, as [`crate::Store::scan_committed_rows`] visits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredPart<'a> {
    /// A base part of this epoch starts (visited once per stored value):
    /// the rows read before it are replaced by what follows.
    Base(u64),
    /// A row and its multiplicity from then on (0: gone).
    Row(&'a [u8], i64),
    /// Rows appended, as [`CheckpointBatch::appended_part`] was given them.
    Appended(&'a [u8]),
}

/// Bytes one row takes in a part.
fn entry_bytes(row: &[u8]) -> u64 {
    (4 + row.len() + 8) as u64
}

/// What a relation's parts hold, to decide when to rewrite them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoredRows {
    /// Bytes of every stored part.
    pub stored_bytes: u64,
    /// Bytes the live rows take in a part (what a base would hold).
    pub live_bytes: u64,
}

impl StoredRows {
    /// Whether the parts hold more garbage than live rows (and enough of it
    /// to matter): time to write a base instead of a delta.
    pub fn rewrite_due(&self) -> bool {
        let garbage = self.stored_bytes.saturating_sub(self.live_bytes);
        garbage > self.live_bytes.max(MIN_REWRITE_BYTES)
    }

    /// Accounts for a row whose multiplicity went from `old` to `new`.
    pub fn changed(&mut self, row: &[u8], old: i64, new: i64) {
        match (old != 0, new != 0) {
            (false, true) => self.live_bytes += entry_bytes(row),
            (true, false) => self.live_bytes = self.live_bytes.saturating_sub(entry_bytes(row)),
            _ => {}
        }
    }
}

/// Writes one part of a relation into a checkpoint batch (see
/// [`CheckpointBatch::rows_part`]).
pub struct RowPartWriter<'a> {
    batch: &'a mut CheckpointBatch,
    id: u32,
    epoch: u64,
    kind: u8,
    buf: Vec<u8>,
    written: u64,
}

impl<'a> RowPartWriter<'a> {
    /// A base, delta or appended part; a base deletes the stored parts
    /// after `keep_through` (all of them if None).
    fn new(
        batch: &'a mut CheckpointBatch,
        id: u32,
        epoch: u64,
        kind: u8,
        keep_through: Option<u64>,
    ) -> Self {
        if kind == BASE {
            batch.delete_rows_after(id, keep_through);
        }
        Self {
            batch,
            id,
            epoch,
            kind,
            buf: vec![kind],
            written: 0,
        }
    }

    /// Adds `row` with multiplicity `count` (0: the row is gone).
    pub fn push(&mut self, row: &[u8], count: i64) {
        // Rows are encoded table rows, far below 4 GiB.
        let len = u32::try_from(row.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(row);
        self.buf.extend_from_slice(&count.to_le_bytes());
        if self.buf.len() >= PART_BYTES {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.len() > 1 {
            let seq = self.batch.next_part_seq(self.id);
            let mut key = Vec::with_capacity(17);
            key.extend_from_slice(&relation_prefix(ROW_PARTS, self.id));
            key.extend_from_slice(&self.epoch.to_be_bytes());
            key.extend_from_slice(&seq.to_be_bytes());
            self.batch.batch.put(key, &self.buf);
            self.written += self.buf.len() as u64;
            self.buf.truncate(0);
            self.buf.push(self.kind);
        }
    }

    /// Writes what is left; returns the bytes the part took.
    pub fn finish(mut self) -> u64 {
        self.flush();
        self.written
    }
}

/// Writes appended rows (`rows`, opaque) of relation `id` as a part of `epoch`.
pub(crate) fn put_appended(batch: &mut CheckpointBatch, id: u32, epoch: u64, rows: &[u8]) -> u64 {
    let mut writer = RowPartWriter::new(batch, id, epoch, APPENDED, None);
    writer.buf.extend_from_slice(rows);
    writer.finish()
}

/// Starts a part of `kind` of relation `id` for `epoch`.
pub(crate) fn rows_part(
    batch: &mut CheckpointBatch,
    id: u32,
    epoch: u64,
    kind: PartKind,
) -> RowPartWriter<'_> {
    match kind {
        PartKind::Delta => RowPartWriter::new(batch, id, epoch, DELTA, None),
        PartKind::Base => RowPartWriter::new(batch, id, epoch, BASE, None),
        PartKind::BaseKeeping(e) => RowPartWriter::new(batch, id, epoch, BASE, Some(e)),
    }
}

/// Visits what one stored part (`key`, `value` as stored, the relation
/// prefix removed from the key) holds.
pub(crate) fn read_part(
    id: u32,
    key: &[u8],
    value: &[u8],
    mut visit: impl FnMut(StoredPart<'_>),
) -> Result<()> {
    let corrupt = |reason: &str| StorageError::CorruptRows {
        id,
        reason: reason.to_string(),
    };
    if key.len() != 12 {
        return Err(corrupt(
            "a key is not <epoch><seq>; the data directory predates row parts",
        ));
    }
    let (kind, mut rest) = value
        .split_first()
        .ok_or_else(|| corrupt("an empty part"))?;
    match *kind {
        BASE => {
            let epoch = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("a part key without its epoch"))?;
            visit(StoredPart::Base(epoch));
        }
        DELTA => {}
        APPENDED => {
            visit(StoredPart::Appended(rest));
            return Ok(());
        }
        _ => return Err(corrupt("a part of unknown kind")),
    }
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("a truncated row length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len + 8 {
            return Err(corrupt("a truncated row"));
        }
        let (row, tail) = tail.split_at(len);
        let (count, tail) = tail.split_at(8);
        let count = i64::from_le_bytes(count.try_into().unwrap_or_default());
        visit(StoredPart::Row(row, count));
        rest = tail;
    }
    Ok(())
}
