//! An epoch's changes as Kafka records, by sink type.
//!
//! Changes are consolidated per epoch first: per message key (the primary
//! key's columns, or the whole row without one), each row's net count. So a
//! row inserted and deleted within one epoch writes nothing, and an update
//! (a key's old row out, its new row in) is one record:
//!
//! - append-only: each inserted row, once per copy; a net deletion is an
//!   error (the query is not append-only);
//! - upsert: the key's new row, or a tombstone (no value) if it is gone;
//! - debezium: `{"before": .., "after": .., "op": "c" | "u" | "d"}`.

use super::SinkType;
use crate::codec::json_rows;
use crate::error::{ExecutorError, Result};
use crate::hash::HashMap;
use crate::message::StreamChunk;

/// One Kafka message.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    /// Message key (JSON of the primary key), if the sink has one.
    pub key: Option<Vec<u8>>,
    /// Message value; `None` is a tombstone.
    pub value: Option<Vec<u8>>,
}

/// Rows of one key with their net count this epoch. Without key columns
/// the key is the row itself, and its one entry's row is `None`.
type KeyedRows = (Vec<u8>, Vec<(Option<Vec<u8>>, i64)>);

/// Accumulates one epoch's changes and turns them into records.
#[derive(Debug)]
pub struct EpochEncoder {
    sink_type: SinkType,
    key: Vec<usize>,
    /// In order of first appearance, so output follows input.
    keys: Vec<KeyedRows>,
    index: HashMap<Vec<u8>, usize>,
}

impl EpochEncoder {
    /// An encoder for `sink_type` keyed by columns `key` (may be empty).
    pub fn new(sink_type: SinkType, key: Vec<usize>) -> Self {
        Self {
            sink_type,
            key,
            keys: Vec::new(),
            index: HashMap::default(),
        }
    }

    /// Adds a chunk of changes.
    pub fn add(&mut self, chunk: &StreamChunk) -> Result<()> {
        if chunk.batch.num_rows() == 0 {
            return Ok(());
        }
        let rows = json_rows(&chunk.batch)?;
        let mut keys = if self.key.is_empty() {
            None
        } else {
            Some(json_rows(&chunk.batch.project(&self.key)?)?.into_iter())
        };
        for (row, op) in rows.into_iter().zip(chunk.ops.iter()) {
            let (key, row) = match keys.as_mut().and_then(Iterator::next) {
                Some(key) => (key, Some(row)),
                None => (row, None),
            };
            let slot = match self.index.get(&key) {
                Some(&i) => i,
                None => {
                    self.index.insert(key.clone(), self.keys.len());
                    self.keys.push((key, Vec::new()));
                    self.keys.len() - 1
                }
            };
            let rows = &mut self.keys[slot].1;
            match rows.iter_mut().find(|(r, _)| *r == row) {
                Some((_, count)) => *count += op.sign(),
                None => rows.push((row, op.sign())),
            }
        }
        Ok(())
    }

    /// The epoch's records; the encoder is empty afterwards.
    pub fn finish(&mut self) -> Result<Vec<SinkRecord>> {
        self.index.clear();
        let keyed = !self.key.is_empty();
        let mut records = Vec::new();
        for (key, rows) in std::mem::take(&mut self.keys) {
            let message_key = keyed.then(|| key.clone());
            let copies = |sign: i64| -> Vec<&Vec<u8>> {
                rows.iter()
                    .filter(|(_, c)| c.signum() == sign)
                    .flat_map(|(r, c)| {
                        std::iter::repeat_n(r.as_ref().unwrap_or(&key), c.unsigned_abs() as usize)
                    })
                    .collect()
            };
            let (before, after) = (copies(-1), copies(1));
            match self.sink_type {
                SinkType::AppendOnly => {
                    if !before.is_empty() {
                        return Err(ExecutorError::Unsupported(
                            "an append-only sink received a deletion: its query updates or deletes rows; use type = 'upsert' (with primary_key) or 'debezium'".into(),
                        ));
                    }
                    records.extend(after.into_iter().map(|row| SinkRecord {
                        key: message_key.clone(),
                        value: Some(row.clone()),
                    }));
                }
                SinkType::Upsert => match (before.last(), after.last()) {
                    (_, Some(row)) => records.push(SinkRecord {
                        key: message_key,
                        value: Some((*row).clone()),
                    }),
                    (Some(_), None) => records.push(SinkRecord {
                        key: message_key,
                        value: None,
                    }),
                    (None, None) => {}
                },
                SinkType::Debezium if keyed => {
                    let event = match (before.last(), after.last()) {
                        (Some(b), Some(a)) => debezium(Some(b), Some(a), "u"),
                        (None, Some(a)) => debezium(None, Some(a), "c"),
                        (Some(b), None) => debezium(Some(b), None, "d"),
                        (None, None) => continue,
                    };
                    records.push(SinkRecord {
                        key: message_key,
                        value: Some(event),
                    });
                }
                SinkType::Debezium => {
                    for row in before {
                        records.push(SinkRecord {
                            key: None,
                            value: Some(debezium(Some(row), None, "d")),
                        });
                    }
                    for row in after {
                        records.push(SinkRecord {
                            key: None,
                            value: Some(debezium(None, Some(row), "c")),
                        });
                    }
                }
            }
        }
        Ok(records)
    }
}

/// A Debezium change event around JSON rows.
fn debezium(before: Option<&[u8]>, after: Option<&[u8]>, op: &str) -> Vec<u8> {
    let mut event =
        Vec::with_capacity(32 + before.map_or(4, <[u8]>::len) + after.map_or(4, <[u8]>::len));
    event.extend_from_slice(b"{\"before\":");
    event.extend_from_slice(before.unwrap_or(b"null"));
    event.extend_from_slice(b",\"after\":");
    event.extend_from_slice(after.unwrap_or(b"null"));
    event.extend_from_slice(b",\"op\":\"");
    event.extend_from_slice(op.as_bytes());
    event.extend_from_slice(b"\"}");
    event
}
