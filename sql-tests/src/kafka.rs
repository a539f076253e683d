//! A Kafka-protocol broker for tests: librdkafka's mock cluster, in the
//! test process, reachable by `eddy` processes over loopback.
//!
//! The mock cluster supports producing, consuming, idempotent and
//! transactional producers; it does not answer CreateTopics, so topics are
//! created here.

use std::path::Path;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A message read back from a topic.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub payload: Option<Vec<u8>>,
}

/// A running mock Kafka cluster with a producer into it.
pub struct KafkaBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl KafkaBroker {
    /// Starts a cluster of one broker.
    pub fn start() -> Self {
        let cluster = MockCluster::new(1).expect("mock Kafka cluster");
        let producer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("linger.ms", "0")
            // Ordered per partition, each message once, whatever retries.
            .set("enable.idempotence", "true")
            .create()
            .expect("Kafka producer");
        Self { cluster, producer }
    }

    /// Where clients connect (`properties.bootstrap.server`).
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.cluster
            .create_topic(topic, partitions, 1)
            .expect("create topic");
    }

    /// Produces one message (`None` payload = a message without a value);
    /// [`KafkaBroker::flush`] waits until the broker has it.
    pub fn produce(&self, topic: &str, partition: i32, key: Option<&str>, payload: Option<&[u8]>) {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(partition);
        if let Some(key) = key {
            record = record.key(key.as_bytes());
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        let mut record = Some(record);
        while let Some(r) = record.take() {
            if let Err((e, r)) = self.producer.send(r) {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ),
                    "produce: {e}"
                );
                std::thread::sleep(Duration::from_millis(5));
                record = Some(r);
            }
        }
    }

    /// Waits until every produced message is acknowledged.
    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(30))
            .expect("flush producer");
    }

    /// Takes a broker down (connections refused) or brings it back.
    pub fn set_up(&self, up: bool) {
        let result = if up {
            self.cluster.broker_up(1)
        } else {
            self.cluster.broker_down(1)
        };
        result.expect("broker up/down");
    }

    /// Every committed message of `topic`'s `partitions` partitions, read
    /// back in order per partition.
    pub fn read_all(&self, topic: &str, partitions: i32) -> Vec<ReadMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("group.id", "eddy-tests")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()
            .expect("Kafka consumer");
        let mut assignment = TopicPartitionList::new();
        let mut ends = Vec::new();
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            ends.push(high);
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        let mut messages = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // Done when the position of every partition reached its end: the
        // position moves past transaction markers and aborted messages too.
        let done = |consumer: &BaseConsumer| {
            let Ok(position) = consumer.position() else {
                return false;
            };
            (0..partitions).all(|p| {
                matches!(position.find_partition(topic, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= ends[p as usize])
                    || ends[p as usize] == 0
            })
        };
        while !done(&consumer) {
            assert!(
                std::time::Instant::now() < deadline,
                "reading {topic} back timed out"
            );
            let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            messages.push(ReadMessage {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().map(<[u8]>::to_vec),
            });
        }
        messages
    }

    /// Creates a topic per file in `dir` (`<topic>.txt`) and produces its
    /// lines, each `partition|key|payload` (empty key = none; payload
    /// `<none>` = a message without a value; `\n` in a payload = a newline).
    pub fn seed(&self, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            let Some(topic) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("topic file");
            let messages: Vec<(i32, &str, &str)> = text
                .lines()
                .filter(|l| !l.is_empty())
                .map(|line| {
                    let mut parts = line.splitn(3, '|');
                    let partition = parts.next().and_then(|p| p.parse().ok());
                    match (partition, parts.next(), parts.next()) {
                        (Some(p), Some(k), Some(v)) => (p, k, v),
                        _ => panic!("{}: bad line '{line}'", path.display()),
                    }
                })
                .collect();
            let partitions = messages.iter().map(|m| m.0).max().unwrap_or(0) + 1;
            self.create_topic(topic, partitions);
            for (partition, key, payload) in messages {
                let key = (!key.is_empty()).then_some(key);
                let payload = (payload != "<none>").then(|| payload.replace("\\n", "\n"));
                self.produce(topic, partition, key, payload.as_deref().map(str::as_bytes));
            }
        }
        self.flush();
    }
}
