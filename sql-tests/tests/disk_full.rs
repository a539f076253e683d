//! A full disk: the data directory lives on a small tmpfs. A statement that
//! cannot be written fails with `disk_full` (53100) and loses nothing,
//! checkpoints fail while the server keeps running and keeps the last good
//! one, and once there is room again checkpoints resume and a `kill -9`
//! recovers every view exactly. A Kafka sink delivers no epoch that is not
//! durable: it waits while the disk is full, and ends exactly once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use eddy_sql_tests::kafka::KafkaBroker;
use eddy_sql_tests::{EddyServer, fresh_dir, retry_until, rows_sorted};
use tokio_postgres::Client;

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. `48m`), or `None` when this process
    /// may not mount (not root): the test cannot run there.
    fn mount(size: &str) -> Option<Self> {
        let dir = fresh_dir("disk_full");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        if status.success() {
            return Some(Self(dir));
        }
        let uid = Command::new("id").arg("-u").output().expect("run id");
        assert_ne!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "root could not mount a tmpfs"
        );
        None
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {size}");
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn one(client: &Client, sql: &str) -> String {
    rows_sorted(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .remove(0)
}

/// Polls `sql` until it returns `t`.
async fn wait_for(client: &Client, sql: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while one(client, sql).await != "t" {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids the sink delivered, in order.
fn delivered(broker: &KafkaBroker) -> Vec<u64> {
    broker
        .read_all("seq_out", 1)
        .iter()
        .map(|m| {
            let row: serde_json::Value =
                serde_json::from_slice(m.payload.as_deref().unwrap_or_default()).expect("JSON");
            row["id"].as_u64().expect("id")
        })
        .collect()
}

/// `seq_stats` holds an exact prefix 1..=n of the sequence: nothing lost,
/// nothing twice. Returns n. (`seq` has one split: splits interleave the
/// sequence, and two need not stand at the same row when an epoch ends.)
async fn sequence_prefix(client: &Client) -> u64 {
    let row = one(client, "SELECT n, total, top FROM seq_stats").await;
    let v: Vec<u64> = row.split('|').map(|f| f.parse().unwrap_or(0)).collect();
    let n = v[0];
    assert_eq!(v[1], n * (n + 1) / 2, "seq_stats is not a prefix: {row}");
    assert_eq!(v[2], n, "seq_stats is not a prefix: {row}");
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_writes_cleanly_and_recovers() {
    let Some(disk) = SmallDisk::mount("40m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let broker = KafkaBroker::start();
    broker.create_topic("seq_out", 1);
    let mut server = EddyServer::start_on(disk.path().join("data"));
    let client = server.client().await;
    client
        .batch_execute(&format!(
            "SET checkpoint_interval = '200ms';
             CREATE SOURCE seq (id BIGINT) WITH (connector = 'datagen',
               fields.id.kind = 'sequence', fields.id.start = '1', datagen.rows.per.second = '2000',
               datagen.split.num = '1');
             CREATE MATERIALIZED VIEW seq_stats AS SELECT count(*) AS n, sum(id) AS total, max(id) AS top FROM seq;
             CREATE TABLE blobs (id BIGINT PRIMARY KEY, pad TEXT);
             CREATE MATERIALIZED VIEW blob_stats AS SELECT count(*) AS n, sum(length(pad)) AS bytes FROM blobs;
             CREATE SINK seq_out AS SELECT id FROM seq
               WITH (connector = 'kafka', topic = 'seq_out', properties.bootstrap.server = '{}');",
            broker.bootstrap()
        ))
        .await
        .expect("setup");

    // Fill the disk with 1 MB rows until a statement cannot be written.
    let mut written = 0u64;
    let error = loop {
        assert!(written < 200, "a 40 MB disk took 200 MB of rows");
        let insert = format!("INSERT INTO blobs VALUES ({written}, repeat('x', 1000000))");
        match client.batch_execute(&insert).await {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    let db = error.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53100", "{db:?}");
    assert!(db.message().contains("No space left on device"), "{db:?}");

    // Checkpoints fail too, say why, and the server goes on from memory.
    wait_for(
        &client,
        "SELECT count(*) > 0 FROM eddy_catalog.checkpoints
         WHERE NOT durable AND error LIKE '%No space left on device%the store keeps checkpoint%'",
        "a failed checkpoint",
    )
    .await;
    let failed_epoch = one(
        &client,
        "SELECT max(epoch) FROM eddy_catalog.checkpoints WHERE error IS NOT NULL",
    )
    .await;
    client.batch_execute("FLUSH").await.expect("flush");
    assert_eq!(
        one(&client, "SELECT count(*) FROM blobs").await,
        written.to_string(),
        "the failed INSERT is not in the table, and every earlier one is"
    );
    assert_eq!(
        one(&client, "SELECT n, bytes FROM blob_stats").await,
        format!("{written}|{}", written * 1_000_000)
    );
    let n_full = sequence_prefix(&client).await;

    // The sink waits: what it has not delivered could be taken back by a
    // crash. Views go on from memory meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = delivered(&broker).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        delivered(&broker).len(),
        held,
        "the sink delivered while no checkpoint could be written"
    );
    assert!(sequence_prefix(&client).await > n_full, "the views stopped");

    // Room again: the kept batches land, checkpoints resume, writes work.
    disk.resize("400m");
    wait_for(
        &client,
        &format!(
            "SELECT count(*) > 0 FROM eddy_catalog.checkpoints
             WHERE durable AND error IS NULL AND epoch > {failed_epoch}"
        ),
        "a good checkpoint after the disk grew",
    )
    .await;
    client
        .batch_execute(&format!(
            "INSERT INTO blobs VALUES ({written}, 'small'); FLUSH;"
        ))
        .await
        .expect("insert after the disk grew");

    server.restart_after_kill9();
    let client = server.client().await;
    assert_eq!(
        one(&client, "SELECT count(*), max(id) FROM blobs").await,
        format!("{}|{written}", written + 1)
    );
    assert_eq!(
        one(&client, "SELECT n, bytes FROM blob_stats").await,
        one(&client, "SELECT count(*), sum(length(pad)) FROM blobs").await,
        "blob_stats equals its batch query after recovery"
    );
    // The source view came back at a checkpoint past the full-disk episode
    // and goes on from there, still an exact prefix of the sequence.
    let n_recovered = sequence_prefix(&client).await;
    assert!(n_recovered >= n_full, "{n_recovered} < {n_full}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while sequence_prefix(&client).await <= n_recovered {
        assert!(Instant::now() < deadline, "the source view stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every id the sink delivered, exactly once, in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = loop {
        let ids = delivered(&broker);
        if ids.len() as u64 > n_recovered {
            break ids;
        }
        assert!(Instant::now() < deadline, "the sink did not resume");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        ids.len() > held,
        "the sink delivered nothing after the disk grew"
    );
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let first_gap = sorted
        .iter()
        .zip(1..)
        .find(|(id, n)| **id != *n)
        .map(|(id, _)| *id);
    assert!(
        sorted.len() == ids.len() && first_gap.is_none(),
        "the sink delivered {} ids, {} distinct, first out of sequence {first_gap:?}; max {:?}",
        ids.len(),
        sorted.len(),
        sorted.last()
    );
    drop(client);
    server.kill9();
}

/// The bytes of unwritten checkpoints and whether epochs pause, as
/// `eddy_catalog.epochs` shows them.
async fn backlog(client: &Client) -> (u64, bool) {
    let row = one(
        client,
        "SELECT checkpoint_backlog_bytes, paused FROM eddy_catalog.epochs",
    )
    .await;
    let (bytes, paused) = row.split_once('|').expect("two columns");
    (bytes.parse().expect("bytes"), paused == "t")
}

/// The same bytes, as the metrics endpoint shows them.
fn backlog_metric(server: &EddyServer) -> Option<u64> {
    server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("eddy_checkpoint_backlog_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_pause_while_unwritten_checkpoints_exceed_the_backlog() {
    let Some(disk) = SmallDisk::mount("40m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let mut server = EddyServer::start_on_with(
        disk.path().join("data"),
        &["--max-checkpoint-backlog-mb", "1"],
    );
    let client = server.client().await;
    // `padded` changes by about 200 KB an epoch.
    client
        .batch_execute(
            "SET checkpoint_interval = '200ms';
             CREATE SOURCE seq (id BIGINT) WITH (connector = 'datagen',
               fields.id.kind = 'sequence', fields.id.start = '1', datagen.rows.per.second = '2000',
               datagen.split.num = '1');
             CREATE MATERIALIZED VIEW seq_stats AS SELECT count(*) AS n, sum(id) AS total, max(id) AS top FROM seq;
             CREATE MATERIALIZED VIEW padded AS SELECT id, repeat('x', 500) AS pad FROM seq;
             CREATE TABLE blobs (id BIGINT PRIMARY KEY, pad TEXT);",
        )
        .await
        .expect("setup");
    for i in 0.. {
        assert!(i < 200, "a 40 MB disk took 200 MB of rows");
        let insert = format!("INSERT INTO blobs VALUES ({i}, repeat('x', 1000000))");
        if client.batch_execute(&insert).await.is_err() {
            break;
        }
    }

    // Past 1 MiB of unwritten checkpoints, no epoch ends: the views stop
    // where they were, and the backlog stops growing (at the limit and
    // the batch that crossed it: that one holds the last blobs too).
    let mut paused = (0, (0, false));
    retry_until(
        Duration::from_secs(60),
        async || {
            let before = (sequence_prefix(&client).await, backlog(&client).await);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            paused = (sequence_prefix(&client).await, backlog(&client).await);
            if before == paused && paused.1.0 > 1 << 20 && paused.1.1 {
                Ok(())
            } else {
                Err(format!("epochs did not pause: {before:?}, then {paused:?}"))
            }
        },
        async || {},
    )
    .await;
    let n_paused = paused.0;
    assert_eq!(backlog_metric(&server), Some(paused.1.0), "the metric");
    assert_eq!(
        one(&client, "SELECT count(*) FROM padded").await,
        n_paused.to_string(),
        "the views stopped at the same epoch"
    );

    // Room again: the writer lands the backlog by itself, and epochs resume.
    disk.resize("400m");
    retry_until(
        Duration::from_secs(60),
        async || {
            let now = (sequence_prefix(&client).await, backlog(&client).await);
            if now.0 > n_paused && now.1 == (0, false) {
                Ok(())
            } else {
                Err(format!(
                    "epochs did not resume after the disk grew: {now:?}"
                ))
            }
        },
        async || tokio::time::sleep(Duration::from_millis(200)).await,
    )
    .await;
    client.batch_execute("FLUSH").await.expect("flush");

    server.restart_after_kill9();
    let client = server.client().await;
    let n = sequence_prefix(&client).await;
    assert!(n > n_paused, "recovered at {n}, before the pause ended");
    assert_eq!(
        one(&client, "SELECT count(*) FROM padded").await,
        n.to_string(),
        "the views recovered at the same epoch"
    );
    drop(client);
    server.kill9();
}
