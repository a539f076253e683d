//! Where a Kafka source's views start, fixed once at CREATE SOURCE.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::{METADATA_TIMEOUT, START_OFFSETS, connection_options};
use crate::error::{ExecutorError, Result};
use crate::kafka_client::{ThrottledContext, client_config, invalid_config};
use crate::source::Options;

/// Where a source's views start in each partition (`scan.startup.mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum StartupMode {
    /// The oldest message kept.
    Earliest,
    /// After the newest message.
    Latest,
    /// The first message at or after `scan.startup.timestamp.millis`.
    Timestamp,
}

impl StartupMode {
    /// Takes `scan.startup.mode` (default: earliest) from `options`.
    pub(super) fn take(options: &mut Options) -> Result<Self> {
        match options.take("scan.startup.mode").as_deref() {
            None | Some("earliest") => Ok(Self::Earliest),
            Some("latest") => Ok(Self::Latest),
            Some("timestamp") => Ok(Self::Timestamp),
            Some(other) => Err(ExecutorError::InvalidOption(format!(
                "scan.startup.mode must be earliest, latest or timestamp, got '{other}'"
            ))),
        }
    }
}

/// Pins where every view starts: turns the startup mode into
/// `scan.startup.offsets` (one offset per partition), asking the broker.
/// Blocking; a no-op if the offsets are pinned already.
pub fn resolve(options: &mut Vec<(String, String)>) -> Result<()> {
    if options.iter().any(|(k, _)| k == START_OFFSETS) {
        return Ok(());
    }
    let mut parsed = Options::new(options.iter().cloned());
    let (topic, config) = connection_options(&mut parsed)?;
    let mode = StartupMode::take(&mut parsed)?;
    let consumer = metadata_client(&topic, &config)?;
    let partitions = partition_count(&consumer, &topic)?;
    let offsets: Vec<i64> = match mode {
        StartupMode::Earliest | StartupMode::Latest => (0..partitions as i32)
            .map(|p| {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                    .map_err(broker_error)?;
                Ok(if mode == StartupMode::Earliest {
                    low
                } else {
                    high
                })
            })
            .collect::<Result<_>>()?,
        StartupMode::Timestamp => {
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
                    .map_err(broker_error)?;
            }
            let found = consumer
                .offsets_for_times(list, METADATA_TIMEOUT)
                .map_err(broker_error)?;
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
                            .map_err(broker_error)?
                            .1),
                    }
                })
                .collect::<Result<_>>()?
        }
    };
    options.push((START_OFFSETS.into(), pinned(&offsets)));
    Ok(())
}

/// Offsets as `scan.startup.offsets` lists them.
pub(super) fn pinned(offsets: &[i64]) -> String {
    let pinned: Vec<String> = offsets.iter().map(|o| o.to_string()).collect();
    pinned.join(",")
}

/// The first offset of each partition of `topic` from `known` on: the
/// partitions added since the source learned of its first `known`. Blocking.
pub(super) fn new_partitions(
    topic: &str,
    config: &[(String, String)],
    known: usize,
) -> Result<Vec<i64>> {
    let consumer = metadata_client(topic, config)?;
    let partitions = partition_count(&consumer, topic)?;
    // A new partition's messages all came after the source was created.
    (known..partitions)
        .map(|p| {
            Ok(consumer
                .fetch_watermarks(topic, p as i32, METADATA_TIMEOUT)
                .map_err(broker_error)?
                .0)
        })
        .collect()
}

fn broker_error(e: KafkaError) -> ExecutorError {
    ExecutorError::Connector(format!("Kafka broker: {e}"))
}

fn metadata_client(
    topic: &str,
    config: &[(String, String)],
) -> Result<BaseConsumer<ThrottledContext>> {
    client_config(config)
        .create_with_context(ThrottledContext::new(topic, -1))
        .map_err(invalid_config)
}

fn partition_count(consumer: &BaseConsumer<ThrottledContext>, topic: &str) -> Result<usize> {
    let metadata = consumer
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(broker_error)?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
        _ => Err(ExecutorError::UnknownTopic(topic.to_string())),
    }
}
