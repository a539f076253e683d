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

mod datagen;
mod nexmark;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;
use tokio::sync::RwLock;
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;

pub use datagen::DatagenSource;
use datagen::pin_defaults as pin_datagen_defaults;
pub use nexmark::NexmarkSource;

use crate::coordinator::Coordinator;
use crate::dispatch::Subscribers;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::message::{Message, StreamChunk, Watermark};
use crate::progress::Progress;

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

    /// Split `index` of `count`.
    pub fn split(&self, index: usize, count: usize) -> Box<dyn SplitReader> {
        match &self.connector {
            Connector::Nexmark(n) => n.split(index, count),
            Connector::Datagen(d) => d.split(index, count),
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

/// One running split reader.
pub(crate) struct Reader {
    pub relation: u32,
    pub spec: Arc<SourceSpec>,
    pub split: Box<dyn SplitReader>,
    pub splits: usize,
    pub ticks: Receiver<Message>,
    pub output: Arc<Subscribers>,
    pub gate: Arc<RwLock<()>>,
    pub evaluator: Evaluator,
    pub progress: Arc<Progress>,
    /// Told when the split fails, so the view reports it.
    pub coordinator: Arc<Coordinator>,
}

impl Reader {
    async fn emit_watermark(&self, current: &mut Option<ScalarValue>, candidate: ScalarValue) {
        let Some(spec) = &self.spec.watermark else {
            return;
        };
        if candidate.is_null() || current.as_ref().is_some_and(|c| *c >= candidate) {
            return;
        }
        *current = Some(candidate.clone());
        let name = self.spec.schema.field(spec.column).name().clone();
        self.progress.watermark(self.spec.id, &name, &candidate);
        self.output
            .send(Message::Watermark(Watermark {
                column: spec.column,
                value: candidate,
            }))
            .await;
    }

    /// Runs until the view that owns it is dropped.
    pub async fn run(mut self) {
        let pace = self.spec.rows_per_second.map(|r| r / self.splits as f64);
        let started = Instant::now();
        let mut produced = 0u64;
        let mut exhausted = false;
        let mut watermark: Option<ScalarValue> = None;
        self.progress.reader_started(self.relation, self.spec.id);
        loop {
            // Barriers first: an epoch never waits for generation.
            match self.ticks.try_recv() {
                Ok(msg) => {
                    self.output.send(msg).await;
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            if self.output.is_empty() {
                return;
            }
            let due = pace.map(|p| {
                let ahead = produced as f64 / p - started.elapsed().as_secs_f64();
                Duration::try_from_secs_f64(ahead.max(0.0)).unwrap_or(Duration::MAX)
            });
            if exhausted || due.is_some_and(|d| !d.is_zero()) {
                let wait = due.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    msg = self.ticks.recv() => match msg {
                        Some(msg) => self.output.send(msg).await,
                        None => return,
                    },
                    _ = tokio::time::sleep(wait), if !exhausted => {}
                }
                continue;
            }
            let rows = match pace {
                Some(p) => ((p / 10.0) as usize).clamp(1, CHUNK_ROWS),
                None => CHUNK_ROWS,
            };
            let gate = tokio::select! {
                biased;
                msg = self.ticks.recv() => {
                    match msg {
                        Some(msg) => self.output.send(msg).await,
                        None => return,
                    }
                    continue;
                }
                guard = self.gate.read() => guard,
            };
            match self.split.next_batch(rows) {
                Ok(Some(batch)) => {
                    produced += batch.num_rows() as u64;
                    self.progress
                        .rows_read(self.relation, self.spec.id, batch.num_rows() as u64);
                    let candidate = match &self.spec.watermark {
                        Some(spec) => self
                            .evaluator
                            .eval(&spec.expr, &batch)
                            .ok()
                            .and_then(|a| max_value(&a)),
                        None => None,
                    };
                    self.output
                        .send(Message::Chunk(StreamChunk::inserts(batch)))
                        .await;
                    if let Some(candidate) = candidate {
                        self.emit_watermark(&mut watermark, candidate).await;
                    }
                }
                Ok(None) => {
                    exhausted = true;
                    self.progress.reader_finished(self.relation, self.spec.id);
                    if let Some(end) = self
                        .spec
                        .watermark
                        .as_ref()
                        .and_then(|w| end_of_time(self.spec.schema.field(w.column).data_type()))
                    {
                        self.emit_watermark(&mut watermark, end).await;
                    }
                }
                Err(e) => {
                    // The view fails visibly (queries on it say why); its
                    // pipeline keeps forwarding barriers for everyone else.
                    tracing::warn!(relation = self.relation, error = %e, "source split failed");
                    self.coordinator
                        .fail(self.relation, format!("reading the source failed: {e}"));
                    exhausted = true;
                }
            }
            drop(gate);
        }
    }
}

/// The largest non-NULL value of `array` (a time column).
fn max_value(array: &datafusion::arrow::array::ArrayRef) -> Option<ScalarValue> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let ints = datafusion::arrow::compute::cast(array, &DataType::Int64).ok()?;
    let max = datafusion::arrow::compute::max(ints.as_primitive::<Int64Type>())?;
    ScalarValue::Int64(Some(max))
        .cast_to(array.data_type())
        .ok()
}
