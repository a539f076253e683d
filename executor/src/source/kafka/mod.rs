//! Kafka topics as sources (`connector = 'kafka'`).
//!
//! Each partition is a split; a split's position is the next offset to
//! read. Positions live in Eddy's checkpoints (no consumer-group commits),
//! so a recovered reader seeks to exactly where its epoch ended.
//!
//! Where every view starts is fixed when the source is created
//! ([`resolve`]): the startup mode (`earliest`, `latest`, `timestamp`) is
//! turned into one offset per partition, pinned in the catalog as
//! `scan.startup.offsets`. So every view over the source, created now or
//! later, and every replay, reads the same messages.
//!
//! `FORMAT PLAIN` payloads are rows (inserted); `FORMAT DEBEZIUM` payloads
//! are change events and `FORMAT UPSERT` messages set or (without a value)
//! delete their key's row, so those sources are changelogs (see
//! [`super::envelope`], [`super::upsert`]).
//!
//! Partitions added to the topic later are found by asking the broker every
//! `scan.partition.discovery.interval` ([`KafkaSource::discover`]); the
//! server then pins their first offsets in the catalog too and restarts
//! the source's pipelines from their checkpoints with a split more.
//!
//! A split consumes its partition with a consumer of its own (assigned, not
//! subscribed). The client reconnects by itself when a broker goes away;
//! the split waits and logs until messages flow again.

mod split;
mod start;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};

use super::decode::{Encoding, PayloadDecoder};
use super::envelope::Envelope;
use super::malformed::MalformedMessages;
use super::{Options, SplitReader};
use crate::error::{ExecutorError, Result};
use crate::kafka_client::{self, ConnectionStatus};
use split::KafkaSplit;
use start::StartupMode;
pub use start::resolve;

/// How long creating a source waits for the broker.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// The option pinning each partition's first offset.
pub const START_OFFSETS: &str = "scan.startup.offsets";

/// How often the topic is asked for new partitions unless the source says.
const DISCOVERY_INTERVAL: Duration = Duration::from_secs(30);

/// Metadata of a message a source can expose as a column
/// (`INCLUDE partition | offset | timestamp | key [AS name]`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Metadata {
    Partition,
    Offset,
    Timestamp,
    Key,
}

impl Metadata {
    /// In schema order, after the payload's columns.
    const ALL: [Metadata; 4] = [
        Metadata::Partition,
        Metadata::Offset,
        Metadata::Timestamp,
        Metadata::Key,
    ];

    fn name(self) -> &'static str {
        match self {
            Metadata::Partition => "partition",
            Metadata::Offset => "offset",
            Metadata::Timestamp => "timestamp",
            Metadata::Key => "key",
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Metadata::Partition => DataType::Int32,
            Metadata::Offset => DataType::Int64,
            Metadata::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            Metadata::Key => DataType::Binary,
        }
    }

    fn option(self) -> String {
        format!("include.{}", self.name())
    }
}

/// The metadata columns `options` ask for (`include.<kind> = 'column'`),
/// to be appended to the declared columns.
pub fn metadata_fields(options: &[(String, String)]) -> Vec<Field> {
    Metadata::ALL
        .iter()
        .filter_map(|m| {
            let key = m.option();
            options
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, name)| Field::new(name.clone(), m.data_type(), true))
        })
        .collect()
}

/// A validated Kafka source.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    topic: String,
    /// librdkafka configuration: `properties.*` options and our defaults.
    config: Vec<(String, String)>,
    /// First offset of each partition known (index = partition); grows
    /// as partitions are discovered, shared by every copy of the source.
    start: Arc<RwLock<Vec<i64>>>,
    /// How often to look for new partitions; `None` = never.
    discovery: Option<Duration>,
    decoder: PayloadDecoder,
    envelope: Envelope,
    /// The payload's columns (the schema without metadata columns).
    rows: SchemaRef,
    metadata: Vec<Metadata>,
    schema: SchemaRef,
    malformed: Arc<MalformedMessages>,
    connection: Arc<ConnectionStatus>,
}

