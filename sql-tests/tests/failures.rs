//! Pipeline failures: a fault injected with `FAILPOINTS` (the `fail`
//! crate's points, here `aggregate-barrier`: an aggregate errs at a
//! barrier after changes) fails a view, as a bug or a bad state would.
//!
//! A view over tables restarts from its checkpoint under its restart
//! strategy, the table changes its checkpoint lacks replayed to it from
//! the log, which keeps them while the failure lasts — across a `kill -9`
//! too. The views reading a failed view fail with it and restart with it.
//! A failure the strategy gives up on is final, across restarts too.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::SmallRng;

use eddy_sql_tests::{EddyServer, retry_until, rows_sorted, seeded_rng};

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

/// Whether `sql`'s rows are as `want` says; if not, what they are.
async fn rows_are(
    client: &tokio_postgres::Client,
    sql: &str,
    want: &impl Fn(&[String]) -> bool,
) -> Result<(), String> {
    let got = rows_sorted(client, sql).await.expect(sql);
    match want(&got) {
        true => Ok(()),
        false => Err(format!("{sql} never came true: {got:?}")),
    }
}

/// Waits (up to a minute) until `sql`'s rows are as `want` says.
async fn wait_until(client: &tokio_postgres::Client, sql: &str, want: impl Fn(&[String]) -> bool) {
    retry_until(
        Duration::from_secs(60),
        async || rows_are(client, sql, &want).await,
        async || tokio::time::sleep(Duration::from_millis(50)).await,
    )
    .await;
}

/// Changes the tables until `sql`'s rows are as `want` says (up to a minute).
async fn change_until(
    server: &EddyServer,
    rng: &mut SmallRng,
    sql: &str,
    want: impl Fn(&[String]) -> bool,
) {
    let client = server.client().await;
    retry_until(
        Duration::from_secs(60),
        async || rows_are(&client, sql, &want).await,
        async || change_tables(server, rng, Duration::from_millis(200)).await,
    )
    .await;
}

/// A server whose aggregates fail as `failpoints` says (the `fail`
/// crate's actions for `aggregate-barrier`), and a client of it, after
/// `setup` ran.
async fn start_failing(
    name: &str,
    failpoints: &str,
    setup: &str,
) -> (EddyServer, tokio_postgres::Client) {
    let failpoints = format!("aggregate-barrier={failpoints}");
    let server = EddyServer::start_with_env(name, &[("FAILPOINTS", &failpoints)]);
    let client = server.client().await;
    client.batch_execute(setup).await.expect("setup");
    (server, client)
}

/// Creates `views`, in order.
async fn create_views(client: &tokio_postgres::Client, views: &[(&str, &str)]) {
    for (name, query) in views {
        client
            .batch_execute(&format!("CREATE MATERIALIZED VIEW {name} AS {query}"))
            .await
            .expect("create view");
    }
}

/// A failing server (see [`start_failing`]) with tables `a (k, v)` and
/// `b (k, w)`, the server's restart strategy `strategy`, and `views`.
async fn start(
    name: &str,
    failpoints: &str,
    strategy: &str,
    views: &[(&str, &str)],
) -> (EddyServer, tokio_postgres::Client) {
    let setup = format!(
        "CREATE TABLE a (k BIGINT, v BIGINT);
         CREATE TABLE b (k BIGINT, w BIGINT);
         SET restart_strategy = '{strategy}';"
    );
    let (server, client) = start_failing(name, failpoints, &setup).await;
    create_views(&client, views).await;
    (server, client)
}

