//! Epoch boundaries shared by every reader of one split.
//!
//! Each view reads a source with readers of its own, so when a barrier
//! reaches them, two views' readers of one split may be at different
//! positions. For every query to see all views at one point of every
//! stream, each barrier must cut each split at one position for all of its
//! readers:
//!
//! - the first reader to receive barrier `e` fixes `e`'s boundary at the
//!   *frontier*, the furthest position any reader of the split has reached;
//! - a reader forwards barrier `e` exactly at that boundary: one that is
//!   behind reads up to it first;
//! - no reader reads past the boundary of a barrier it has not forwarded,
//!   and a reader claims positions (moving the frontier) before it reads
//!   them.
//!
//! So no reader is ever past a boundary when it learns of it. A view created
//! later starts at position 0 and catches up at its first barrier.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct ClockState {
    frontier: u64,
    /// Epoch -> position of its barrier, while some reader has yet to forward it.
    boundaries: BTreeMap<u64, u64>,
    /// Registered reader -> the last epoch it forwarded.
    readers: HashMap<u64, u64>,
    next_reader: u64,
}

/// Barrier positions of one split, shared by its readers.
#[derive(Debug, Default)]
pub struct SplitClock {
    state: Mutex<ClockState>,
}

impl SplitClock {
    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        crate::sync::lock(&self.state)
    }

    /// Registers a reader at `position`; returns its id. Its next barrier is
    /// one no registered reader forwarded yet (readers start quiesced).
    pub fn register(&self, position: u64) -> u64 {
        let mut state = self.lock();
        let id = state.next_reader;
        state.next_reader += 1;
        state.frontier = state.frontier.max(position);
        let last = state.readers.values().copied().max().unwrap_or(0);
        state.readers.insert(id, last);
        id
    }

    /// Forgets reader `id`.
    pub fn unregister(&self, id: u64) {
        let mut state = self.lock();
        state.readers.remove(&id);
        Self::collect(&mut state);
    }

    /// Reader `id`, at `position`, wants to read up to position `end`:
    /// returns how far it may read (not past the boundary of the next
    /// barrier it has not forwarded) and moves the frontier there, so a
    /// barrier fixed from now on lies at or beyond what it reads.
    pub fn claim(&self, id: u64, position: u64, end: u64) -> u64 {
        let mut state = self.lock();
        let last = state.readers.get(&id).copied().unwrap_or(0);
        let allowed = match state.boundaries.range(last + 1..).next() {
            Some((_, &boundary)) => end.min(boundary.max(position)),
            None => end,
        };
        state.frontier = state.frontier.max(allowed);
        allowed
    }

    /// Where barrier `epoch` goes, fixing it at the frontier if no reader did yet.
    pub fn boundary(&self, epoch: u64, position: u64) -> u64 {
        let mut state = self.lock();
        let frontier = state.frontier.max(position);
        *state.boundaries.entry(epoch).or_insert(frontier)
    }

    /// Reader `id` forwarded barrier `epoch`.
    pub fn forwarded(&self, id: u64, epoch: u64) {
        let mut state = self.lock();
        state.readers.insert(id, epoch);
        Self::collect(&mut state);
    }

    /// Drops boundaries every reader has passed.
    fn collect(state: &mut ClockState) {
        let Some(oldest) = state.readers.values().copied().min() else {
            state.boundaries.clear();
            return;
        };
        state.boundaries = state.boundaries.split_off(&(oldest + 1));
    }
}

/// Clocks of every split being read, by (source, split, split count).
#[derive(Debug, Default)]
pub struct SplitClocks {
    clocks: Mutex<HashMap<(u32, usize, usize), std::sync::Arc<SplitClock>>>,
}

impl SplitClocks {
    /// The clock of split `index` of `count` of source `source`.
    pub fn get(&self, source: u32, index: usize, count: usize) -> std::sync::Arc<SplitClock> {
        crate::sync::lock(&self.clocks)
            .entry((source, index, count))
            .or_default()
            .clone()
    }
}
