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
//! A split consumes its partition with a consumer of its own (assigned, not
//! subscribed). The client reconnects by itself when a broker goes away;
//! the split waits and logs until messages flow again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::decode::{Encoding, PayloadDecoder};
use super::envelope::Envelope;
use super::malformed::{MalformedMessage, MalformedMessages};
use super::upsert::{Upsert, UpsertState};
use super::{Options, SplitReader};
use crate::checkpoint::{StateEntries, StateWriter};
use crate::error::{ExecutorError, Result};
use crate::kafka_client::{
    self, ConnectionStatus, ThrottledContext, client_config, invalid_config,
};
use crate::message::{Op, StreamChunk};

/// How long creating a source waits for the broker.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// First offset of each partition (index = partition).
    start: Vec<i64>,
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

/// Pins where every view starts: turns the startup mode into
/// `scan.startup.offsets` (one offset per partition), asking the broker.
/// Blocking; a no-op if the offsets are pinned already.
pub fn resolve(options: &mut Vec<(String, String)>) -> Result<()> {
    if options.iter().any(|(k, _)| k == "scan.startup.offsets") {
        return Ok(());
    }
    let mut parsed = Options::new(options.iter().cloned());
    let (topic, config) = connection_options(&mut parsed)?;
    let context = ThrottledContext::new(&topic, -1);
    let consumer: BaseConsumer<ThrottledContext> = client_config(&config)
        .create_with_context(context)
        .map_err(invalid_config)?;
    let unreachable = |e: KafkaError| ExecutorError::Connector(format!("Kafka broker: {e}"));
    let metadata = consumer
        .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
        .map_err(unreachable)?;
    let partitions = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions().len(),
        _ => return Err(ExecutorError::UnknownTopic(topic)),
    };
    let mode = parsed
        .take("scan.startup.mode")
        .unwrap_or_else(|| "earliest".into());
    let offsets: Vec<i64> = match mode.as_str() {
        "earliest" | "latest" => (0..partitions as i32)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                    .map_err(unreachable)?;
                Ok(if mode == "earliest" { low } else { high })
            })
            .collect::<Result<_>>()?,
        "timestamp" => {
            let millis: i64 = parsed
                .number("scan.startup.timestamp.millis")?
                .ok_or_else(|| {
                    ExecutorError::InvalidOption(
                        "scan.startup.mode = 'timestamp' needs scan.startup.timestamp.millis"
                            .into(),
                    )
                })?;
            let mut list = TopicPartitionList::new();
            for p in 0..partitions as i32 {
                list.add_partition_offset(&topic, p, Offset::Offset(millis))
                    .map_err(unreachable)?;
            }
            let found = consumer
                .offsets_for_times(list, METADATA_TIMEOUT)
                .map_err(unreachable)?;
            (0..partitions as i32)
                .map(|p| {
                    let offset = found
                        .find_partition(&topic, p)
                        .map(|e| e.offset())
                        .unwrap_or(Offset::End);
                    match offset {
                        Offset::Offset(o) => Ok(o),
                        // No message that late: start at the end.
                        _ => Ok(consumer
                            .fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                            .map_err(unreachable)?
                            .1),
                    }
                })
                .collect::<Result<_>>()?
        }
        other => {
            return Err(ExecutorError::InvalidOption(format!(
                "scan.startup.mode must be earliest, latest or timestamp, got '{other}'"
            )));
        }
    };
    let pinned: Vec<String> = offsets.iter().map(|o| o.to_string()).collect();
    options.push(("scan.startup.offsets".into(), pinned.join(",")));
    Ok(())
}

