//! Which windows are open, by the value their watermarked column has, and
//! the bound below which all are closed: shared by windowed aggregates
//! (a window is a group) and closing partitions (a window is a top-N's or
//! window function's partition).
//!
//! Invariants:
//! - Values are encoded so that byte order is value order; an entry is
//!   (value, key), so everything below a bound is one range.
//! - A row whose value is below `closed_below` is late: its window closed.
//! - `closed_below` only rises, and is checkpointed (key [`CLOSED_KEY`])
//!   when it moved; the open entries are rebuilt from state on recovery.

use std::collections::BTreeSet;

use crate::checkpoint::StateWriter;

/// The state key of the closed bound; no other key of the operators using
/// it is this one (theirs start with a length or another letter).
pub(crate) const CLOSED_KEY: &[u8] = b"w";

/// Open windows by encoded value, and the closed bound.
#[derive(Debug)]
pub(crate) struct WindowIndex<K> {
    /// (encoded value, key) of every open window.
    open: BTreeSet<(Box<[u8]>, K)>,
    /// Encoded values below this are closed.
    closed_below: Option<Box<[u8]>>,
    /// Whether `closed_below` moved since the last checkpoint.
    moved: bool,
}

impl<K> Default for WindowIndex<K> {
    fn default() -> Self {
        Self {
            open: BTreeSet::new(),
            closed_below: None,
            moved: false,
        }
    }
}

impl<K: Ord + for<'a> From<&'a [u8]>> WindowIndex<K> {
    /// Whether a row of encoded value `value` is late.
    pub(crate) fn is_late(&self, value: &[u8]) -> bool {
        self.closed_below.as_deref().is_some_and(|c| value < c)
    }

    /// Notes window `key`, of encoded value `value`, as open.
    pub(crate) fn open(&mut self, value: &[u8], key: K) {
        self.open.insert((value.into(), key));
    }

    /// Window `key`, of encoded value `value`, left before closing.
    pub(crate) fn remove(&mut self, value: &[u8], key: K) {
        self.open.remove(&(value.into(), key));
    }

    /// Closes every window of a value below the encoded bound `bound`;
    /// returns their keys, in order (none if the bound did not rise).
    pub(crate) fn close_below(&mut self, bound: Box<[u8]>) -> Vec<K> {
        if self.closed_below.as_ref().is_some_and(|c| *c >= bound) {
            return Vec::new();
        }
        let still_open = self.open.split_off(&(bound.clone(), K::from(&[][..])));
        let closed = std::mem::replace(&mut self.open, still_open);
        self.closed_below = Some(bound);
        self.moved = true;
        closed.into_iter().map(|(_, key)| key).collect()
    }

    /// Writes the closed bound if it moved.
    pub(crate) fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        if let Some(bound) = self.closed_below.as_ref().filter(|_| self.moved) {
            state.put(CLOSED_KEY, bound.to_vec());
            self.moved = false;
        }
    }

    /// Starts again from a checkpoint's bound, with nothing open (the
    /// caller opens what its restored state holds).
    pub(crate) fn restore(&mut self, closed_below: Option<Box<[u8]>>) {
        self.closed_below = closed_below;
        self.moved = false;
        self.open.clear();
    }
}
