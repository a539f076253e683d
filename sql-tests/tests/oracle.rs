//! The incremental-maintenance oracle: random DML over several tables;
//! after every step each materialized view must equal its defining query
//! run as a batch query over the same tables.
//!
//! It runs twice: with the `memory` state backend, and with the `rocksdb`
//! one at a cache of 0 MiB (so every checkpoint evicts, and nearly every
//! change reads its state back from the store) with the server killed
//! (`kill -9`) and restarted at random steps, so recovery and read-back
//! are checked against the same batch queries.

use eddy_sql_tests::{EddyServer, rows_sorted};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// (view name, defining query). Later views may read earlier ones.
const VIEWS: &[(&str, &str)] = &[
    (
        "agg",
        "SELECT k, count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi, count(DISTINCT v) AS dv, avg(v) AS av FROM a GROUP BY k",
    ),
    (
        "glob",
        "SELECT count(*) AS n, sum(v) AS s, max(v) AS hi FROM a",
    ),
    (
        "inner_j",
        "SELECT a.id AS aid, b.id AS bid, a.v, b.w FROM a JOIN b ON a.k = b.k",
    ),
    (
        "left_j",
        "SELECT a.id AS aid, b.id AS bid FROM a LEFT JOIN b ON a.k = b.k AND a.v < b.w",
    ),
    (
        "full_j",
        "SELECT a.id AS aid, b.id AS bid FROM a FULL JOIN b ON a.k = b.k",
    ),
    (
        "right_j",
        "SELECT a.v, b.id AS bid, b.w FROM a RIGHT JOIN b ON a.v = b.w",
    ),
    (
        "semi",
        "SELECT id, k FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.k = a.k)",
    ),
    (
        "anti",
        "SELECT id FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.k = a.k AND b.w > 5)",
    ),
    (
        "uni",
        "SELECT DISTINCT k FROM (SELECT k FROM a UNION ALL SELECT k FROM c) t",
    ),
    (
        "bag",
        "SELECT k, count(*) AS n, string_agg(x, ',' ORDER BY x) AS xs FROM c GROUP BY k HAVING count(*) > 1",
    ),
    (
        "three",
        "SELECT a.k, count(*) AS n, sum(c2.x_len) AS xl FROM a JOIN b ON a.k = b.k JOIN (SELECT k, length(x) AS x_len FROM c) c2 ON c2.k = b.k GROUP BY a.k",
    ),
    (
        "sess",
        "SELECT k, window_start, window_end, count(*) AS n, sum(v) AS s FROM SESSION(a, to_timestamp_seconds(v), INTERVAL '2' SECOND, k) GROUP BY k, window_start, window_end",
    ),
    ("on_mv", "SELECT k, n * 10 AS n10 FROM agg WHERE n > 1"),
    // A temporal filter: `v` hours after the test's start (`{base}`, in
    // seconds), kept from 2.5 hours ago to 5.5 hours ahead. The bounds lie
    // half an hour from any row, so the view and the batch query agree
    // for as long as the test runs.
    (
        "recent",
        "SELECT id, k, v FROM a WHERE to_timestamp_seconds({base} + v * 3600) > now() - INTERVAL '150 minutes' AND to_timestamp_seconds({base} + v * 3600) <= now() + INTERVAL '330 minutes'",
    ),
    (
        "on_mv2",
        "SELECT l.aid, g.n FROM left_j l JOIN glob g ON true",
    ),
    (
        "top2",
        "SELECT k, id, v FROM (SELECT k, id, v, row_number() OVER (PARTITION BY k ORDER BY v DESC NULLS LAST, id) AS rn FROM a) t WHERE rn <= 2",
    ),
    (
        "lead3",
        "SELECT id, v FROM a ORDER BY v DESC NULLS LAST, id LIMIT 3",
    ),
    (
        "running",
        "SELECT id, k, sum(v) OVER (PARTITION BY k ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS s2, lag(v) OVER (PARTITION BY k ORDER BY id) AS prev FROM a",
    ),
];

