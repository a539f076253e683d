//! The incremental-maintenance oracle: random DML over several tables;
//! after every step each materialized view must equal its defining query
//! run as a batch query over the same tables.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_dml_matches_batch_queries() {
    let seed: u64 = std::env::var("ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let steps: usize = std::env::var("ORACLE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        .to_string();
    let views: Vec<(&str, String)> = VIEWS
        .iter()
        .map(|(name, query)| (*name, query.replace("{base}", &base)))
        .collect();
    let server = EddyServer::start("oracle");
    let client = server.client().await;
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
    for step in 0..steps {
        let stmt = random_statement(&mut rng);
        // `ON CONFLICT DO NOTHING` is not supported: drop it and accept a duplicate-key error.
        let stmt = stmt.replace(" ON CONFLICT DO NOTHING", "");
        if let Err(e) = client.batch_execute(&stmt).await {
            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
            assert_eq!(code, "23505", "step {step}: {stmt}: {e}");
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
                "seed {seed} step {step} after `{stmt}`: view {name} differs from its query"
            );
        }
    }
}