/// The topic and client configuration in `options`: a consumer's defaults
/// for reading by position, under the `properties.*` the user gave.
fn connection_options(options: &mut Options) -> Result<(String, Vec<(String, String)>)> {
    let (topic, given) = kafka_client::connection_options(options)?;
    let mut config: Vec<(String, String)> = [
        ("group.id", "eddy"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "false"),
        // Retention may have removed a checkpointed offset: go on from the oldest.
        ("auto.offset.reset", "earliest"),
        ("isolation.level", "read_committed"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .filter(|(k, _)| !given.iter().any(|(g, _)| g == k))
    .collect();
    config.extend(given);
    Ok((topic, config))
}

impl KafkaSource {
    /// Whether every message is a row inserted (not an upsert or a change
    /// event).
    pub fn is_append_only(&self) -> bool {
        self.envelope == Envelope::Plain
    }

    /// A source of `schema` rows (declared columns, then the metadata
    /// columns [`metadata_fields`] gave) from `options`.
    pub fn new(schema: SchemaRef, options: &mut Options) -> Result<Self> {
        let (topic, config) = connection_options(options)?;
        // Already turned into `scan.startup.offsets` by `resolve`; checked
        // again so the catalog holds only valid statements.
        StartupMode::take(options)?;
        options.take("scan.startup.timestamp.millis");
        let discovery = match options.take("scan.partition.discovery.interval") {
            None => Some(DISCOVERY_INTERVAL),
            Some(text) => {
                let interval = eddy_planner::duration_text(&text).map_err(|e| {
                    ExecutorError::InvalidOption(format!("scan.partition.discovery.interval: {e}"))
                })?;
                (!interval.is_zero()).then_some(interval)
            }
        };
        let start = match options.take(START_OFFSETS) {
            Some(list) => list
                .split(',')
                .map(|o| o.trim().parse::<i64>())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| {
                    ExecutorError::InvalidOption(format!(
                        "scan.startup.offsets must list one offset per partition, got '{list}'"
                    ))
                })?,
            None => {
                return Err(ExecutorError::Internal(
                    "a Kafka source's start offsets were not resolved".into(),
                ));
            }
        };
        let envelope = match options.take("format").as_deref() {
            None | Some("plain") => Envelope::Plain,
            Some("debezium") => Envelope::Debezium,
            Some("upsert") => Envelope::Upsert,
            Some(other) => {
                return Err(ExecutorError::Unsupported(format!(
                    "FORMAT {} (supported: PLAIN, UPSERT, DEBEZIUM)",
                    other.to_uppercase()
                )));
            }
        };
        let encoding = Encoding::from_options(options)?;
        if envelope != Envelope::Plain && encoding != Encoding::Json {
            return Err(ExecutorError::Unsupported(format!(
                "FORMAT {} with an encoding other than JSON",
                format!("{envelope:?}").to_uppercase()
            )));
        }
        let metadata: Vec<Metadata> = Metadata::ALL
            .into_iter()
            .filter(|m| options.take(&m.option()).is_some())
            .collect();
        let payload_columns = schema.fields().len() - metadata.len();
        let rows = Arc::new(schema.project(&(0..payload_columns).collect::<Vec<_>>())?);
        Ok(Self {
            topic,
            config,
            start: Arc::new(RwLock::new(start)),
            discovery,
            decoder: PayloadDecoder::new(envelope.payload_schema(&rows), encoding),
            envelope,
            rows,
            metadata,
            schema,
            malformed: Arc::default(),
            connection: Arc::default(),
        })
    }

    fn start(&self) -> std::sync::RwLockReadGuard<'_, Vec<i64>> {
        self.start.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Partitions known, one split each.
    pub fn partitions(&self) -> usize {
        self.start().len()
    }

    /// Where partition `partition` starts, if it is known.
    fn start_of(&self, partition: i32) -> Option<i64> {
        self.start().get(partition as usize).copied()
    }

    /// How often to look for new partitions; `None` = never.
    pub fn discovery_interval(&self) -> Option<Duration> {
        self.discovery
    }

    /// The first offsets of partitions the topic gained since the source
    /// learned of its partitions (none if it gained none). Blocking.
    pub fn discover(&self) -> Result<Vec<i64>> {
        start::new_partitions(&self.topic, &self.config, self.partitions())
    }

    /// The option pinning every partition's first offset, with partitions
    /// starting at `offsets` added: what the catalog stores.
    pub fn pinned_with(&self, offsets: &[i64]) -> (String, String) {
        let mut all = self.start().clone();
        all.extend_from_slice(offsets);
        (START_OFFSETS.to_string(), start::pinned(&all))
    }

    /// Takes up partitions [`KafkaSource::discover`] found.
    pub fn add_partitions(&self, offsets: &[i64]) {
        self.start
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(offsets);
    }

    /// Messages that could not be decoded.
    pub fn malformed(&self) -> &Arc<MalformedMessages> {
        &self.malformed
    }

    /// The clients' last connection problem.
    pub fn connection(&self) -> &Arc<ConnectionStatus> {
        &self.connection
    }

    /// The reader of partition `index`, from offset `start` (0 = where the
    /// source starts).
    pub fn split(&self, index: usize, start: u64) -> Result<Box<dyn SplitReader>> {
        Ok(Box::new(KafkaSplit::new(
            self.clone(),
            index as i32,
            start,
        )?))
    }
}