/// Waits until each of `views` equals its query run as a batch query.
/// Both are read again each time: the last change a statement made may
/// not have been committed when the first query ran.
async fn wait_for_views(client: &tokio_postgres::Client, views: &[(&str, &str)]) {
    for (name, query) in views {
        let sql = format!("SELECT * FROM {name}");
        let matches = async || {
            let want = rows_sorted(client, query).await.expect("batch query");
            assert!(!want.is_empty(), "{name} has rows");
            let got = rows_sorted(client, &sql).await.expect("view");
            match got == want {
                true => Ok(()),
                false => Err(format!(
                    "{name} differs from its query:\n view: {got:?}\nquery: {want:?}"
                )),
            }
        };
        let pause = async || tokio::time::sleep(Duration::from_millis(100)).await;
        retry_until(Duration::from_secs(30), matches, pause).await;
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
    let mut rng = seeded_rng("FAILURES_SEED");
    // Failures after a few epochs with changes.
    let failpoints = "12*off->1*return->40*off->1*return->40*off->1*return->40*off->1*return->off";
    let strategy = "fixed-delay(attempts = 10, delay = 3s)";
    let (mut server, client) = start("failures_restart", failpoints, strategy, VIEWS).await;
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
    wait_for_views(&client, VIEWS).await;
}

const LAYERED: &[(&str, &str)] = &[
    (
        "per_k",
        "SELECT k, count(*) AS n, sum(v) AS s FROM a GROUP BY k",
    ),
    ("busy", "SELECT k, n FROM per_k WHERE n > 1"),
    (
        "with_b",
        "SELECT p.k, p.s, b.w FROM per_k p JOIN b ON p.k = b.k",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_view_restarts_with_its_readers() {
    // The views reading per_k fail with it, saying why, and restart with it.
    let group = Group {
        name: "failures_readers",
        views: LAYERED,
        waiting: &[
            "busy|restarting|its input per_k failed",
            "per_k|restarting|internal error (this is a bug in Eddy): injected by fail point aggregate-barrier",
            "with_b|restarting|its input per_k failed",
        ],
        restarted: [
            &["busy|1", "per_k|1", "with_b|1"],
            &["busy|2", "per_k|2", "with_b|2"],
        ],
    };
    group.fail_twice_with_a_kill(|_| async {}).await;
}

const ON_A_VIEW: &[(&str, &str)] = &[
    ("big_a", "SELECT k, v FROM a WHERE v > 10"),
    (
        "per_k",
        "SELECT k, count(*) AS n, sum(v) AS s FROM big_a GROUP BY k",
    ),
    (
        "per_k_b",
        "SELECT p.k, p.n, b.w FROM per_k p JOIN b ON p.k = b.k",
    ),
    (
        "beside",
        "SELECT x.k, x.v, b.w FROM big_a x JOIN b ON x.k = b.k",
    ),
];

/// A view reading a view that does not fail with it (`big_a` has no
/// aggregate, so only `per_k` fails): it restarts from its checkpoint,
/// replayed what `big_a` changed since, with the view reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reading_a_running_view_restarts_exactly() {
    let group = Group {
        name: "failures_on_view",
        views: ON_A_VIEW,
        waiting: &[
            "beside|running|NULL",
            "big_a|running|NULL",
            "per_k_b|restarting|its input per_k failed",
            "per_k|restarting|internal error (this is a bug in Eddy): injected by fail point aggregate-barrier",
        ],
        restarted: [
            &["beside|0", "big_a|0", "per_k_b|1", "per_k|1"],
            &["beside|0", "big_a|0", "per_k_b|2", "per_k|2"],
        ],
    };
    // Each update, in an epoch of its own, supersedes all of `big_a`'s
    // stored rows: soon a base part of its rows is due, and only the hold
    // postpones it.
    group
        .fail_twice_with_a_kill(|client| async move {
            for _ in 0..25 {
                client
                    .batch_execute("UPDATE a SET v = v + 1")
                    .await
                    .expect("update");
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        })
        .await;
}

/// Views of which some fail together, twice.
struct Group {
    name: &'static str,
    views: &'static [(&'static str, &'static str)],
    /// Every job's `job|state|last_error` while the group waits to restart.
    waiting: &'static [&'static str],
    /// Every job's `job|restarts` after the first restart and the second.
    restarted: [&'static [&'static str]; 2],
}

impl Group {
    /// The group fails (under random table changes) and restarts, and the
    /// views equal their batch queries. It fails again; while it waits to
    /// restart, `meanwhile` runs, and the server is killed. Recovered
    /// failed, the group restarts (its restarts and why it failed were
    /// kept), and the views equal their batch queries again.
    async fn fail_twice_with_a_kill<F: std::future::Future<Output = ()>>(
        &self,
        meanwhile: impl FnOnce(tokio_postgres::Client) -> F,
    ) {
        let mut rng = seeded_rng("FAILURES_SEED");
        let failpoints = "6*off->1*return->30*off->1*return->off";
        let strategy = "fixed-delay(attempts = 10, delay = 5s)";
        let (mut server, client) = start(self.name, failpoints, strategy, self.views).await;
        let states = "SELECT job, state, last_error FROM eddy_catalog.jobs";
        change_until(&server, &mut rng, states, |got| got == self.waiting).await;
        let restarts = "SELECT job, restarts FROM eddy_catalog.jobs";
        let restarted = |n: usize| move |got: &[String]| got == self.restarted[n];
        change_until(&server, &mut rng, restarts, restarted(0)).await;
        wait_for_views(&client, self.views).await;

        let restarting = "SELECT job FROM eddy_catalog.jobs WHERE state = 'restarting'";
        let members = self.restarted[0]
            .iter()
            .filter(|j| !j.ends_with("|0"))
            .count();
        change_until(&server, &mut rng, restarting, |got| got.len() == members).await;
        meanwhile(client).await;
        change_tables(&server, &mut rng, Duration::from_millis(300)).await;
        server.set_env(&[]);
        server.restart_after_kill9();
        let client = server.client().await;
        let errors = "SELECT job, state <> 'running', last_error FROM eddy_catalog.jobs";
        let recovered = rows_sorted(&client, errors).await.expect("jobs");
        let remembered: Vec<String> = self
            .waiting
            .iter()
            .map(|j| match j.split_once('|') {
                Some((job, rest)) => {
                    let (state, error) = rest.split_once('|').unwrap_or((rest, ""));
                    let failed = if state == "running" { "f" } else { "t" };
                    format!("{job}|{failed}|{error}")
                }
                None => j.to_string(),
            })
            .collect();
        assert_eq!(recovered, remembered, "recovered failed, remembering why");
        change_tables(&server, &mut rng, Duration::from_millis(800)).await;
        wait_until(&client, restarts, restarted(1)).await;
        wait_until(
            &client,
            "SELECT DISTINCT state FROM eddy_catalog.jobs",
            |got| got == ["running"],
        )
        .await;
        wait_for_views(&client, self.views).await;
    }
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
    let mut rng = seeded_rng("FAILURES_SEED");
    let views = [("per_k", "SELECT k, count(*) AS n FROM a GROUP BY k")];
    let failpoints = "3*off->1*return->off";
    let (mut server, client) = start("failures_given_up", failpoints, "none", &views).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_view_stops_reading_its_source() {
    let (_server, client) = start_failing(
        "failures_stop",
        "2*off->1*return->off",
        "CREATE SOURCE ticks (id BIGINT) WITH (connector = 'datagen',
           fields.id.kind = 'sequence', datagen.rows.per.second = '2000');
         CREATE MATERIALIZED VIEW per_k WITH (restart_strategy = 'none') AS
           SELECT id % 10 AS k, count(*) AS n FROM ticks GROUP BY id % 10;
         CREATE MATERIALIZED VIEW all_ticks AS SELECT id FROM ticks;",
    )
    .await;
    let failed = "SELECT job FROM eddy_catalog.jobs WHERE state = 'failed'";
    wait_until(&client, failed, |got| got == ["per_k"]).await;
    let read = |relation: &str| {
        format!(
            "SELECT sum(rows_read) FROM eddy_catalog.source_readers WHERE relation = '{relation}'"
        )
    };
    let before = rows_sorted(&client, &read("per_k")).await.expect("readers");
    let beside = rows_sorted(&client, &read("all_ticks"))
        .await
        .expect("readers");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        rows_sorted(&client, &read("per_k")).await.expect("readers"),
        before,
        "a view failed for good reads its source no more"
    );
    assert_ne!(
        rows_sorted(&client, &read("all_ticks"))
            .await
            .expect("readers"),
        beside,
        "the view beside it goes on"
    );
}

