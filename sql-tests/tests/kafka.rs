//! Kafka sources across crashes and broker outages: messages keep arriving
//! while `eddy` is killed with `kill -9` at random moments and the broker
//! goes away and comes back. At the end every view equals its query run
//! over the topic's messages, read back from the broker: nothing lost,
//! nothing counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use eddy_sql_tests::kafka::KafkaBroker;
use eddy_sql_tests::{EddyServer, rows_sorted};

const TOPIC: &str = "events";
const PARTITIONS: i32 = 3;

/// Produces `{"k": .., "v": ..}` messages at about `rate` per second until
/// `stop`; returns how many it produced.
fn produce_until(bootstrap: String, rate: u64, seed: u64, stop: Arc<AtomicBool>) -> u64 {
    // Idempotent, so the broker's outage cannot duplicate a message.
    let producer: ThreadedProducer<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut rng = SmallRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let payload = format!(
            r#"{{"k": {}, "v": {}}}"#,
            rng.random_range(0..20),
            rng.random_range(-100..1000)
        );
        let record = BaseRecord::<(), _>::to(TOPIC)
            .partition(rng.random_range(0..PARTITIONS))
            .payload(&payload);
        match producer.send(record) {
            Ok(()) => sent += 1,
            // The local queue is full while the broker is away: wait.
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    sent
}

/// What the views must hold, computed from the topic's messages.
fn expected(messages: &[(i32, i64, Vec<u8>)]) -> (Vec<String>, Vec<String>) {
    let mut per_key: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut per_partition: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for (partition, offset, payload) in messages {
        let text = String::from_utf8_lossy(payload);
        let number = |field: &str| -> i64 {
            let start = text.find(&format!("\"{field}\": ")).expect("field") + field.len() + 4;
            let end = text[start..]
                .find([',', '}'])
                .map(|e| start + e)
                .expect("end");
            text[start..end].trim().parse().expect("number")
        };
        let entry = per_key.entry(number("k")).or_default();
        entry.0 += 1;
        entry.1 += number("v");
        let entry = per_partition.entry(*partition).or_insert((0, -1));
        entry.0 += 1;
        entry.1 = entry.1.max(*offset);
    }
    let mut keys: Vec<String> = per_key
        .iter()
        .map(|(k, (n, s))| format!("{k}|{n}|{s}"))
        .collect();
    keys.sort();
    let mut partitions: Vec<String> = per_partition
        .iter()
        .map(|(p, (n, max))| format!("{p}|{n}|{n}|{max}"))
        .collect();
    partitions.sort();
    (keys, partitions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_views_survive_kill9_and_broker_outage() {
    let seed: u64 = std::env::var("KAFKA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("KAFKA_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let broker = KafkaBroker::start();
    broker.create_topic(TOPIC, PARTITIONS);
    let mut server = EddyServer::start("kafka");
    let client = server.client().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE events (k BIGINT, v BIGINT) INCLUDE partition AS p INCLUDE offset AS o
               WITH (connector = 'kafka', topic = '{TOPIC}',
                     properties.bootstrap.server = '{}') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_key AS
               SELECT k, count(*) AS n, sum(v) AS total FROM events GROUP BY k;
             CREATE MATERIALIZED VIEW per_partition AS
               SELECT p, count(*) AS n, count(DISTINCT o) AS offsets, max(o) AS last
               FROM events GROUP BY p;",
            broker.bootstrap()
        ))
        .await
        .expect("setup");
    drop(client);

    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (bootstrap, stop) = (broker.bootstrap(), stop.clone());
        std::thread::spawn(move || produce_until(bootstrap, 3000, seed, stop))
    };
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        if round == 2 {
            // The broker goes away for a while, with eddy running.
            broker.set_up(false);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            broker.set_up(true);
        }
        server.restart_after_kill9();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let produced = producer.join().expect("producer thread");
    let messages = broker.read_all(TOPIC, PARTITIONS);
    assert_eq!(
        messages.len() as u64,
        produced,
        "the topic holds every message once"
    );
    let (per_key, per_partition) = expected(&messages);

    let client = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rows_sorted(&client, "SELECT * FROM per_partition").await;
        if got.as_ref().ok() == Some(&per_partition) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "per_partition never reached the topic's contents: {got:?} vs {per_partition:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = rows_sorted(&client, "SELECT * FROM per_key")
        .await
        .expect("per_key");
    assert_eq!(got, per_key, "per_key equals its query over the topic");
}
