//! Kafka sources across crashes and broker outages: messages keep arriving
//! while `eddy` is killed with `kill -9` at random moments and the broker
//! goes away and comes back, and the source finds partitions it did not
//! know. At the end every view equals its query run
//! over the topic's messages, read back from the broker: nothing lost,
//! nothing counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

use eddy_sql_tests::kafka::{KafkaBroker, ReadMessage};
use eddy_sql_tests::{EddyServer, rows_sorted, seeded_rng};

const TOPIC: &str = "events";

/// Waits (up to a minute) until `sql` answers `want`: the views follow the
/// topic's messages asynchronously.
async fn wait_for_rows(client: &tokio_postgres::Client, sql: &str, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rows_sorted(client, sql).await;
        if got.as_deref().ok() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} never answered {want:?}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
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
fn expected(messages: &[ReadMessage]) -> (Vec<String>, Vec<String>) {
    let mut per_key: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    let mut per_partition: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for m in messages {
        let (partition, offset) = (&m.partition, &m.offset);
        let value: serde_json::Value =
            serde_json::from_slice(m.payload.as_deref().unwrap_or_default()).expect("JSON");
        let number = |field: &str| value[field].as_i64().expect("number");
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
    let mut rng = seeded_rng("KAFKA_SEED");
    let seed: u64 = rng.random();
    let broker = KafkaBroker::start();
    broker.create_topic(TOPIC, PARTITIONS);
    broker.create_topic("copied", 1);
    let mut server = EddyServer::start("kafka");
    let client = server.client().await;
    // The source starts knowing only partition 0 (its start offsets list
    // one partition), so it finds partitions 1 and 2 while the test runs,
    // as if the topic gained them: the mock broker cannot add partitions.
    client
        .batch_execute(&format!(
            "CREATE SOURCE events (k BIGINT, v BIGINT) INCLUDE partition AS p INCLUDE offset AS o
               WITH (connector = 'kafka', topic = '{TOPIC}',
                     properties.bootstrap.server = '{0}',
                     scan.startup.offsets = '0',
                     scan.partition.discovery.interval = '300ms') FORMAT PLAIN ENCODE JSON;
             CREATE MATERIALIZED VIEW per_key AS
               SELECT k, count(*) AS n, sum(v) AS total FROM events GROUP BY k;
             CREATE MATERIALIZED VIEW per_partition AS
               SELECT p, count(*) AS n, count(DISTINCT o) AS offsets, max(o) AS last
               FROM events GROUP BY p;
             CREATE SINK copied AS SELECT p, o FROM events
               WITH (connector = 'kafka', topic = 'copied', properties.bootstrap.server = '{0}');",
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
            // The broker goes away for a while, with eddy running: the
            // source says so.
            broker.set_up(false);
            let client = server.client().await;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let problems = rows_sorted(
                    &client,
                    "SELECT source FROM eddy_catalog.sources WHERE connection_problem IS NOT NULL",
                )
                .await
                .expect("sources");
                let jobs = rows_sorted(
                    &client,
                    "SELECT job FROM eddy_catalog.jobs WHERE connection_problem IS NOT NULL",
                )
                .await
                .expect("jobs");
                if problems == ["events"] && jobs == ["copied", "per_key", "per_partition"] {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the outage never showed: {problems:?} {jobs:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
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
    wait_for_rows(&client, "SELECT * FROM per_partition", &per_partition).await;
    let got = rows_sorted(&client, "SELECT * FROM per_key")
        .await
        .expect("per_key");
    assert_eq!(got, per_key, "per_key equals its query over the topic");
    // The sink copied every message once, across crashes and new partitions.
    let mut want: Vec<(i64, i64)> = messages
        .iter()
        .map(|m| (m.partition as i64, m.offset))
        .collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut copied: Vec<(i64, i64)> = broker
            .read_all("copied", 1)
            .iter()
            .map(|m| {
                let row: serde_json::Value =
                    serde_json::from_slice(m.payload.as_deref().unwrap_or_default()).expect("JSON");
                (row["p"].as_i64().expect("p"), row["o"].as_i64().expect("o"))
            })
            .collect();
        copied.sort();
        if copied.len() >= want.len() || Instant::now() > deadline {
            assert_eq!(copied, want, "the sink holds every message exactly once");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = rows_sorted(
        &client,
        "SELECT source, connector, splits, malformed_messages, connection_problem FROM eddy_catalog.sources",
    )
    .await
    .expect("sources");
    assert_eq!(status, ["events|kafka|3|0|NULL"], "the outage is over");
}

/// Applies Debezium events in order: each event's `before` must be the
/// key's current row (a duplicate or lost event breaks the chain). Returns
/// the rows at the end as `k|n|total`.
fn replay_changes(messages: &[ReadMessage]) -> Vec<String> {
    let mut rows: BTreeMap<i64, serde_json::Value> = BTreeMap::new();
    for m in messages {
        let event: serde_json::Value =
            serde_json::from_slice(m.payload.as_deref().expect("a value")).expect("JSON");
        let key = event["after"]["k"]
            .as_i64()
            .or(event["before"]["k"].as_i64())
            .expect("k");
        let current = rows.get(&key).cloned().unwrap_or(serde_json::Value::Null);
        assert_eq!(
            event["before"], current,
            "event {event} at {}:{} does not follow the key's last event",
            m.partition, m.offset
        );
        match &event["after"] {
            serde_json::Value::Null => rows.remove(&key),
            after => rows.insert(key, after.clone()),
        };
    }
    let mut out: Vec<String> = rows
        .values()
        .map(|r| format!("{}|{}|{}", r["k"], r["n"], r["total"]))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_deliver_exactly_once_across_kill9() {
    let mut rng = seeded_rng("KAFKA_SEED");
    let broker = KafkaBroker::start();
    broker.create_topic("appended", PARTITIONS);
    broker.create_topic("changes", PARTITIONS);
    let mut server = EddyServer::start("kafka-sinks");
    let client = server.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, k BIGINT, v BIGINT);
             CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n, sum(v) AS total FROM t GROUP BY k;
             CREATE SINK appended AS SELECT id, k FROM t
               WITH (connector = 'kafka', topic = 'appended', properties.bootstrap.server = '{0}');
             CREATE SINK changes FROM per_k
               WITH (connector = 'kafka', topic = 'changes', properties.bootstrap.server = '{0}',
                     type = 'debezium', primary_key = 'k');",
            broker.bootstrap()
        ))
        .await
        .expect("setup");
    let mut inserted = Vec::new();
    let mut next_id = 0i64;
    for round in 0..5 {
        let client = server.client().await;
        for _ in 0..40 {
            next_id += 1;
            let (k, v) = (rng.random_range(0..8), rng.random_range(0..100));
            client
                .batch_execute(&format!("INSERT INTO t VALUES ({next_id}, {k}, {v})"))
                .await
                .expect("insert");
            inserted.push(next_id);
        }
        // Changes the aggregate; the append-only sink, which does not
        // show v, sees an update cancel out.
        client
            .batch_execute(
                &format!("UPDATE per_k_input SET v = v + 1 WHERE id % 7 = {round}")
                    .replace("per_k_input", "t"),
            )
            .await
            .ok();
        drop(client);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        server.restart_after_kill9();
    }
    let client = server.client().await;
    client.batch_execute("FLUSH").await.expect("flush");
    let expected_changes = rows_sorted(&client, "SELECT k, n, total FROM per_k")
        .await
        .expect("per_k");
    // Delivery follows the commit: wait until Kafka holds the last epoch.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = broker.read_all("changes", PARTITIONS);
        let got = replay_changes(&messages);
        if got == expected_changes {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the changes topic never reached the view: {got:?} vs {expected_changes:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let ids = loop {
        let mut ids: Vec<i64> = broker
            .read_all("appended", PARTITIONS)
            .iter()
            .map(|m| {
                let row: serde_json::Value =
                    serde_json::from_slice(m.payload.as_deref().expect("a value")).expect("JSON");
                row["id"].as_i64().expect("id")
            })
            .collect();
        ids.sort();
        if ids.len() >= inserted.len() || Instant::now() > deadline {
            break ids;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let twice: Vec<&i64> = ids
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    let missing: Vec<&i64> = inserted
        .iter()
        .filter(|i| ids.binary_search(i).is_err())
        .collect();
    assert!(
        twice.is_empty() && missing.is_empty(),
        "every inserted row is in the topic exactly once: twice {twice:?}, missing {missing:?}"
    );
    assert_eq!(ids, inserted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_state_survives_kill9() {
    let mut rng = seeded_rng("KAFKA_SEED");
    let broker = KafkaBroker::start();
    broker.create_topic("upserts", 2);
    let mut server = EddyServer::start("kafka-upserts");
    let client = server.client().await;
    client
        .batch_execute(&format!(
            "CREATE SOURCE upserts (k BIGINT, v BIGINT)
               WITH (connector = 'kafka', topic = 'upserts', properties.bootstrap.server = '{}')
               FORMAT UPSERT ENCODE JSON;
             CREATE MATERIALIZED VIEW latest AS SELECT k, v FROM upserts;",
            broker.bootstrap()
        ))
        .await
        .expect("setup");
    drop(client);
    // Key -> its value after the last message (None: deleted).
    let mut expected: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    for _ in 0..4 {
        for _ in 0..150 {
            let k: i64 = rng.random_range(0..20);
            let key = k.to_string();
            if rng.random_range(0..10) == 0 {
                broker.produce("upserts", (k % 2) as i32, Some(&key), None);
                expected.insert(k, None);
            } else {
                let v: i64 = rng.random_range(0..1000);
                let payload = format!(r#"{{"k": {k}, "v": {v}}}"#);
                broker.produce(
                    "upserts",
                    (k % 2) as i32,
                    Some(&key),
                    Some(payload.as_bytes()),
                );
                expected.insert(k, Some(v));
            }
        }
        broker.flush();
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        server.restart_after_kill9();
    }
    let mut want: Vec<String> = expected
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}|{v}")))
        .collect();
    want.sort();
    let client = server.client().await;
    wait_for_rows(&client, "SELECT k, v FROM latest", &want).await;
}
