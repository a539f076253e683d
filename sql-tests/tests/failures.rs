//! Pipeline failures: a fault injected with `FAILPOINTS` (the `fail`
//! crate's points, here `aggregate-barrier`: an aggregate errs at a
//! barrier after changes) fails a view, as a bug or a bad state would.
//!
//! A view over tables restarts from its checkpoint under its restart
//! strategy, the table changes its checkpoint lacks replayed to it from
//! the log, which keeps them while the failure lasts — across a `kill -9`
//! too. A view read by a view cannot restart exactly (the reader took in
//! part of the failed epoch): both fail, for good, and stay failed across
//! restarts, until dropped.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use eddy_sql_tests::{EddyServer, rows_sorted};

/// A random generator seeded from `FAILURES_SEED` (or at random), said on
/// stderr so a failing run can be repeated.
fn seeded_rng() -> SmallRng {
    let seed: u64 = std::env::var("FAILURES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("FAILURES_SEED={seed}");
    SmallRng::seed_from_u64(seed)
}

/// Random inserts, updates and deletes on `a (k, v)` and `b (k, w)` for
/// `duration`, or until the server goes away.
async fn change_tables(server: &EddyServer, rng: &mut SmallRng, duration: Duration) {
    let client = server.client().await;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let k = rng.random_range(0..20);
        let v = rng.random_range(0..100);
        let sql = match rng.random_range(0..10) {
            0..4 => format!("INSERT INTO a VALUES ({k}, {v}), ({}, {v})", (k + 7) % 20),
            4..6 => format!("INSERT INTO b VALUES ({k}, {v})"),
            6 => format!("UPDATE a SET v = v + 1 WHERE k = {k}"),
            7 => format!("DELETE FROM a WHERE k = {k} AND v < {v}"),
            8 => format!("UPDATE b SET w = {v} WHERE k = {k}"),
            _ => format!("DELETE FROM b WHERE k = {k}"),
        };
        if client.simple_query(&sql).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
    }
}

/// Waits (up to a minute) until `sql`'s rows are as `want` says.
async fn wait_until(client: &tokio_postgres::Client, sql: &str, want: impl Fn(&[String]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rows_sorted(client, sql).await.expect(sql);
        if want(&got) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} never came true: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changes the tables until `sql`'s rows are as `want` says (up to a minute).
async fn change_until(
    server: &EddyServer,
    rng: &mut SmallRng,
    sql: &str,
    want: impl Fn(&[String]) -> bool,
) {
    let client = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rows_sorted(&client, sql).await.expect(sql);
        if want(&got) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} never came true: {got:?}");
        change_tables(server, rng, Duration::from_millis(200)).await;
    }
}

