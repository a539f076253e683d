//! Recovery time against state size, and what checkpoints write.
//!
//! For each size `n`: a real `eddy` process (`EDDY_BIN`, else the one built
//! next to this binary) gets a table of `n` rows and two views over it —
//! a grouped aggregate (`n / 4` groups, min/max multisets) and a join of
//! every row with its group — then is killed with `kill -9` and started
//! again on the same data directory. Printed: the operator state and view
//! rows recovered, the data directory's size, the bytes all checkpoints
//! wrote while loading, the time until the restarted server answers a
//! query on the join view, and that time per million state rows.
//! `--state-backend rocksdb` runs the server with that backend: the
//! aggregate's groups are then not read back at recovery (the join's state
//! and the views' rows still are).
//!
//! ```sh
//! cargo build --release --bin eddy --bin eddy-recovery
//! target/release/eddy-recovery --rows 250000,1000000,4000000 [--state-backend rocksdb]
//! ```

use std::path::Path;
use std::time::Instant;

use eddy_sql_tests::{EddyServer, rows_sorted};
use tokio_postgres::Client;

const BATCH: u64 = 250_000;

async fn one(client: &Client, sql: &str) -> String {
    rows_sorted(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .remove(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

async fn measure(n: u64, server_args: &[&str]) {
    let mut server = EddyServer::start_with("recovery_bench", server_args);
    let client = server.client().await;
    let groups = (n / 4).max(1);
    client
        .batch_execute(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, k BIGINT, v BIGINT);
             CREATE MATERIALIZED VIEW per_key AS
               SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi FROM t GROUP BY k;
             CREATE MATERIALIZED VIEW with_key AS
               SELECT t.id, t.v, p.n FROM t JOIN per_key p ON t.k = p.k;",
        )
        .await
        .expect("setup");
    let load = Instant::now();
    let mut start = 0;
    while start < n {
        let end = (start + BATCH).min(n);
        client
            .batch_execute(&format!(
                "INSERT INTO t SELECT value, value % {groups}, value * 7919 % 100003
                 FROM generate_series({start}, {}) ",
                end - 1
            ))
            .await
            .expect("insert");
        start = end;
    }
    client.batch_execute("FLUSH").await.expect("flush");
    let load = load.elapsed().as_secs_f64();
    let state = one(
        &client,
        "SELECT sum(state_rows) FROM eddy_catalog.operator_state",
    )
    .await;
    let checkpoint_mib = server
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix("eddy_checkpoint_bytes_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / (1 << 20) as f64;
    let view_rows = one(&client, "SELECT count(*) FROM with_key").await;
    drop(client);

    server.kill9();
    let dir_mib = dir_bytes(&server.data_dir) as f64 / (1 << 20) as f64;
    let began = Instant::now();
    server.restart_after_kill9();
    let client = server.client().await;
    let recovered = one(&client, "SELECT count(*) FROM with_key").await;
    let seconds = began.elapsed().as_secs_f64();
    assert_eq!(recovered, view_rows, "the join view came back whole");
    let state_rows: f64 = state.parse().unwrap_or(0.0);
    println!(
        "| {n:>10} | {state:>10} | {view_rows:>10} | {load:>7.1} | {dir_mib:>8.1} | {checkpoint_mib:>15.1} | {seconds:>10.2} | {:>8.2} |",
        seconds / (state_rows / 1e6).max(1e-9)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut sizes = vec![250_000u64, 1_000_000];
    let mut backend = String::from("memory");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--rows", Some(list)) => {
                sizes = list
                    .split(',')
                    .map(|s| s.trim().parse().expect("--rows takes numbers"))
                    .collect();
            }
            ("--state-backend", Some(name)) => backend = name,
            _ => {
                eprintln!("usage: eddy-recovery [--rows N,N,...] [--state-backend memory|rocksdb]");
                std::process::exit(2);
            }
        }
    }
    println!(
        "| table rows | state rows | view rows | load s | data MiB | checkpoints MiB | recovery s | s per M state rows |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        measure(n, &["--state-backend", &backend]).await;
    }
}