/// Windows of a failed view's windows: the view restarts from its
/// checkpoint, behind the watermark it had passed on, and emits again
/// what its readers need. The reader restarts with it, and is not told
/// the old watermark first (its rows would be late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_view_restarts_behind_the_watermark_it_passed_on() {
    let views = [
        (
            "per_window",
            "SELECT k, window_start, count(*) AS n
             FROM TUMBLE(events, ts, INTERVAL '10' SECOND) GROUP BY k, window_start",
        ),
        (
            "leaders",
            "SELECT window_start, k, n FROM (
               SELECT window_start, k, n,
                      ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY n DESC, k) AS rn
               FROM per_window) t WHERE rn <= 1",
        ),
    ];
    let (name, query) = views[0];
    let (_server, client) = start_failing(
        "failures_watermarks",
        "8*off->1*return->off",
        &format!(
            "SET restart_strategy = 'fixed-delay(attempts = 3, delay = 300ms)';
             CREATE SOURCE events (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
               WITH (connector = 'datagen', datagen.rows.total = '12000', datagen.rows.per.second = '4000',
                     fields.k.kind = 'random', fields.k.min = '0', fields.k.max = '4', fields.k.seed = '7',
                     fields.ts.kind = 'sequence', fields.ts.start = '2026-01-01 00:00:00',
                     fields.ts.step = '1 second');
             CREATE MATERIALIZED VIEW {name} AS {query} EMIT ON WINDOW CLOSE;"
        ),
    )
    .await;
    create_views(&client, &views[1..]).await;
    let jobs = ["leaders|running|1", "per_window|running|1"];
    wait_until_read_after_restarts(&client, &jobs, &views).await;
    let late = "SELECT relation, late_rows FROM eddy_catalog.watermarks WHERE relation = 'leaders'";
    let late = rows_sorted(&client, late).await.expect("watermarks");
    assert!(late.iter().all(|r| r.ends_with("|0")), "{late:?}");
}