impl KafkaSource {
    /// A source of `schema` rows (declared columns, then the metadata
    /// columns [`metadata_fields`] gave) from `options`.
    pub fn new(schema: SchemaRef, options: &mut Options) -> Result<Self> {
        let (topic, config) = connection_options(options)?;
        let mode = options.take("scan.startup.mode");
        if !matches!(
            mode.as_deref(),
            None | Some("earliest" | "latest" | "timestamp")
        ) {
            return Err(ExecutorError::InvalidOption(format!(
                "scan.startup.mode must be earliest, latest or timestamp, got '{}'",
                mode.unwrap_or_default()
            )));
        }
        options.take("scan.startup.timestamp.millis");
        let start = match options.take("scan.startup.offsets") {
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
            start,
            decoder: PayloadDecoder::new(envelope.payload_schema(&rows), encoding),
            envelope,
            rows,
            metadata,
            schema,
            malformed: Arc::default(),
            connection: Arc::default(),
        })
    }

    /// Partitions, one split each.
    pub fn partitions(&self) -> usize {
        self.start.len()
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
        let upserts = match self.envelope {
            Envelope::Upsert => Some(UpsertState::new(&self.rows)?),
            _ => None,
        };
        Ok(Box::new(KafkaSplit {
            source: self.clone(),
            partition: index as i32,
            start,
            consumer: None,
            buffer: VecDeque::new(),
            upserts,
        }))
    }
}

/// A message copied out of the client, waiting to be read.
struct Pending {
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

struct KafkaSplit {
    source: KafkaSource,
    partition: i32,
    start: u64,
    /// Created at the first read, so a source can be declared while its
    /// broker is away.
    consumer: Option<StreamConsumer<ThrottledContext>>,
    buffer: VecDeque<Pending>,
    /// `FORMAT UPSERT`: every key's current row.
    upserts: Option<UpsertState>,
}

impl KafkaSplit {
    fn connect(&mut self) -> Result<()> {
        if self.consumer.is_none() {
            let context = ThrottledContext::new(&self.source.topic, self.partition)
                .reporting_to(self.source.connection.clone());
            let consumer: StreamConsumer<ThrottledContext> = client_config(&self.source.config)
                .create_with_context(context)
                .map_err(invalid_config)?;
            let offset = match self.start {
                0 => match self.source.start.get(self.partition as usize) {
                    Some(&o) => Offset::Offset(o),
                    None => Offset::Beginning,
                },
                position => Offset::Offset(position as i64),
            };
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&self.source.topic, self.partition, offset)
                .map_err(|e| ExecutorError::Connector(e.to_string()))?;
            consumer
                .assign(&assignment)
                .map_err(|e| ExecutorError::Connector(e.to_string()))?;
            self.consumer = Some(consumer);
        }
        Ok(())
    }
}

