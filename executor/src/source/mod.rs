//! Streaming sources: append-only streams (or, for Debezium topics,
//! changelogs) read by the pipelines of the materialized views defined on
//! them.
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

mod alignment;
mod clock;
mod datagen;
mod decode;
mod envelope;
mod kafka;
mod malformed;
mod nexmark;
mod reader;
mod upsert;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;

pub use alignment::{AlignmentSpec, IDLE_AFTER, SplitAlignment};
pub use clock::{SplitClock, SplitClocks};
pub use datagen::DatagenSource;
use datagen::pin_defaults as pin_datagen_defaults;
pub use decode::{Decoded, Encoding, PayloadDecoder};
pub use kafka::KafkaSource;
pub use malformed::{MalformedMessage, MalformedMessages};
pub use nexmark::NexmarkSource;
pub(crate) use reader::Reader;

use crate::checkpoint::{StateEntries, StateWriter};
use crate::error::{ExecutorError, Result};
pub use crate::kafka_client::ConnectionStatus;
use crate::message::StreamChunk;

/// Rows per generated chunk.
pub const CHUNK_ROWS: usize = 4096;

/// Reads one split of a source.
///
/// A split's *position* is a `u64` that only grows: rows generated so far
/// for a generator, the next offset for a Kafka partition. Positions may
/// skip (Kafka offsets have gaps), so readers agree on where a barrier cuts
/// a split by position, not by row count.
#[async_trait]
pub trait SplitReader: Send {
    /// Waits until rows at `position` or later are readable and returns the
    /// position reading at most `max` of them reaches; `None` once the split
    /// is exhausted. Cancel-safe: dropping the future loses no row.
    async fn available(&mut self, position: u64, max: usize) -> Result<Option<u64>>;

    /// The changes from `position` up to `end`, which is at most what
    /// [`SplitReader::available`] last returned; afterwards the split is at
    /// `end`. Inserts only, but for changelog sources (Debezium, upsert).
    fn read(&mut self, position: u64, end: u64) -> Result<StreamChunk>;

    /// Writes the state the split changed since the last checkpoint (an
    /// upsert source's rows), at a barrier.
    fn checkpoint(&mut self, _state: &mut StateWriter<'_>) {}

    /// Takes up checkpointed state, right after the split is created.
    fn restore(&mut self, _entries: StateEntries) -> Result<()> {
        Ok(())
    }
}

/// A deterministic generator of one split's rows.
pub trait BatchGenerator: Send {
    /// Up to `max` rows; `None` once the split is exhausted.
    fn next_batch(&mut self, max: usize) -> Result<Option<RecordBatch>>;
}

/// A generator as a [`SplitReader`]: a position counts generated rows; a
/// batch generated but not yet read waits in `pending`.
struct GeneratedSplit {
    generator: Box<dyn BatchGenerator>,
    pending: Option<RecordBatch>,
}

impl GeneratedSplit {
    fn boxed(generator: Box<dyn BatchGenerator>) -> Box<dyn SplitReader> {
        Box::new(Self {
            generator,
            pending: None,
        })
    }
}

#[async_trait]
impl SplitReader for GeneratedSplit {
    async fn available(&mut self, position: u64, max: usize) -> Result<Option<u64>> {
        if self.pending.is_none() {
            self.pending = self.generator.next_batch(max)?;
        }
        Ok(self
            .pending
            .as_ref()
            .map(|b| position + b.num_rows().min(max) as u64))
    }

    fn read(&mut self, position: u64, end: u64) -> Result<StreamChunk> {
        let wanted = (end - position) as usize;
        let Some(batch) = self.pending.take() else {
            return Err(ExecutorError::Internal(
                "a generated split was read before rows were available".into(),
            ));
        };
        if wanted >= batch.num_rows() {
            return Ok(StreamChunk::inserts(batch));
        }
        self.pending = Some(batch.slice(wanted, batch.num_rows() - wanted));
        Ok(StreamChunk::inserts(batch.slice(0, wanted)))
    }
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

