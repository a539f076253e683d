//! Watermark alignment: the splits of a source that one view reads keep
//! their watermarks within a bound of each other.
//!
//! Downstream, a watermark is the minimum over the splits, so a split that
//! runs ahead of the others fills every windowed operator, interval join
//! and session with rows the watermark cannot release yet: with nothing to
//! hold it, a split that reads faster (scheduling decides which) takes
//! state up without bound on an unbounded source. So a split whose
//! watermark is more than the source's `watermark.max.drift` ahead of the
//! slowest split still reading waits (forwarding barriers) until that one
//! catches up. Splits read whole chunks, so the bound also allows the
//! largest rise one chunk brought any split lately: a sparse stream (few
//! rows per second of event time) would otherwise have its splits take
//! turns instead of reading side by side.
//!
//! A split that read nothing for [`IDLE_AFTER`] (a quiet Kafka partition, a
//! finished split), or has no watermark yet, does not hold the others back:
//! waiting for it could wait forever.
//!
//! Alignment only paces reading: each split's rows and watermarks are what
//! they would be without it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// How long a split may read nothing before the others stop waiting for it.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The watermarks of the splits one view reads of one source.
#[derive(Debug)]
pub struct SplitAlignment {
    /// The largest lead over the slowest split, in the watermark's units.
    max_drift: i64,
    splits: Mutex<Vec<SplitMark>>,
    /// Woken when a split's watermark rises.
    advanced: Notify,
}

#[derive(Debug, Clone, Copy)]
struct SplitMark {
    watermark: Option<i64>,
    /// How far its last read raised its watermark.
    stride: i64,
    last_read: Instant,
    finished: bool,
}

impl SplitAlignment {
    /// Alignment of `splits` splits, none ahead by more than `max_drift`.
    pub fn new(splits: usize, max_drift: i64) -> Self {
        let mark = SplitMark {
            watermark: None,
            stride: 0,
            last_read: Instant::now(),
            finished: false,
        };
        Self {
            max_drift,
            splits: Mutex::new(vec![mark; splits]),
            advanced: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SplitMark>> {
        crate::sync::lock(&self.splits)
    }

    /// Split `index` read rows; its watermark is now `watermark`.
    pub fn read(&self, index: usize, watermark: Option<i64>) {
        let rose = {
            let mut splits = self.lock();
            let Some(mark) = splits.get_mut(index) else {
                return;
            };
            mark.last_read = Instant::now();
            let rose = watermark > mark.watermark;
            if let (Some(new), Some(old)) = (watermark, mark.watermark)
                && rose
            {
                mark.stride = new.saturating_sub(old);
            }
            mark.watermark = mark.watermark.max(watermark);
            rose
        };
        if rose {
            self.advanced.notify_waiters();
        }
    }

    /// Split `index` has ended: nobody waits for it any more.
    pub fn finished(&self, index: usize) {
        if let Some(mark) = self.lock().get_mut(index) {
            mark.finished = true;
        }
        self.advanced.notify_waiters();
    }

    /// Resolves when some split's watermark rises (or one ends). Take it
    /// before asking [`SplitAlignment::is_ahead`], so no rise in between
    /// is missed.
    pub fn advanced(&self) -> Notified<'_> {
        self.advanced.notified()
    }

    /// Whether split `index` is too far ahead of the slowest split still
    /// reading to read on now.
    pub fn is_ahead(&self, index: usize) -> bool {
        let splits = self.lock();
        let Some(own) = splits.get(index).and_then(|m| m.watermark) else {
            return false;
        };
        let now = Instant::now();
        let stride = splits.iter().map(|m| m.stride).max().unwrap_or(0);
        let lead = self.max_drift.saturating_add(stride);
        splits
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                *i != index && !m.finished && now.duration_since(m.last_read) < IDLE_AFTER
            })
            .filter_map(|(_, m)| m.watermark)
            .min()
            .is_some_and(|slowest| own > slowest.saturating_add(lead))
    }
}