fn pending(message: &rdkafka::message::BorrowedMessage<'_>) -> Pending {
    Pending {
        offset: message.offset(),
        timestamp: message.timestamp().to_millis(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
    }
}

#[async_trait]
impl SplitReader for KafkaSplit {
    async fn available(&mut self, position: u64, max: usize) -> Result<Option<u64>> {
        self.buffer.retain(|m| m.offset as u64 >= position);
        self.connect()?;
        let Some(consumer) = &self.consumer else {
            return Ok(None);
        };
        if self.buffer.is_empty() {
            let mut backoff = Duration::from_millis(50);
            loop {
                let received = consumer.recv().await.map(|m| pending(&m));
                match received {
                    Ok(m) => {
                        self.source.connection.clear();
                        if m.offset as u64 >= position {
                            self.buffer.push_back(m);
                            break;
                        }
                    }
                    Err(e) => {
                        consumer.context().complain(&e.to_string());
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        while self.buffer.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => self.buffer.push_back(pending(&m)),
                _ => break,
            }
        }
        // At least one message is buffered here; `max` 0 still reads one.
        let last = &self.buffer[self.buffer.len().min(max.max(1)) - 1];
        Ok(Some(last.offset as u64 + 1))
    }

    fn read(&mut self, _position: u64, end: u64) -> Result<StreamChunk> {
        let count = self
            .buffer
            .iter()
            .take_while(|m| (m.offset as u64) < end)
            .count();
        let mut messages: Vec<Pending> = self.buffer.drain(..count).collect();
        if self.source.envelope == Envelope::Debezium {
            // Debezium follows a delete with a tombstone (no value) so that
            // compaction can drop the key: nothing to apply.
            messages.retain(|m| m.payload.is_some());
        }
        let decoded = match &mut self.upserts {
            Some(state) => decode_upserts(&self.source, state, &messages)?,
            None => decode_changes(&self.source, &messages)?,
        };
        let Decoded {
            mut columns,
            ops,
            origin,
            mut rejected,
        } = decoded;
        // In offset order: the record keeps one entry per offset.
        rejected.sort_by_key(|(index, _)| *index);
        for (index, reason) in rejected {
            let message = &messages[index];
            self.source.malformed.record(MalformedMessage {
                topic: self.source.topic.clone(),
                partition: self.partition,
                offset: message.offset,
                reason,
                payload: message.payload.clone().unwrap_or_default(),
            });
        }
        let origin = || origin.iter().map(|&i| &messages[i]);
        for metadata in &self.source.metadata {
            let column: ArrayRef = match metadata {
                Metadata::Partition => Arc::new(Int32Array::from(vec![self.partition; ops.len()])),
                Metadata::Offset => {
                    Arc::new(Int64Array::from_iter_values(origin().map(|m| m.offset)))
                }
                Metadata::Timestamp => Arc::new(TimestampMillisecondArray::from_iter(
                    origin().map(|m| m.timestamp),
                )),
                Metadata::Key => {
                    Arc::new(BinaryArray::from_iter(origin().map(|m| m.key.as_deref())))
                }
            };
            columns.push(column);
        }
        Ok(StreamChunk {
            batch: RecordBatch::try_new(self.source.schema.clone(), columns)?,
            ops: ops.into(),
        })
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        if let Some(upserts) = &mut self.upserts {
            upserts.checkpoint(state);
        }
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        if let Some(upserts) = &mut self.upserts {
            upserts.restore(entries);
        }
        Ok(())
    }
}

/// Rows decoded from a batch of messages.
struct Decoded {
    /// The payload's columns.
    columns: Vec<ArrayRef>,
    ops: Vec<Op>,
    /// The message each row came from.
    origin: Vec<usize>,
    /// Messages skipped: index and reason.
    rejected: Vec<(usize, String)>,
}

/// Plain rows or Debezium events.
fn decode_changes(source: &KafkaSource, messages: &[Pending]) -> Result<Decoded> {
    let payloads: Vec<Option<&[u8]>> = messages.iter().map(|m| m.payload.as_deref()).collect();
    let decoded = source.decoder.decode(&payloads)?;
    let changes = source.envelope.changes(decoded.batch, &source.rows)?;
    let mut rejected = decoded.rejected;
    rejected.extend(
        changes
            .rejected
            .into_iter()
            .map(|(i, reason)| (decoded.kept[i], reason)),
    );
    Ok(Decoded {
        columns: changes.batch.columns().to_vec(),
        ops: changes.ops,
        origin: changes.payload.iter().map(|&p| decoded.kept[p]).collect(),
        rejected,
    })
}

/// Upserts, against the split's state.
fn decode_upserts(
    source: &KafkaSource,
    state: &mut UpsertState,
    messages: &[Pending],
) -> Result<Decoded> {
    let mut rejected = Vec::new();
    // Per message with a key: the index of its value among `values`.
    let mut keyed: Vec<(usize, &[u8], Option<usize>)> = Vec::new();
    let mut values: Vec<Option<&[u8]>> = Vec::new();
    let mut value_message = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(key) = m.key.as_deref() else {
            rejected.push((i, "an upsert message needs a key".to_string()));
            continue;
        };
        let value = m.payload.as_deref().map(|p| {
            values.push(Some(p));
            value_message.push(i);
            values.len() - 1
        });
        keyed.push((i, key, value));
    }
    let decoded = source.decoder.decode(&values)?;
    rejected.extend(
        decoded
            .rejected
            .iter()
            .map(|(v, reason)| (value_message[*v], reason.clone())),
    );
    let mut row_of = vec![None; values.len()];
    for (row, &value) in decoded.kept.iter().enumerate() {
        row_of[value] = Some(row);
    }
    let mut upserts = Vec::with_capacity(keyed.len());
    let mut upsert_message = Vec::with_capacity(keyed.len());
    for (message, key, value) in keyed {
        let upsert = match value {
            None => Upsert::Delete { key },
            Some(value) => match row_of[value] {
                Some(row) => Upsert::Put { key, row },
                // Rejected above; the key keeps its row.
                None => continue,
            },
        };
        upserts.push(upsert);
        upsert_message.push(message);
    }
    let changes = state.apply(&upserts, &decoded.batch)?;
    Ok(Decoded {
        columns: changes.columns,
        ops: changes.ops,
        origin: changes.origin.iter().map(|&u| upsert_message[u]).collect(),
        rejected,
    })
}
