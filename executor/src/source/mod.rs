//! Streaming sources: append-only streams read by the pipelines of the
//! materialized views defined on them.
//!
//! A source has no stored rows. Every view reading it runs its own readers,
//! one per split, each starting at the beginning of the stream; generators
//! are deterministic, so every reader (and every replay after a restart) sees
//! the same rows. A reader interleaves three things on its output:
//! - chunks of generated rows (paced by `rows.per.second` if set),
//! - the watermark, when the source declares `WATERMARK FOR col AS expr`:
//!   the largest `expr` seen so far, sent after each chunk that raises it
//!   (and the end of time once a bounded split is exhausted, which closes
//!   every window),
//! - barriers, forwarded from the runtime's ticks as soon as they arrive.
//!
//! Readers produce only while holding the runtime's source gate for reading;
//! DDL closes the gate to quiesce, so nothing is in flight while a pipeline
//! is created or dropped.
//!
//! Barriers cut every split at one position for all of its readers (see
//! [`clock`]), so all views are at one point of every stream at every
//! epoch. When a reader forwards a barrier it hands the checkpoint its
//! split's position (rows read) and watermark. A recovered reader starts
//! its split at that position and sends that watermark before any row.

mod clock;
mod datagen;
mod nexmark;
mod reader;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;

pub use clock::{SplitClock, SplitClocks};
pub use datagen::DatagenSource;
use datagen::pin_defaults as pin_datagen_defaults;
pub use nexmark::NexmarkSource;
pub(crate) use reader::Reader;

use crate::error::{ExecutorError, Result};

/// Rows per generated chunk.
pub const CHUNK_ROWS: usize = 4096;

/// Reads one split of a source.
pub trait SplitReader: Send + Sync {
    /// Up to `max` rows; `None` once the split is exhausted.
    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>>;
}

/// `WITH (...)` options, consumed as they are understood; whatever is left
/// is an unknown option.
#[derive(Debug, Clone, Default)]
pub struct Options(BTreeMap<String, String>);

impl Options {
    /// Options from `key = value` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(pairs.into_iter().collect())
    }

    /// Removes and returns option `key`.
    pub fn take(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    /// Removes option `key` and parses it as a number.
    pub fn number<T: FromStr>(&mut self, key: &str) -> Result<Option<T>> {
        self.take(key)
            .map(|v| {
                v.trim().parse().map_err(|_| {
                    ExecutorError::InvalidOption(format!("{key} must be a number, got '{v}'"))
                })
            })
            .transpose()
    }

    fn reject_unknown(&self) -> Result<()> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(ExecutorError::InvalidOption(format!(
                "unknown source option '{key}'"
            ))),
        }
    }
}

/// The generator behind a source.
#[derive(Debug, Clone)]
pub enum Connector {
    /// Nexmark events.
    Nexmark(Box<NexmarkSource>),
    /// Per-column generators.
    Datagen(DatagenSource),
}

/// Event-time declaration: `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone)]
pub struct WatermarkSpec {
    /// The column the watermark bounds.
    pub column: usize,
    /// Evaluated per row; the watermark is its running maximum.
    pub expr: Arc<dyn PhysicalExpr>,
}

/// A source as the runtime runs it.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Catalog id.
    pub id: u32,
    /// Its rows.
    pub schema: SchemaRef,
    /// What generates them.
    pub connector: Connector,
    /// Event time, if declared.
    pub watermark: Option<WatermarkSpec>,
    /// Pacing over all splits; `None` = as fast as possible.
    pub rows_per_second: Option<f64>,
    /// Splits; `None` = the runtime's parallelism.
    pub splits: Option<usize>,
}

