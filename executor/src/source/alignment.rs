//! Watermark alignment: the splits of a source that one view reads keep
//! their watermarks within a bound of each other.
//!
//! Downstream, a watermark is the minimum over the splits, so a split that
//! runs ahead of the others fills every windowed operator, interval join
//! and session with rows the watermark cannot release yet: with nothing to
//! hold it, a split that reads faster (scheduling decides which) takes
//! state up without bound on an unbounded source. So a split whose
//! watermark is more than its source's `watermark.max.drift` ahead of the
//! slowest split still reading waits (forwarding barriers) until that one
//! catches up. Splits read whole chunks, so the bound also allows the
//! largest rise one chunk brought any split lately: a sparse stream (few
//! rows per second of event time) would otherwise have its splits take
//! turns instead of reading side by side.
//!
//! Sources of one `watermark.alignment.group` align their splits together
//! in each view that reads them (a join of two sources holds the leader's
//! rows just the same); other sources align only their own splits.
//! Watermarks are compared in nanoseconds, whatever their column's unit.
//!
//! A split that read nothing for [`IDLE_AFTER`] while not busy reading (a
//! quiet Kafka partition waiting for messages), a finished split, or one
//! with no watermark yet does not hold the others back: waiting for it
//! could wait forever. A split busy reading, however long its rows take to
//! go out (backpressure), is slow, not idle.
//!
//! Alignment only paces reading: each split's rows and watermarks are what
//! they would be without it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::{Options, WatermarkSpec};
use crate::error::{ExecutorError, Result};

/// How long a split may read nothing before the others stop waiting for it.
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The option bounding how far a split's watermark runs ahead of the others'.
const MAX_DRIFT: &str = "watermark.max.drift";

/// The option naming the sources that align their splits together.
const GROUP: &str = "watermark.alignment.group";

/// [`MAX_DRIFT`] unless set: about a dozen generated chunks of Nexmark's
/// bids, so splits rarely wait, while a lead adds little state.
const DEFAULT_MAX_DRIFT_NANOS: i64 = 5_000_000_000;

/// How a source's splits align (its `watermark.*` options).
#[derive(Debug, Clone)]
pub struct AlignmentSpec {
    /// The largest lead of one split over the slowest, in nanoseconds.
    pub max_drift: i64,
    /// Nanoseconds per unit of the watermark's column.
    unit_nanos: i64,
    /// The sources it aligns with; `None`: its own splits only.
    pub group: Option<String>,
}

impl AlignmentSpec {
    /// Takes the alignment options out of `options`; without a watermark
    /// there is nothing to align (and the options are refused).
    pub fn new(
        schema: &SchemaRef,
        watermark: Option<&WatermarkSpec>,
        options: &mut Options,
    ) -> Result<Self> {
        let (drift, group) = (options.take(MAX_DRIFT), options.take(GROUP));
        let Some(watermark) = watermark else {
            if let Some(key) = [(MAX_DRIFT, &drift), (GROUP, &group)]
                .iter()
                .find_map(|(key, value)| value.as_ref().map(|_| key))
            {
                return Err(ExecutorError::InvalidOption(format!(
                    "{key} needs a WATERMARK FOR the source's event time"
                )));
            }
            return Ok(Self {
                max_drift: i64::MAX,
                unit_nanos: 1,
                group: None,
            });
        };
        let max_drift = match drift {
            Some(text) => {
                let nanos = eddy_planner::interval_text_nanos(&text)
                    .map_err(|e| ExecutorError::InvalidOption(format!("{MAX_DRIFT}: {e}")))?;
                if nanos <= 0 {
                    return Err(ExecutorError::InvalidOption(format!(
                        "{MAX_DRIFT} must be positive, got '{text}'"
                    )));
                }
                nanos
            }
            None => DEFAULT_MAX_DRIFT_NANOS,
        };
        if group.as_ref().is_some_and(|g| g.trim().is_empty()) {
            return Err(ExecutorError::InvalidOption(format!(
                "{GROUP} needs a name"
            )));
        }
        let unit_nanos = match schema.field(watermark.column).data_type() {
            DataType::Timestamp(TimeUnit::Second, _) => 1_000_000_000,
            DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64 => 1_000_000,
            DataType::Timestamp(TimeUnit::Microsecond, _) => 1_000,
            DataType::Date32 => 86_400_000_000_000,
            _ => 1,
        };
        Ok(Self {
            max_drift,
            unit_nanos,
            group,
        })
    }

    /// A watermark in its column's units, in nanoseconds.
    pub fn nanos(&self, raw: i64) -> i64 {
        raw.saturating_mul(self.unit_nanos)
    }
}

/// The watermarks of the splits one view reads of one source (or of the
/// sources of one alignment group), in nanoseconds.
#[derive(Debug, Default)]
pub struct SplitAlignment {
    splits: Mutex<Vec<SplitMark>>,
    /// Woken when a split's watermark rises.
    advanced: Notify,
}

#[derive(Debug, Clone, Copy)]
struct SplitMark {
    /// The largest lead it may take over the slowest split.
    max_drift: i64,
    watermark: Option<i64>,
    /// How far its last read raised its watermark.
    stride: i64,
    last_read: Instant,
    /// Between [`SplitAlignment::reading`] and [`SplitAlignment::read`].
    busy: bool,
    finished: bool,
}

impl SplitAlignment {
    /// Adds a split that may lead the slowest by `max_drift` nanoseconds;
    /// returns its number here.
    pub fn add_split(&self, max_drift: i64) -> usize {
        let mut splits = self.lock();
        splits.push(SplitMark {
            max_drift,
            watermark: None,
            stride: 0,
            last_read: Instant::now(),
            busy: false,
            finished: false,
        });
        splits.len() - 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SplitMark>> {
        crate::sync::lock(&self.splits)
    }

    /// Split `index` starts reading rows (and sending them on).
    pub fn reading(&self, index: usize) {
        if let Some(mark) = self.lock().get_mut(index) {
            mark.busy = true;
        }
    }

    /// Split `index` read rows; its watermark is now `watermark` (ns).
    pub fn read(&self, index: usize, watermark: Option<i64>) {
        let rose = {
            let mut splits = self.lock();
            let Some(mark) = splits.get_mut(index) else {
                return;
            };
            mark.last_read = Instant::now();
            mark.busy = false;
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
        let Some((own, max_drift)) = splits
            .get(index)
            .and_then(|m| Some((m.watermark?, m.max_drift)))
        else {
            return false;
        };
        let now = Instant::now();
        let stride = splits.iter().map(|m| m.stride).max().unwrap_or(0);
        let lead = max_drift.saturating_add(stride);
        splits
            .iter()
            .enumerate()
            .filter(|(i, m)| {
                *i != index
                    && !m.finished
                    && (m.busy || now.duration_since(m.last_read) < IDLE_AFTER)
            })
            .filter_map(|(_, m)| m.watermark)
            .min()
            .is_some_and(|slowest| own > slowest.saturating_add(lead))
    }
}