async fn exec(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn random_statement(rng: &mut SmallRng) -> String {
    let k = rng.random_range(0..5);
    let v = rng.random_range(-3..10);
    let id = rng.random_range(0..30);
    match rng.random_range(0..10) {
        0..=2 => format!("INSERT INTO a VALUES ({id}, {k}, {v}) ON CONFLICT DO NOTHING"),
        3 => format!(
            "UPDATE a SET v = v + {v}, k = {k} WHERE id % 7 = {}",
            id % 7
        ),
        4 => format!("DELETE FROM a WHERE id % 5 = {}", id % 5),
        5 => format!("INSERT INTO b VALUES ({id}, {k}, {v})"),
        6 => format!("UPDATE b SET w = {v} WHERE k = {k}"),
        7 => format!("DELETE FROM b WHERE id = {id}"),
        8 => format!("INSERT INTO c VALUES ({k}, 'x{v}'), ({k}, NULL)"),
        _ => format!("DELETE FROM c WHERE x = 'x{v}'"),
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_dml_matches_batch_queries() {
    let server = EddyServer::start("oracle");
    run_oracle(server, env_or("ORACLE_STEPS", 300), 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_dml_on_rocksdb_state_across_kill9() {
    let server = EddyServer::start_with(
        "oracle-rocksdb",
        &["--state-backend", "rocksdb", "--state-cache-mb", "0"],
    );
    run_oracle(server, env_or("ORACLE_STEPS", 150), 0.05).await;
}

/// Plays random DML on `server`, checking every view after each step;
/// kills and restarts the server after a statement with probability `kill`.
async fn run_oracle(mut server: EddyServer, steps: usize, kill: f64) {
    let seed: u64 = env_or("ORACLE_SEED", 42);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .to_string();
    let views: Vec<(&str, String)> = VIEWS
        .iter()
        .map(|(name, query)| (*name, query.replace("{base}", &base)))
        .collect();
    let mut client = server.client().await;
    exec(&client, "CREATE TABLE a (id BIGINT PRIMARY KEY, k INT, v INT); CREATE TABLE b (id BIGINT, k INT, w INT); CREATE TABLE c (k INT, x TEXT)").await;
    // Some views start before any data, some after (backfill).
    for (name, query) in &views[..6] {
        exec(
            &client,
            &format!("CREATE MATERIALIZED VIEW {name} AS {query}"),
        )
        .await;
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut kills = 0;
    for step in 0..steps {
        let stmt = random_statement(&mut rng);
        // `ON CONFLICT DO NOTHING` is not supported: drop it and accept a duplicate-key error.
        let stmt = stmt.replace(" ON CONFLICT DO NOTHING", "");
        if let Err(e) = client.batch_execute(&stmt).await {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            assert_eq!(code, "23505", "step {step}: {stmt}: {e}");
        }
        // Killed right after a statement: the views may not have taken
        // its change in yet, so recovery must replay it.
        if kill > 0.0 && rng.random_bool(kill) {
            server.restart_after_kill9();
            client = server.client().await;
            kills += 1;
        }
        if step == steps / 3 {
            for (name, query) in &views[6..] {
                exec(
                    &client,
                    &format!("CREATE MATERIALIZED VIEW {name} AS {query}"),
                )
                .await;
            }
        }
        exec(&client, "FLUSH").await;
        let live = if step >= steps / 3 { views.len() } else { 6 };
        for (name, query) in &views[..live] {
            let got = rows_sorted(&client, &format!("SELECT * FROM {name}"))
                .await
                .expect("read view");
            let want = rows_sorted(&client, query).await.expect("batch query");
            assert_eq!(
                got, want,
                "seed {seed} step {step} (after {kills} kills) after `{stmt}`: view {name} differs from its query"
            );
        }
    }
    assert!(
        kill == 0.0 || kills > 0,
        "seed {seed}: no kill in {steps} steps"
    );
}
