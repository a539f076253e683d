//! Messages a source could not decode: counted, and the most recent kept
//! with where they are and why (the `eddy_catalog.source_errors` table).
//!
//! Every view reads a source with readers of its own, so each malformed
//! message is met once per view; it is recorded once, by the first reader
//! to pass it: per partition, only offsets beyond the last one recorded
//! count. The record lives in memory: after a restart it counts from then.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Bytes of a malformed payload kept for inspection.
pub const PAYLOAD_PREFIX: usize = 256;
/// Malformed messages kept per source.
const RECENT: usize = 100;

/// One malformed message.
#[derive(Debug, Clone)]
pub struct MalformedMessage {
    /// Where it came from (the Kafka topic).
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Why it was rejected.
    pub reason: String,
    /// The first [`PAYLOAD_PREFIX`] bytes of its value.
    pub payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Record {
    count: u64,
    recent: VecDeque<MalformedMessage>,
    /// Partition -> the last offset recorded.
    recorded: HashMap<i32, i64>,
}

/// The malformed messages of one source.
#[derive(Debug, Default)]
pub struct MalformedMessages {
    record: Mutex<Record>,
}

impl MalformedMessages {
    /// Records `message` unless another reader already did.
    pub fn record(&self, mut message: MalformedMessage) {
        let mut record = crate::sync::lock(&self.record);
        let last = record.recorded.entry(message.partition).or_insert(-1);
        if message.offset <= *last {
            return;
        }
        *last = message.offset;
        tracing::warn!(
            topic = %message.topic,
            partition = message.partition,
            offset = message.offset,
            reason = %message.reason,
            "malformed message skipped"
        );
        message.payload.truncate(PAYLOAD_PREFIX);
        metrics::counter!("eddy_malformed_messages_total", "topic" => message.topic.clone())
            .increment(1);
        record.count += 1;
        if record.recent.len() == RECENT {
            record.recent.pop_front();
        }
        record.recent.push_back(message);
    }

    /// Malformed messages met since the server started.
    pub fn count(&self) -> u64 {
        crate::sync::lock(&self.record).count
    }

    /// The most recent ones, oldest first.
    pub fn recent(&self) -> Vec<MalformedMessage> {
        let record = crate::sync::lock(&self.record);
        record.recent.iter().cloned().collect()
    }
}
