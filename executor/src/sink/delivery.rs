//! Sends committed epochs to Kafka, one transaction per epoch, in order.
//!
//! Runs on a thread of its own: the producer's transaction calls block.
//! Each epoch waits until the checkpoint holding it is durable, then goes
//! out in one transaction, every record carrying the epoch in a header
//! (`eddy.sink.<id>.epoch`). When a producer takes over the sink's
//! transactional id it reads the newest committed records of each
//! partition: the largest epoch among them is the last one Kafka holds, and
//! epochs up to it were delivered before a crash and are skipped. Any failure (a broker away, a
//! fenced or broken producer) aborts the transaction and retries the epoch
//! with backoff, on a new producer if needed; nothing is lost meanwhile,
//! since the epoch stays in the sink's checkpointed state until delivered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;

use super::{SinkRecord, SinkSpec};
use crate::kafka_client::{ThrottledContext, client_config};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How far a sink's delivery got, for the writer (which then forgets
/// delivered epochs) and for `SHOW SINKS`.
#[derive(Debug, Default)]
pub struct DeliveryStatus {
    delivered: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl DeliveryStatus {
    /// The last epoch Kafka holds.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }

    /// The last failure, until the next epoch is delivered.
    pub fn last_error(&self) -> Option<String> {
        crate::sync::lock(&self.last_error).clone()
    }

    fn set_error(&self, error: Option<String>) {
        *crate::sync::lock(&self.last_error) = error;
    }
}

/// An epoch's records, to be sent once the epoch commits.
pub(crate) type EpochRecords = (u64, Arc<Vec<SinkRecord>>);

/// The writer's end of a delivery thread: epochs go in, in order. Dropping
/// it (the sink is dropped) ends the thread, even mid-retry.
pub(crate) struct DeliveryHandle {
    epochs: mpsc::Sender<EpochRecords>,
    stop: Arc<AtomicBool>,
}

impl DeliveryHandle {
    /// Queues `epoch` for delivery once it commits.
    pub(crate) fn send(&self, epoch: EpochRecords) {
        // A closed channel means the thread could not start; it was logged.
        let _ = self.epochs.send(epoch);
    }
}

impl Drop for DeliveryHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Starts delivering for `spec`.
pub(crate) fn start(
    spec: Arc<SinkSpec>,
    durable: watch::Receiver<u64>,
    status: Arc<DeliveryStatus>,
) -> DeliveryHandle {
    let (tx, rx) = mpsc::channel::<EpochRecords>();
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let name = format!("eddy-sink-{}", spec.id);
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut delivery = Delivery {
            spec,
            status,
            producer: None,
            stop: stopped,
        };
        while let Ok((epoch, records)) = rx.recv() {
            let mut durable = durable.clone();
            // The runtime outlives its sinks; an error means it is shutting down.
            if futures::executor::block_on(durable.wait_for(|d| *d >= epoch)).is_err() {
                return;
            }
            delivery.deliver(epoch, &records);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a sink's delivery thread");
    }
    DeliveryHandle { epochs: tx, stop }
}

struct Delivery {
    spec: Arc<SinkSpec>,
    status: Arc<DeliveryStatus>,
    /// With its transactions initialised, and the last epoch Kafka held then.
    producer: Option<(ThreadedProducer<ThrottledContext>, u64)>,
    /// Set when the sink is dropped.
    stop: Arc<AtomicBool>,
}

impl Delivery {
    /// The producer's transactional id (and the group id of its reads).
    fn group(&self) -> String {
        format!("eddy-sink-{}", self.spec.id)
    }

