//! State time-to-live: forgetting state that stopped changing.
//!
//! A view created `WITH (state_ttl = '1 hour')` bounds the state of its
//! unwindowed aggregates and joins by processing time. Each group (or
//! stored join row) is stamped with the time of the last epoch that changed
//! it; at a barrier, whatever was last changed more than the TTL before the
//! barrier's time is *expired*: the operator drops it as if every row it
//! holds had been deleted from its input, so its results leave the view too
//! and nothing downstream (view or sink) keeps a row no state stands behind.
//!
//! Afterwards:
//! - a key that appears again starts over, from its new rows only;
//! - a retraction of a row that expired is ignored, since what it would
//!   retract is already gone. (A retraction of a row that arrived before
//!   its group expired, after the group started over, is subtracted from
//!   the new group: the operator cannot tell the two apart.)
//!
//! Stamps are barrier times (processing time, as in Flink's state TTL), and
//! they are checkpointed with the state, so expiry goes on after recovery
//! with the time spent down counted.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

/// The stamps of one operator's expirable entries `K`, in time order.
#[derive(Debug)]
pub struct StateTtl<K> {
    ttl: i64,
    /// The last barrier's time: the stamp of changes made now.
    now: i64,
    by_time: BTreeSet<(i64, K)>,
}

impl<K: Ord + Clone> StateTtl<K> {
    /// Entries expire `ttl` after their last change.
    pub fn new(ttl: Duration) -> Self {
        Self::starting_at(ttl, eddy_planner::system_time_nanos(SystemTime::now()))
    }

    /// The same, with `now` (nanoseconds since the Unix epoch) as the time
    /// of the last barrier so far.
    pub fn starting_at(ttl: Duration, now: i64) -> Self {
        Self {
            ttl: i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX),
            // Until the first barrier, changes are stamped with the time
            // the operator was built.
            now,
            by_time: BTreeSet::new(),
        }
    }

    /// Records that `key`, stamped `previous` (None when new), changed in
    /// the current epoch; returns its new stamp: the last barrier's time
    /// (the current one's is not known until it arrives).
    pub fn touch(&mut self, key: &K, previous: Option<i64>) -> i64 {
        self.stamp(key, previous, self.now)
    }

    /// Records that `key`, stamped `previous`, is stamped `stamp` now.
    pub fn stamp(&mut self, key: &K, previous: Option<i64>, stamp: i64) -> i64 {
        if previous == Some(stamp) {
            return stamp;
        }
        if let Some(previous) = previous {
            self.by_time.remove(&(previous, key.clone()));
        }
        self.by_time.insert((stamp, key.clone()));
        stamp
    }

    /// `key`, stamped `stamp`, left state.
    pub fn forget(&mut self, key: &K, stamp: i64) {
        self.by_time.remove(&(stamp, key.clone()));
    }

    /// The stamp of changes made now: the last barrier's time.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Moves time to barrier time `now`; returns the threshold: entries
    /// stamped before it expired.
    pub fn move_clock(&mut self, now: i64) -> i64 {
        self.now = self.now.max(now);
        self.now.saturating_sub(self.ttl)
    }

    /// Moves time to barrier time `now` and takes the entries that expired:
    /// those last changed more than the TTL before it.
    pub fn advance(&mut self, now: i64) -> Vec<K> {
        let threshold = self.move_clock(now);
        let mut expired = Vec::new();
        while let Some((stamp, _)) = self.by_time.first() {
            if *stamp >= threshold {
                break;
            }
            if let Some((_, key)) = self.by_time.pop_first() {
                expired.push(key);
            }
        }
        expired
    }

    /// Forgets every entry (before a restore).
    pub fn clear(&mut self) {
        self.by_time.clear();
    }
}
