//! Where a join's stored rows live in its checkpoints.
//!
//! ```text
//! operator range:
//!   t <side> <time: 8 bytes> <key part> <row> -> copies, time, [stamp]
//!   x                                          -> the interval join's watermarks
//!   i                                          -> (empty): timed rows are indexed
//! keyed range (see crate::checkpoint):
//!   r <key part> <side> <row>                  -> copies, time, [stamp]
//!   n                                          -> rows stored per side
//!   a|b <time> <key part> <row>                -> (empty): index by time
//! ```
//!
//! A row without a time is kept under `r` in the keyed range, where one
//! join key's rows of a side sit together: the `rocksdb` backend reads
//! them with one prefix scan, and recovery's read of the operator range
//! leaves them alone.
//!
//! A row with a time (on a side an interval join expires by watermark) is
//! kept in one of two ways:
//! - under `t`, whose keys sort by time: the rows the watermark expires
//!   leave the checkpoint in one range deletion per side and checkpoint,
//!   not one deletion per row; all of them are in memory;
//! - under `r` as any other row, so that probes read it by join key, and
//!   named in its side's index by time (`a`, `b`), which the watermark
//!   takes expired rows from whether memory holds them or not; the
//!   operator range then holds [`INDEXED`].
//!
//! A join starts with the first. Under the `rocksdb` backend, the first
//! checkpoint at which its rows outgrow the cache moves them all to the
//! second, for good. A restore keeps the way it finds, so a view
//! checkpointed before the second existed, or restarted under the other
//! backend, finds its rows where they are.
//!
//! (A `r` row in the operator range was written by an older version, and
//! is refused.)

use crate::checkpoint::{push_part, split_part};
use crate::error::{ExecutorError, Result};
use crate::time_ordered_state::time_bytes;

const ROW: u8 = b'r';
const TIMED_ROW: u8 = b't';

/// The watermarks' key.
pub(super) const WATERMARKS: &[u8] = b"x";

/// In the operator range, present when timed rows are kept under `r`, with
/// an index by time (the `rocksdb` backend's way), instead of under `t`.
pub(super) const INDEXED: &[u8] = b"i";

/// The tags of the `rocksdb` backend's indexes by time of each side's
/// timed rows, in the keyed range (see crate::time_ordered_state): under
/// (time, [`part_and_row`]).
pub(super) const BY_TIME: [u8; 2] = [b'a', b'b'];

/// A row's join key part followed by the row: a row's name in an index.
pub(super) fn part_and_row(key: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len() + row.len());
    push_part(&mut k, key);
    k.extend_from_slice(row);
    k
}

/// The key of the row counts, in the keyed range.
pub(super) const COUNTS: &[u8] = b"n";

/// The key, in the operator range, of a stored row of `side` with a time.
pub(super) fn timed_row_key(side: u8, time: i64, key: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(18 + key.len() + row.len());
    k.extend_from_slice(&[TIMED_ROW, side]);
    k.extend_from_slice(&time_bytes(time));
    push_part(&mut k, key);
    k.extend_from_slice(row);
    k
}

/// The prefix, in the keyed range, of the rows of `side` under join key `key`.
pub(super) fn side_prefix(key: &[u8], side: u8) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + key.len());
    k.push(ROW);
    push_part(&mut k, key);
    k.push(side);
    k
}

/// The key, in the keyed range, of a stored row of `side` without a time.
pub(super) fn row_key(side: u8, key: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = side_prefix(key, side);
    k.extend_from_slice(row);
    k
}

/// The keys of the rows of `side` whose time is below `threshold`: from
/// the first, up to, not including, the second.
pub(super) fn expired_range(side: u8, threshold: i64) -> (Vec<u8>, Vec<u8>) {
    let mut to = vec![TIMED_ROW, side];
    to.extend_from_slice(&time_bytes(threshold));
    (vec![TIMED_ROW, side], to)
}

/// The keys of every row kept under `t`: from the first, up to, not
/// including, the second.
pub(super) fn timed_rows_range() -> ([u8; 1], [u8; 1]) {
    ([TIMED_ROW], [TIMED_ROW + 1])
}

/// A stored row's state key, read back.
pub(super) struct StoredKey<'a> {
    pub side: usize,
    pub join_key: &'a [u8],
    pub row: &'a [u8],
}

fn corrupt() -> ExecutorError {
    ExecutorError::CorruptState("a join's state key is unknown".into())
}

/// Reads a key of the operator range: a timed row's, or `None` for the
/// watermarks' key.
pub(super) fn parse_timed(key: &[u8]) -> Result<Option<StoredKey<'_>>> {
    if key == WATERMARKS {
        return Ok(None);
    }
    match key {
        [TIMED_ROW, side, rest @ ..] => {
            let (join_key, row) = split_part(rest.get(8..).ok_or_else(corrupt)?)?;
            Ok(Some(StoredKey {
                side: usize::from(*side).min(1),
                join_key,
                row,
            }))
        }
        [ROW, ..] => Err(ExecutorError::CorruptState(
            "a join's rows are stored as an older version kept them: recreate the view".into(),
        )),
        _ => Err(corrupt()),
    }
}

/// Reads a row's key in the keyed range after its `r`.
pub(super) fn parse_row(rest: &[u8]) -> Result<StoredKey<'_>> {
    let (join_key, rest) = split_part(rest)?;
    let (&side, row) = rest.split_first().ok_or_else(corrupt)?;
    Ok(StoredKey {
        side: usize::from(side).min(1),
        join_key,
        row,
    })
}

/// The keyed range's prefix of every row.
pub(super) const ROWS: &[u8] = &[ROW];