const VIEWS: &[(&str, &str)] = &[
    (
        "per_k",
        "SELECT k, count(*) AS n, sum(v) AS s, max(v) AS hi FROM a GROUP BY k",
    ),
    (
        "joined",
        "SELECT a.k, count(*) AS n, sum(b.w) AS s FROM a JOIN b ON a.k = b.k GROUP BY a.k",
    ),
    ("high", "SELECT k, v FROM a WHERE v > 80"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_tables_restart_exactly_after_failures() {
    let mut rng = seeded_rng();
    // Failures after a few epochs with changes (a failed pipeline runs
    // on until restarted, so some strike it again, to no effect).
    let env = [(
        "FAILPOINTS",
        "aggregate-barrier=12*off->1*return->40*off->1*return->40*off->1*return->40*off->1*return->off",
    )];
    let mut server = EddyServer::start_with_env("failures_restart", &env);
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE a (k BIGINT, v BIGINT);
             CREATE TABLE b (k BIGINT, w BIGINT);
             SET restart_strategy = 'fixed-delay(attempts = 10, delay = 3s)';",
        )
        .await
        .expect("setup");
    for (name, query) in VIEWS {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .await
            .expect("create view");
    }
    let restarts = "SELECT sum(restarts) FROM eddy_catalog.jobs";
    let restarting = "SELECT job FROM eddy_catalog.jobs WHERE state = 'restarting'";

    // The first failure: the view restarts while the tables change.
    change_until(&server, &mut rng, restarts, |r| r != ["0"]).await;
    // The second: killed while it waits to restart, with changes since.
    loop {
        change_until(&server, &mut rng, restarting, |r| !r.is_empty()).await;
        change_tables(&server, &mut rng, Duration::from_millis(600)).await;
        if !rows_sorted(&client, restarting)
            .await
            .expect("jobs")
            .is_empty()
        {
            break;
        }
    }
    drop(client);
    server.kill9();
    assert!(
        log_kept_for_restarts(&server.data_dir) > 0,
        "the log keeps what the failed view's checkpoint lacks"
    );
    server.set_env(&[]);
    server.restart_after_kill9();

    // Back from its checkpoint, with what the tables got since.
    change_tables(&server, &mut rng, Duration::from_secs(1)).await;
    let client = server.client().await;
    wait_until(
        &client,
        "SELECT state FROM eddy_catalog.jobs",
        |states: &[String]| states.iter().all(|s| s == "running"),
    )
    .await;
    for (name, query) in VIEWS {
        let want = rows_sorted(&client, query).await.expect("batch query");
        assert!(!want.is_empty(), "{name} has rows");
        let sql = format!("SELECT * FROM {name}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = rows_sorted(&client, &sql).await.expect("view");
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} differs from its query:\n view: {got:?}\nquery: {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_view_fails_its_readers_for_good() {
    let mut rng = seeded_rng();
    let env = [("FAILPOINTS", "aggregate-barrier=3*off->1*return->off")];
    let mut server = EddyServer::start_with_env("failures_readers", &env);
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE a (k BIGINT, v BIGINT);
             CREATE TABLE b (k BIGINT, w BIGINT);
             CREATE MATERIALIZED VIEW per_k AS SELECT k, count(*) AS n FROM a GROUP BY k;
             CREATE MATERIALIZED VIEW busy AS SELECT k FROM per_k WHERE n > 1;
             CREATE MATERIALIZED VIEW high AS SELECT k, v FROM a WHERE v > 80;",
        )
        .await
        .expect("setup");
    let failed = "SELECT job FROM eddy_catalog.jobs WHERE state = 'failed'";
    change_until(&server, &mut rng, failed, |r| r == ["busy", "per_k"]).await;
    let errors = "SELECT job, last_error FROM eddy_catalog.jobs WHERE state = 'failed'";
    let want = [
        "busy|its input per_k failed (not restarted: it reads view per_k; drop it and create it again)",
        "per_k|internal error (this is a bug in Eddy): injected by fail point aggregate-barrier (not restarted: views read it; drop it and create it again)",
    ];
    // Its state shows at once; why it is not restarted, once the
    // supervisor has looked.
    wait_until(&client, errors, |got| got == want).await;
    let message = eddy_sql_tests::error_message(&client, "SELECT * FROM busy").await;
    assert!(message.contains("its input per_k failed"), "{message}");

    // Still failed after a restart, saying why, until dropped; the view
    // beside them kept going.
    drop(client);
    server.restart_after_kill9();
    let client = server.client().await;
    let errors = rows_sorted(&client, errors).await.expect("jobs");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[1].starts_with("per_k|it could not be restored: it had failed: internal error"),
        "{errors:?}"
    );
    let high = rows_sorted(&client, "SELECT * FROM high")
        .await
        .expect("high");
    let want = rows_sorted(&client, "SELECT k, v FROM a WHERE v > 80")
        .await
        .expect("batch");
    assert_eq!(high, want);
    client
        .batch_execute("DROP MATERIALIZED VIEW busy, per_k")
        .await
        .expect("drop");
    assert_eq!(
        rows_sorted(&client, "SELECT job, state FROM eddy_catalog.jobs")
            .await
            .expect("jobs"),
        ["high|running"]
    );
}

/// Table changes a stopped server's log holds at or before its last
/// checkpoint's position: kept for a failed pipeline's restart only.
fn log_kept_for_restarts(data_dir: &std::path::Path) -> usize {
    let store = eddy_storage::Store::open(data_dir).expect("open the store");
    let checkpointed = store.meta().expect("meta").log_position;
    let all = store.logged_after(0).expect("log").len();
    all - store.logged_after(checkpointed).expect("log").len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_the_strategy_gives_up_on_is_final() {
    let mut rng = seeded_rng();
    let env = [("FAILPOINTS", "aggregate-barrier=3*off->1*return->off")];
    let mut server = EddyServer::start_with_env("failures_given_up", &env);
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE a (k BIGINT, v BIGINT);
             CREATE TABLE b (k BIGINT, w BIGINT);
             CREATE MATERIALIZED VIEW per_k WITH (restart_strategy = 'none')
               AS SELECT k, count(*) AS n FROM a GROUP BY k;",
        )
        .await
        .expect("setup");
    let failed = "SELECT job, last_error FROM eddy_catalog.jobs WHERE state = 'failed'";
    change_until(&server, &mut rng, failed, |r| r.len() == 1).await;
    let want = [
        "per_k|internal error (this is a bug in Eddy): injected by fail point aggregate-barrier (restart strategy none gave up)",
    ];
    wait_until(&client, failed, |got| got == want).await;
    // The log is not kept for it: it goes as checkpoints pass.
    change_tables(&server, &mut rng, Duration::from_millis(500)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    server.kill9();
    assert_eq!(log_kept_for_restarts(&server.data_dir), 0);
    server.restart_after_kill9();
    let client = server.client().await;
    assert_eq!(
        rows_sorted(&client, failed).await.expect("jobs"),
        [
            "per_k|it could not be restored: it had failed: internal error (this is a bug in Eddy): injected by fail point aggregate-barrier (not restarted: restart strategy none gave up); drop it and create it again"
        ]
    );
}
