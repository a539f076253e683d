//! Where a join's stored rows live in its checkpoints.
//!
//! ```text
//! r <side> <key part> <row>                -> copies, time, [stamp]
//! t <side> <time: 8 bytes> <key part> <row> -> copies, time, [stamp]
//! x                                         -> the interval join's watermarks
//! ```
//!
//! A row with a time (on a side an interval join expires by watermark)
//! is kept under `t`, whose keys sort by time: the rows the watermark
//! expires leave the checkpoint in one range deletion per side and
//! checkpoint, not one deletion per row. Every other row is kept under `r`
//! (a row with a time found there was written by an older version, and is
//! refused).

use crate::checkpoint::{push_part, split_part};
use crate::error::{ExecutorError, Result};

const ROW: u8 = b'r';
const TIMED_ROW: u8 = b't';

/// The watermarks' key.
pub(super) const WATERMARKS: &[u8] = b"x";

/// `time` as bytes that sort as the times do.
fn time_bytes(time: i64) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

/// The state key of a stored row of `side` under join key `key`, with its
/// time if it expires by one.
pub(super) fn row_key(side: u8, time: Option<i64>, key: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(18 + key.len() + row.len());
    match time {
        Some(t) => {
            k.extend_from_slice(&[TIMED_ROW, side]);
            k.extend_from_slice(&time_bytes(t));
        }
        None => k.extend_from_slice(&[ROW, side]),
    }
    push_part(&mut k, key);
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

/// A stored row's state key, read back.
pub(super) struct StoredKey<'a> {
    pub side: usize,
    pub join_key: &'a [u8],
    pub row: &'a [u8],
    /// Under `t`: keyed by its time.
    pub timed: bool,
}

/// Reads a stored row's key; `None` for the watermarks' key.
pub(super) fn parse(key: &[u8]) -> Result<Option<StoredKey<'_>>> {
    let corrupt = || ExecutorError::CorruptState("a join's state key is unknown".into());
    if key == WATERMARKS {
        return Ok(None);
    }
    let (&tag, rest) = key.split_first().ok_or_else(corrupt)?;
    let (&side, rest) = rest.split_first().ok_or_else(corrupt)?;
    let rest = match tag {
        ROW => rest,
        TIMED_ROW => rest.get(8..).ok_or_else(corrupt)?,
        _ => return Err(corrupt()),
    };
    let (join_key, row) = split_part(rest)?;
    Ok(Some(StoredKey {
        side: usize::from(side).min(1),
        join_key,
        row,
        timed: tag == TIMED_ROW,
    }))
}
