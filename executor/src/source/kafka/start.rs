//! Where a Kafka source's views start, fixed once at CREATE SOURCE.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::{METADATA_TIMEOUT, connection_options};
use crate::error::{ExecutorError, Result};
use crate::kafka_client::{ThrottledContext, client_config, invalid_config};
use crate::source::Options;

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