    /// The option keys starting with `prefix`.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Fails if an option is left that nothing understood.
    pub fn reject_unknown(&self) -> Result<()> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(ExecutorError::InvalidOption(format!(
                "unknown option '{key}'"
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
    /// A Kafka topic.
    Kafka(Box<KafkaSource>),
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
    /// The column holding each row's processing time (`name AS PROCTIME()`):
    /// filled by the readers, not the connector (see
    /// [`SourceSpec::with_processing_time`]).
    pub proctime: Option<usize>,
    /// Pacing over all splits; `None` = as fast as possible.
    pub rows_per_second: Option<f64>,
    /// Generators' splits; `None` = the runtime's parallelism.
    pub splits: Option<usize>,
    /// How its splits keep their watermarks together (see [`SplitAlignment`]).
    pub alignment: AlignmentSpec,
}

impl SourceSpec {
    /// A source of `schema` reading `connector` = `name` with `options`
    /// (all must be understood); column `proctime` of `schema`, if given, is
    /// the processing time, which the connector does not produce.
    pub fn new(
        id: u32,
        schema: SchemaRef,
        options: impl IntoIterator<Item = (String, String)>,
        watermark: Option<WatermarkSpec>,
        proctime: Option<usize>,
    ) -> Result<Self> {
        let mut options = Options::new(options);
        let produced = match proctime {
            Some(column) => {
                // A changelog's deletion must carry the row it retracts,
                // and the time that row was read is gone by then.
                if let Some(format) = options.0.get("format")
                    && !format.eq_ignore_ascii_case("plain")
                {
                    return Err(ExecutorError::Unsupported(format!(
                        "PROCTIME() needs an append-only source, not FORMAT {}",
                        format.to_uppercase()
                    )));
                }
                Self::connector_schema(&schema, Some(column))?
            }
            None => schema.clone(),
        };
        // Generators are paced and split by options; a Kafka source reads
        // as fast as messages come, one split per partition.
        let (connector, generator_keys) = match options.take("connector").as_deref() {
            Some("nexmark") => (
                Connector::Nexmark(Box::new(NexmarkSource::new(produced, &mut options)?)),
                Some(("nexmark.events.per.second", "nexmark.split.num")),
            ),
            Some("datagen") => (
                Connector::Datagen(DatagenSource::new(produced, &mut options)?),
                Some(("datagen.rows.per.second", "datagen.split.num")),
            ),
            Some("kafka") => (
                Connector::Kafka(Box::new(KafkaSource::new(produced, &mut options)?)),
                None,
            ),
            Some(other) => {
                return Err(ExecutorError::InvalidOption(format!(
                    "unknown connector '{other}' (datagen, nexmark, kafka)"
                )));
            }
            None => {
                return Err(ExecutorError::InvalidOption(
                    "connector is required, e.g. WITH (connector = 'datagen')".into(),
                ));
            }
        };
        let (rows_per_second, splits) = match generator_keys {
            // A Kafka source: one split per partition, however many the
            // topic has by now.
            None => (None, None),
            Some((rate_key, split_key)) => {
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
                // Nexmark paces events of all types: its type's share are rows.
                let share = match &connector {
                    Connector::Nexmark(n) => n.share(),
                    _ => 1.0,
                };
                (rows_per_second.map(|r| r * share), splits)
            }
        };
        let alignment = AlignmentSpec::new(&schema, watermark.as_ref(), &mut options)?;
        options.reject_unknown()?;
        Ok(Self {
            id,
            schema,
            connector,
            watermark,
            proctime,
            rows_per_second,
            splits,
            alignment,
        })
    }

    /// The columns of `schema` the connector produces: all but the
    /// processing time's.
    pub fn connector_schema(schema: &SchemaRef, proctime: Option<usize>) -> Result<SchemaRef> {
        let Some(column) = proctime else {
            return Ok(schema.clone());
        };
        let kept: Vec<usize> = (0..schema.fields().len())
            .filter(|c| *c != column)
            .collect();
        Ok(Arc::new(schema.project(&kept)?))
    }

    /// The columns that carry watermarks: the event time's, and the
    /// processing time's (which only grows).
    pub fn watermark_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.watermark.iter().map(|w| w.column).chain(self.proctime)
    }

    /// Whether the source only ever inserts rows: all but a Kafka topic of
    /// upserts or Debezium change events.
    pub fn is_append_only(&self) -> bool {
        match &self.connector {
            Connector::Nexmark(_) | Connector::Datagen(_) => true,
            Connector::Kafka(kafka) => kafka.is_append_only(),
        }
    }

    /// `batch` of the connector's columns with the processing-time column,
    /// if the source has one, set to `now_nanos` for every row.
    pub fn with_processing_time(&self, batch: RecordBatch, now_nanos: i64) -> Result<RecordBatch> {
        let Some(column) = self.proctime else {
            return Ok(batch);
        };
        let mut columns = batch.columns().to_vec();
        columns.insert(
            column,
            self.processing_time(now_nanos)?
                .to_array_of_size(batch.num_rows())?,
        );
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// `now_nanos` as a value of the processing-time column.
    pub fn processing_time(&self, now_nanos: i64) -> Result<ScalarValue> {
        let data_type = match self.proctime {
            Some(column) => self.schema.field(column).data_type(),
            None => &DataType::Timestamp(TimeUnit::Nanosecond, None),
        };
        Ok(ScalarValue::TimestampNanosecond(Some(now_nanos), None).cast_to(data_type)?)
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

    /// Columns the connector adds to the declared ones (Kafka's `INCLUDE`d
    /// message metadata), in schema order.
    pub fn extra_fields(options: &[(String, String)]) -> Vec<datafusion::arrow::datatypes::Field> {
        match connector_of(options) {
            Some("kafka") => kafka::metadata_fields(options),
            _ => vec![],
        }
    }

    /// Fixes what the connector must learn from outside once, at creation,
    /// in `options` (Kafka: the partitions and where each starts). Blocking.
    pub fn resolve(options: &mut Vec<(String, String)>) -> Result<()> {
        match connector_of(options) {
            Some("kafka") => kafka::resolve(options),
            _ => Ok(()),
        }
    }

    /// The connector's name, as in `WITH (connector = ...)`.
    pub fn connector_name(&self) -> &'static str {
        match &self.connector {
            Connector::Nexmark(_) => "nexmark",
            Connector::Datagen(_) => "datagen",
            Connector::Kafka(_) => "kafka",
        }
    }

    /// The last connection problem of the source's clients, if it has clients.
    pub fn connection(&self) -> Option<&Arc<ConnectionStatus>> {
        match &self.connector {
            Connector::Kafka(k) => Some(k.connection()),
            _ => None,
        }
    }

    /// Messages the source could not decode, if it decodes messages.
    pub fn malformed(&self) -> Option<&Arc<MalformedMessages>> {
        match &self.connector {
            Connector::Kafka(k) => Some(k.malformed()),
            _ => None,
        }
    }

    /// Whether the stream ends (then it can also be read as a batch).
    pub fn is_bounded(&self) -> bool {
        match &self.connector {
            Connector::Nexmark(n) => n.is_bounded(),
            Connector::Datagen(d) => d.is_bounded(),
            Connector::Kafka(_) => false,
        }
    }

    /// Number of splits when the runtime runs `parallelism` partitions.
    pub fn split_count(&self, parallelism: usize) -> usize {
        match &self.connector {
            Connector::Kafka(k) => k.partitions(),
            _ => self.splits.unwrap_or(parallelism).max(1),
        }
    }

    /// The Kafka topic behind the source, if it reads one.
    pub fn kafka(&self) -> Option<&KafkaSource> {
        match &self.connector {
            Connector::Kafka(k) => Some(k),
            _ => None,
        }
    }

    /// Split `index` of `count`, from position `start` on.
    pub fn split(&self, index: usize, count: usize, start: u64) -> Result<Box<dyn SplitReader>> {
        Ok(match &self.connector {
            Connector::Nexmark(n) => GeneratedSplit::boxed(n.split(index, count, start)),
            Connector::Datagen(d) => GeneratedSplit::boxed(d.split(index, count, start)),
            Connector::Kafka(k) => k.split(index, start)?,
        })
    }
}

/// The `connector` option's value.
fn connector_of(options: &[(String, String)]) -> Option<&str> {
    options
        .iter()
        .find(|(k, _)| k == "connector")
        .map(|(_, v)| v.as_str())
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