    /// Delivers `epoch`, retrying until it is in Kafka.
    fn deliver(&mut self, epoch: u64, records: &[SinkRecord]) {
        let mut backoff = Duration::from_millis(100);
        while !self.stop.load(Ordering::Acquire) {
            match self.try_deliver(epoch, records) {
                Ok(()) => {
                    self.status.delivered.fetch_max(epoch, Ordering::AcqRel);
                    metrics::gauge!("eddy_sink_delivered_epoch", "sink" => self.spec.id.to_string())
                        .set(epoch as f64);
                    self.status.set_error(None);
                    return;
                }
                Err(e) => {
                    tracing::warn!(sink = self.spec.id, epoch, error = %e,
                        "delivering to Kafka failed; retrying");
                    self.status.set_error(Some(e.to_string()));
                    // A producer whose transaction aborts cleanly goes on;
                    // any other is replaced.
                    let reusable = self
                        .producer
                        .as_ref()
                        .is_some_and(|(p, _)| p.abort_transaction(TIMEOUT).is_ok());
                    if !reusable {
                        self.producer = None;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn try_deliver(&mut self, epoch: u64, records: &[SinkRecord]) -> Result<(), KafkaError> {
        if self.producer.is_none() {
            self.producer = Some(self.connect()?);
        }
        let Some((producer, held)) = &self.producer else {
            return Ok(());
        };
        if epoch <= *held || records.is_empty() {
            return Ok(());
        }
        let header = self.epoch_header();
        let epoch_bytes = epoch.to_be_bytes();
        producer.begin_transaction()?;
        for record in records {
            let mut message = BaseRecord::<[u8], [u8]>::to(&self.spec.topic);
            if let Some(key) = &record.key {
                message = message.key(key);
            }
            if let Some(value) = &record.value {
                message = message.payload(value);
            }
            message = message.headers(OwnedHeaders::new().insert(Header {
                key: &header,
                value: Some(&epoch_bytes),
            }));
            let mut message = Some(message);
            while let Some(m) = message.take() {
                if let Err((e, m)) = producer.send(m) {
                    match e {
                        KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ) => {
                            std::thread::sleep(Duration::from_millis(10));
                            message = Some(m);
                        }
                        e => return Err(e),
                    }
                }
            }
        }
        producer.commit_transaction(TIMEOUT)?;
        Ok(())
    }

    fn epoch_header(&self) -> String {
        format!("eddy.sink.{}.epoch", self.spec.id)
    }

    /// A transactional producer that took over the sink's transactional id
    /// (aborting whatever a crashed predecessor left open), and the last
    /// epoch Kafka holds.
    fn connect(&self) -> Result<(ThreadedProducer<ThrottledContext>, u64), KafkaError> {
        let mut config = client_config(&self.spec.config);
        config
            .set("transactional.id", self.group())
            .set("enable.idempotence", "true");
        let producer: ThreadedProducer<ThrottledContext> =
            config.create_with_context(ThrottledContext::new(&self.spec.topic, -1))?;
        producer.init_transactions(TIMEOUT)?;
        let held = self.last_epoch_held()?;
        self.status.delivered.fetch_max(held, Ordering::AcqRel);
        Ok((producer, held))
    }

    /// The largest epoch among the sink's committed records: per partition,
    /// the newest records are read (further back until one of the sink's is
    /// found, or the partition's start).
    fn last_epoch_held(&self) -> Result<u64, KafkaError> {
        let mut config = client_config(&self.spec.config);
        config
            .set("group.id", self.group())
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed");
        let consumer: BaseConsumer<ThrottledContext> =
            config.create_with_context(ThrottledContext::new(&self.spec.topic, -1))?;
        let topic = &self.spec.topic;
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic.as_str())
            .map_or(0, |t| t.partitions().len() as i32);
        let header = self.epoch_header();
        let mut held = 0;
        for partition in 0..partitions {
            let (low, high) = consumer.fetch_watermarks(topic, partition, TIMEOUT)?;
            let mut span = 64;
            loop {
                let start = (high - span).max(low);
                let found = newest_epoch(&consumer, topic, partition, start, high, &header)?;
                if found.is_some() || start == low {
                    held = held.max(found.unwrap_or(0));
                    break;
                }
                span *= 8;
            }
        }
        Ok(held)
    }
}

/// The largest epoch header among `partition`'s committed records in
/// `start..end`.
fn newest_epoch(
    consumer: &BaseConsumer<ThrottledContext>,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    header: &str,
) -> Result<Option<u64>, KafkaError> {
    if start >= end {
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(start))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut newest = None;
    loop {
        // The position passes transaction markers and aborted records too.
        let position = consumer
            .position()?
            .find_partition(topic, partition)
            .map(|e| e.offset());
        if matches!(position, Some(Offset::Offset(p)) if p >= end) {
            return Ok(newest);
        }
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::Canceled);
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let epoch = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|h| h.key == header)
                .and_then(|h| h.value)
                .and_then(|v| v.try_into().ok())
                .map(u64::from_be_bytes)
        });
        if let Some(epoch) = epoch {
            newest = Some(newest.unwrap_or(0).max(epoch));
        }
    }
}