/// A view reading an append-only view that goes on reading its source
/// while the reader waits to restart: the reader is replayed the rows
/// appended since its checkpoint, and nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reading_an_appended_view_restarts_exactly() {
    let (_server, client) = start_failing(
        "failures_on_appended",
        "4*off->1*return->off",
        "SET restart_strategy = 'fixed-delay(attempts = 3, delay = 1s)';
         CREATE SOURCE ticks (id BIGINT) WITH (connector = 'datagen',
           fields.id.kind = 'sequence', datagen.rows.total = '6000',
           datagen.rows.per.second = '2000');",
    )
    .await;
    let views = [
        ("ticks_k", "SELECT id, id % 7 AS k FROM ticks"),
        (
            "per_k",
            "SELECT k, count(*) AS n, sum(id) AS s FROM ticks_k GROUP BY k",
        ),
    ];
    create_views(&client, &views).await;
    let jobs = ["per_k|running|1", "ticks_k|running|0"];
    wait_until_read_after_restarts(&client, &jobs, &views).await;
}

/// 8,000 rows of jittered event time (many late), counted per window by
/// `per_window`, which keeps its late rows in `per_window_late` and has
/// `options` besides.
fn late_rows_setup(options: &str) -> String {
    format!(
        "CREATE SOURCE jitter (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'datagen', datagen.rows.total = '8000', datagen.rows.per.second = '4000',
                 fields.id.kind = 'sequence', fields.ts.kind = 'random',
                 fields.ts.start = '2026-01-01 00:01:00', fields.ts.max_past = '60 seconds');
         CREATE MATERIALIZED VIEW per_window WITH (late_rows = 'per_window_late', {options}) AS
           SELECT window_start, count(*) AS n FROM TUMBLE(jitter, ts, INTERVAL '5' SECOND)
           GROUP BY window_start EMIT ON WINDOW CLOSE;"
    )
}

/// A view keeping late rows fails and restarts from its checkpoint: a
/// view reading its late rows fails and restarts with it (it would miss
/// the epochs the failed view no longer ends), and both end exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_reading_late_rows_restarts_with_their_view() {
    let (_server, client) = start_failing(
        "failures_late_rows",
        "4*off->1*return->off",
        &late_rows_setup("restart_strategy = 'fixed-delay(attempts = 3, delay = 300ms)'"),
    )
    .await;
    // No aggregate: the fail point fails the view keeping late rows.
    let views = [(
        "late_kept",
        "SELECT data, dropped_at FROM per_window_late WHERE op = 'insert'",
    )];
    create_views(&client, &views).await;
    let jobs = ["late_kept|running|1", "per_window|running|1"];
    wait_until_read_after_restarts(&client, &jobs, &views).await;
    let total = "SELECT (SELECT sum(n) FROM per_window) + (SELECT count(*) FROM late_kept)";
    wait_until(&client, total, |got| got == ["8000"]).await;
}

/// A view keeping late rows fails for good: its late rows stay readable,
/// and a view over them is refused (nothing would end its epochs), while
/// everything else goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_views_late_rows_are_not_read_by_new_views() {
    let (_server, client) = start_failing(
        "failures_late_rows_given_up",
        "3*off->1*return->off",
        &late_rows_setup("restart_strategy = 'none'"),
    )
    .await;
    let jobs = "SELECT job, state FROM eddy_catalog.jobs";
    wait_until(&client, jobs, |got| got == ["per_window|failed"]).await;
    let create = client
        .batch_execute("CREATE MATERIALIZED VIEW over_late AS SELECT data FROM per_window_late");
    let refused = tokio::time::timeout(Duration::from_secs(30), create)
        .await
        .expect("answered, not left waiting for epochs")
        .expect_err("a view over a failed view's late rows");
    let db = refused.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(db.message().contains("late rows failed"), "{db:?}");
    rows_sorted(&client, "SELECT count(*) FROM per_window_late")
        .await
        .expect("the kept rows stay readable");
    client
        .batch_execute("CREATE TABLE t (k INT); INSERT INTO t VALUES (1); FLUSH")
        .await
        .expect("epochs go on");
}

/// Waits until every job is as `jobs` says (`job|state|restarts`), the
/// sources were read to their end, and `views` equal their batch queries.
async fn wait_until_read_after_restarts(
    client: &tokio_postgres::Client,
    jobs: &[&str],
    views: &[(&str, &str)],
) {
    let restarts = "SELECT job, state, restarts FROM eddy_catalog.jobs";
    wait_until(client, restarts, |got| got == jobs).await;
    crate::nexmark::wait_for_sources(client).await;
    wait_for_views(client, views).await;
}