impl SourceSpec {
    /// A source reading `connector` = `name` with `options` (all must be
    /// understood).
    pub fn new(
        id: u32,
        schema: SchemaRef,
        options: impl IntoIterator<Item = (String, String)>,
        watermark: Option<WatermarkSpec>,
    ) -> Result<Self> {
        let mut options = Options::new(options);
        let (connector, rate_key, split_key) = match options.take("connector").as_deref() {
            Some("nexmark") => (
                Connector::Nexmark(Box::new(NexmarkSource::new(schema.clone(), &mut options)?)),
                "nexmark.events.per.second",
                "nexmark.split.num",
            ),
            Some("datagen") => (
                Connector::Datagen(DatagenSource::new(schema.clone(), &mut options)?),
                "datagen.rows.per.second",
                "datagen.split.num",
            ),
            Some(other) => {
                return Err(ExecutorError::InvalidOption(format!(
                    "unknown connector '{other}' (built in: datagen, nexmark)"
                )));
            }
            None => {
                return Err(ExecutorError::InvalidOption(
                    "connector is required, e.g. WITH (connector = 'datagen')".into(),
                ));
            }
        };
        let rows_per_second: Option<f64> = options.number(rate_key)?;
        if rows_per_second.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err(ExecutorError::InvalidOption(format!(
                "{rate_key} must be positive"
            )));
        }
        let splits: Option<usize> = options.number(split_key)?;
        if splits == Some(0) {
            return Err(ExecutorError::InvalidOption(format!(
                "{split_key} must be positive"
            )));
        }
        options.reject_unknown()?;
        Ok(Self {
            id,
            schema,
            connector,
            watermark,
            rows_per_second,
            splits,
        })
    }

    /// Makes every default that depends on the creation time (`now_nanos`)
    /// explicit in `options`: nexmark's base time, datagen's timestamp
    /// starts. The pinned options are what the catalog stores, so every
    /// replay generates the same rows.
    pub fn pin_defaults(schema: &SchemaRef, options: &mut Vec<(String, String)>, now_nanos: i64) {
        let connector = options
            .iter()
            .find(|(k, _)| k == "connector")
            .map(|(_, v)| v.clone());
        match connector.as_deref() {
            Some("nexmark") if !options.iter().any(|(k, _)| k == "nexmark.base.time") => {
                options.push((
                    "nexmark.base.time".into(),
                    (now_nanos / 1_000_000).to_string(),
                ));
            }
            Some("datagen") => pin_datagen_defaults(schema, options, now_nanos),
            _ => {}
        }
    }

    /// Whether the stream ends (then it can also be read as a batch).
    pub fn is_bounded(&self) -> bool {
        match &self.connector {
            Connector::Nexmark(n) => n.is_bounded(),
            Connector::Datagen(d) => d.is_bounded(),
        }
    }

    /// Number of splits when the runtime runs `parallelism` partitions.
    pub fn split_count(&self, parallelism: usize) -> usize {
        self.splits.unwrap_or(parallelism).max(1)
    }

    /// Split `index` of `count`, from its row `start` on.
    pub fn split(&self, index: usize, count: usize, start: u64) -> Box<dyn SplitReader> {
        match &self.connector {
            Connector::Nexmark(n) => n.split(index, count, start),
            Connector::Datagen(d) => d.split(index, count, start),
        }
    }
}

/// A watermark value beyond any event: sent when a bounded split ends.
/// (Not the type's maximum, so window arithmetic on it cannot overflow.)
fn end_of_time(data_type: &DataType) -> Option<ScalarValue> {
    const SECONDS: i64 = 7_258_118_400; // 2200-01-01
    Some(match data_type {
        DataType::Timestamp(unit, tz) => {
            let tz = tz.clone();
            match unit {
                TimeUnit::Second => ScalarValue::TimestampSecond(Some(SECONDS), tz),
                TimeUnit::Millisecond => {
                    ScalarValue::TimestampMillisecond(Some(SECONDS * 1_000), tz)
                }
                TimeUnit::Microsecond => {
                    ScalarValue::TimestampMicrosecond(Some(SECONDS * 1_000_000), tz)
                }
                TimeUnit::Nanosecond => {
                    ScalarValue::TimestampNanosecond(Some(SECONDS * 1_000_000_000), tz)
                }
            }
        }
        DataType::Date32 => ScalarValue::Date32(Some((SECONDS / 86_400) as i32)),
        _ => return None,
    })
}
