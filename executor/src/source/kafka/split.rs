//! One partition of a Kafka source, read by a consumer of its own.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, TimestampMillisecondArray,
};
use futures::FutureExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{KafkaSource, Metadata};
use crate::checkpoint::{StateEntries, StateWriter};
use crate::error::{ExecutorError, Result};
use crate::kafka_client::{ThrottledContext, client_config, invalid_config};
use crate::message::{Op, StreamChunk};
use crate::source::SplitReader;
use crate::source::envelope::Envelope;
use crate::source::malformed::{MalformedMessage, PAYLOAD_PREFIX};
use crate::source::upsert::{Upsert, UpsertState};

/// A message copied out of the client, waiting to be read.
struct Pending {
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

pub(super) struct KafkaSplit {
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
    pub(super) fn new(source: KafkaSource, partition: i32, start: u64) -> Result<Self> {
        let upserts = match source.envelope {
            Envelope::Upsert => Some(UpsertState::new(&source.rows)?),
            _ => None,
        };
        Ok(Self {
            source,
            partition,
            start,
            consumer: None,
            buffer: VecDeque::new(),
            upserts,
        })
    }

    fn connect(&mut self) -> Result<()> {
        if self.consumer.is_none() {
            let context = ThrottledContext::new(&self.source.topic, self.partition)
                .reporting_to(self.source.connection.clone());
            let consumer: StreamConsumer<ThrottledContext> = client_config(&self.source.config)
                .create_with_context(context)
                .map_err(invalid_config)?;
            let offset = match self.start {
                0 => match self.source.start_of(self.partition) {
                    Some(o) => Offset::Offset(o),
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
                payload: message
                    .payload
                    .as_deref()
                    .map_or_else(Vec::new, |p| p[..p.len().min(PAYLOAD_PREFIX)].to_vec()),
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
