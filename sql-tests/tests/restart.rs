//! Durability: `kill -9` between statements, restart on the same data
//! directory, and everything is as it was; maintenance continues.

use eddy_sql_tests::{EddyServer, error_message, rows_sorted};

const RELATIONS: &[&str] = &["orders", "plain", "revenue", "big", "joined"];

async fn everything(client: &tokio_postgres::Client) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for r in RELATIONS {
        out.push(
            rows_sorted(client, &format!("SELECT * FROM {r}"))
                .await
                .expect("read"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_and_restart_keeps_everything() {
    let mut server = EddyServer::start("restart");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT, amount DECIMAL(12,2), ts TIMESTAMP);
             CREATE TABLE plain (k INT, note TEXT);
             INSERT INTO orders VALUES (1,'ann',10.50,'2026-01-01 10:00:00'), (2,'bob',3,'2026-01-01 10:01:00'), (3,'ann',7.25,'2026-01-02 09:00:00');
             INSERT INTO plain VALUES (1,'x'), (1,'x'), (2,NULL);
             CREATE MATERIALIZED VIEW revenue WITH (restart_strategy = 'fixed-delay(attempts = 3, delay = 1s)') AS SELECT customer, count(*) AS n, sum(amount) AS total, min(amount) AS lo, max(amount) AS hi FROM orders GROUP BY customer;
             CREATE MATERIALIZED VIEW big AS SELECT customer, total FROM revenue WHERE total > 5;
             CREATE MATERIALIZED VIEW joined AS SELECT o.id, p.note FROM orders o LEFT JOIN plain p ON o.id = p.k;
             UPDATE orders SET amount = 1 WHERE id = 1; DELETE FROM orders WHERE id = 2; DELETE FROM plain WHERE note IS NULL;
             SET checkpoint_interval = '250ms';
             SET restart_strategy = 'failure-rate(max_failures = 5, interval = 10s, delay = 2s)';
             FLUSH;",
        )
        .await
        .expect("setup");
    let before = everything(&client).await;
    assert_eq!(before[2], vec!["ann|2|8.25|1.00|7.25"]);
    let metrics = server.metrics();
    let checkpoints: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("eddy_checkpoints_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no eddy_checkpoints_total in:\n{metrics}"));
    assert!(checkpoints > 0.0, "checkpoints are counted");
    assert!(
        metrics.contains("eddy_checkpoint_duration_seconds"),
        "{metrics}"
    );

    server.restart_after_kill9();
    let client = server.client().await;
    assert_eq!(
        rows_sorted(&client, "SHOW checkpoint_interval")
            .await
            .expect("show"),
        vec!["250ms"],
        "a system parameter outlives the process (and overrides the flag)"
    );
    assert_eq!(
        rows_sorted(&client, "SHOW restart_strategy")
            .await
            .expect("show"),
        vec!["failure-rate(max_failures = 5, interval = 10000ms, delay = 2000ms)"],
    );
    assert_eq!(
        rows_sorted(
            &client,
            "SELECT job, restart_strategy FROM eddy_catalog.jobs WHERE job IN ('revenue', 'big')"
        )
        .await
        .expect("jobs"),
        vec![
            "big|failure-rate(max_failures = 5, interval = 10000ms, delay = 2000ms)",
            "revenue|fixed-delay(attempts = 3, delay = 1000ms)"
        ],
        "a view's own restart strategy outlives the process"
    );
    assert_eq!(
        everything(&client).await,
        before,
        "state after kill -9 differs"
    );

    // Maintenance continues after the restart; the hidden row ids of a
    // table without a primary key continue too (no overwritten rows).
    client
        .batch_execute("INSERT INTO orders VALUES (4,'cat',100,'2026-01-03 00:00:00'); INSERT INTO plain VALUES (4,'y'); FLUSH;")
        .await
        .expect("dml after restart");
    let rev = rows_sorted(&client, "SELECT * FROM revenue")
        .await
        .expect("read");
    assert_eq!(
        rev,
        vec!["ann|2|8.25|1.00|7.25", "cat|1|100.00|100.00|100.00"]
    );
    let plain = rows_sorted(&client, "SELECT * FROM plain")
        .await
        .expect("read");
    assert_eq!(plain, vec!["1|x", "1|x", "4|y"]);
    let joined = rows_sorted(&client, "SELECT * FROM joined")
        .await
        .expect("read");
    assert_eq!(joined, vec!["1|x", "1|x", "3|NULL", "4|y"]);

    // A second server on the same data directory refuses to start.
    let second = std::process::Command::new(eddy_sql_tests::eddy_binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .expect("run second eddy");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another eddy process"),
        "{stderr}"
    );
}

/// Views over sources survive `kill -9`: sources are replayed from their
/// stored definition (fixed base time), so the rebuilt views are identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_over_sources_are_identical_after_kill9() {
    let mut server = EddyServer::start("restart_sources");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE SOURCE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP, WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
               WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '30000');
             CREATE MATERIALIZED VIEW per_window AS
               SELECT auction, window_start, count(*) AS n, max(price) AS hi
               FROM TUMBLE(bid, date_time, INTERVAL '1' SECOND) GROUP BY auction, window_start
               EMIT ON WINDOW CLOSE;",
        )
        .await
        .expect("setup");
    crate::nexmark::wait_for_sources(&client).await;
    let before = rows_sorted(&client, "SELECT * FROM per_window")
        .await
        .expect("read");
    assert!(!before.is_empty());
    drop(client);
    server.kill9();
    server.restart_after_kill9();
    let client = server.client().await;
    crate::nexmark::wait_for_sources(&client).await;
    let after = rows_sorted(&client, "SELECT * FROM per_window")
        .await
        .expect("read");
    assert_eq!(before, after, "the view differs after a restart");
}

/// A temporal filter's rows come back from the checkpoint, and the ones
/// whose time passed while the server was down leave (or enter) the view
/// at the first epoch after recovery: under either state backend (the
/// `rocksdb` one, with no cache, reads them back from the store then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_filter_catches_up_after_kill9() {
    let mut server = EddyServer::start_with("restart_temporal", &["--state-cache-mb", "0"]);
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE ev (id INT, ts TIMESTAMP);
             CREATE MATERIALIZED VIEW recent AS SELECT id FROM ev WHERE ts > now() - INTERVAL '1 hour' AND ts <= now();
             CREATE MATERIALIZED VIEW recent_in_store WITH (state_backend = 'rocksdb') AS
               SELECT id FROM ev WHERE ts > now() - INTERVAL '1 hour' AND ts <= now();
             INSERT INTO ev VALUES (1, now() - INTERVAL '1 hour' + INTERVAL '2 seconds'),
                                   (2, now() + INTERVAL '2 seconds'), (3, now() - INTERVAL '1 minute');
             FLUSH;",
        )
        .await
        .expect("setup");
    for view in ["recent", "recent_in_store"] {
        let sql = format!("SELECT * FROM {view}");
        assert_eq!(rows_sorted(&client, &sql).await.expect("read"), ["1", "3"]);
    }
    server.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    server.restart_after_kill9();
    let client = server.client().await;
    client.batch_execute("FLUSH").await.expect("flush");
    for view in ["recent", "recent_in_store"] {
        let sql = format!("SELECT * FROM {view}");
        assert_eq!(
            rows_sorted(&client, &sql).await.expect("read"),
            ["2", "3"],
            "{view}"
        );
    }
}

/// A view reading a source twice has per-split fragments for each read (a
/// temporal filter runs before the first shuffle, once per split): each
/// keeps its pending rows under a scope of its own, so after `kill -9`
/// neither gets the other's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_scans_of_a_source_keep_their_state_apart_after_kill9() {
    let mut server = EddyServer::start("restart_two_scans");
    let client = server.client().await;
    // Rows become due every 3 seconds from the source's creation on.
    client
        .batch_execute(
            "CREATE SOURCE ticks (id BIGINT, ts TIMESTAMP) WITH (connector = 'datagen',
               datagen.rows.total = '6', fields.id.kind = 'sequence',
               fields.ts.kind = 'sequence', fields.ts.step = '3 seconds');
             CREATE MATERIALIZED VIEW due AS
               SELECT id, 'even' AS kind FROM ticks WHERE ts <= now() AND id % 2 = 0
               UNION ALL
               SELECT id, 'odd' AS kind FROM ticks WHERE ts <= now() AND id % 2 = 1;
             FLUSH;",
        )
        .await
        .expect("setup");
    let sql = "SELECT * FROM due";
    let before = rows_sorted(&client, sql).await.expect("read");
    assert!(before.len() < 6, "rows were due too soon: {before:?}");
    server.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(17)).await;
    server.restart_after_kill9();
    let client = server.client().await;
    client.batch_execute("FLUSH").await.expect("flush");
    assert_eq!(
        rows_sorted(&client, sql).await.expect("read"),
        ["1|odd", "2|even", "3|odd", "4|even", "5|odd", "6|even"]
    );
}

/// State TTL stamps are checkpointed: after `kill -9`, unexpired state is
/// back (a retraction finds it), and what stopped changing still expires.
#[tokio::test]
async fn state_ttl_survives_kill9() {
    let mut server = EddyServer::start_with("restart_state_ttl", &["--state-cache-mb", "0"]);
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE clicks (user_id INT, page VARCHAR);
             CREATE TABLE users (user_id INT, name VARCHAR);
             CREATE MATERIALIZED VIEW per_user WITH (state_ttl = '1 hour') AS
               SELECT user_id, count(*) AS clicks FROM clicks GROUP BY user_id;
             CREATE MATERIALIZED VIEW named WITH (state_ttl = '1 hour') AS
               SELECT c.page, u.name FROM clicks c JOIN users u ON c.user_id = u.user_id;
             CREATE MATERIALIZED VIEW named_in_store WITH (state_ttl = '1 hour', state_backend = 'rocksdb') AS
               SELECT c.page, u.name FROM clicks c JOIN users u ON c.user_id = u.user_id;
             CREATE MATERIALIZED VIEW brief WITH (state_ttl = '2 seconds') AS
               SELECT user_id, count(*) AS clicks FROM clicks GROUP BY user_id;
             CREATE MATERIALIZED VIEW brief_join_in_store WITH (state_ttl = '2 seconds', state_backend = 'rocksdb') AS
               SELECT c.page, u.name FROM clicks c JOIN users u ON c.user_id = u.user_id;
             INSERT INTO clicks VALUES (1, 'a'), (1, 'b'), (2, 'a');
             INSERT INTO users VALUES (1, 'ann'), (2, 'bob');
             FLUSH;",
        )
        .await
        .expect("setup");
    server.kill9();
    server.restart_after_kill9();
    let client = server.client().await;
    client
        .batch_execute("DELETE FROM clicks WHERE page = 'b'; FLUSH;")
        .await
        .expect("delete");
    assert_eq!(
        rows_sorted(&client, "SELECT * FROM per_user")
            .await
            .expect("read"),
        ["1|1", "2|1"]
    );
    for view in ["named", "named_in_store"] {
        assert_eq!(
            rows_sorted(&client, &format!("SELECT * FROM {view}"))
                .await
                .expect("read"),
            ["a|ann", "a|bob"],
            "{view}"
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for view in ["brief", "brief_join_in_store"] {
        while !rows_sorted(&client, &format!("SELECT * FROM {view}"))
            .await
            .expect("read")
            .is_empty()
        {
            assert!(std::time::Instant::now() < deadline, "{view} never expired");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// A stored view this version refuses to plan (here, one using
/// `CURRENT_DATE`, which views refuse) does not keep the server from
/// starting: it is kept, failed and saying why, until dropped.
#[tokio::test]
async fn a_view_that_no_longer_plans_is_kept_failed() {
    let mut server = EddyServer::start("restart_unplannable");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (id INT);
             INSERT INTO t VALUES (1), (2);
             CREATE MATERIALIZED VIEW fine AS SELECT count(*) AS n FROM t;
             FLUSH;",
        )
        .await
        .expect("setup");
    server.kill9();
    // What an earlier version could have stored.
    let store = eddy_storage::Store::open(&server.data_dir).expect("open the data dir");
    store
        .put_catalog(&eddy_storage::CatalogEntry {
            id: 100,
            name: "dated".into(),
            kind: eddy_storage::RelationKind::MaterializedView,
            sql: "CREATE MATERIALIZED VIEW dated AS SELECT id, current_date AS d FROM t".into(),
        })
        .expect("store an entry");
    drop(store);
    server.restart_after_kill9();
    let client = server.client().await;
    assert_eq!(
        rows_sorted(&client, "SELECT * FROM fine")
            .await
            .expect("read"),
        ["2"]
    );
    let message = error_message(&client, "SELECT * FROM dated").await;
    assert!(
        message.contains("could not be restored"),
        "unexpected error: {message}"
    );
    assert_eq!(
        rows_sorted(
            &client,
            "SELECT state, last_error LIKE '%current_date%' FROM eddy_catalog.jobs WHERE job = 'dated'"
        )
        .await
        .expect("jobs"),
        ["failed|t"]
    );
    client
        .batch_execute("DROP MATERIALIZED VIEW dated")
        .await
        .expect("drop it");
    server.restart_after_kill9();
    let client = server.client().await;
    assert!(
        rows_sorted(
            &client,
            "SELECT job FROM eddy_catalog.jobs WHERE job = 'dated'"
        )
        .await
        .expect("jobs")
        .is_empty()
    );
}

/// A view whose checkpoint records another state layout (here, the
/// unversioned one of versions before layouts were recorded) is not
/// restored from keys this version would not find: it is kept failed,
/// saying why, and the rest of the server starts as usual. Layout 1 moved
/// only top-N and window function rows: a view without them restores
/// from it, one with them does not.
#[tokio::test]
async fn a_view_checkpointed_in_an_older_state_layout_is_kept_failed() {
    let mut server = EddyServer::start("restart_old_layout");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE t (k INT, v INT);
             INSERT INTO t VALUES (1, 10), (1, 20), (2, 5);
             CREATE MATERIALIZED VIEW sums AS SELECT k, sum(v) AS total FROM t GROUP BY k;
             CREATE MATERIALIZED VIEW kept AS SELECT count(*) AS n FROM t;
             CREATE MATERIALIZED VIEW maxes AS SELECT k, max(v) AS hi FROM t GROUP BY k;
             CREATE MATERIALIZED VIEW ranked AS SELECT k, v FROM (
               SELECT k, v, ROW_NUMBER() OVER (PARTITION BY k ORDER BY v DESC) AS rn FROM t) x
             WHERE rn <= 1;
             FLUSH;",
        )
        .await
        .expect("setup");
    server.kill9();
    // What earlier versions recorded with their first checkpoints.
    let store = eddy_storage::Store::open(&server.data_dir).expect("open the data dir");
    let catalog = store.catalog().expect("catalog");
    let id_of = |name: &str| {
        catalog
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("{name} is stored"))
            .id
    };
    assert!(
        store
            .checkpoint_layout(id_of("sums"))
            .expect("layout")
            .is_some_and(|l| l > 1)
    );
    let mut old = eddy_storage::CheckpointBatch::default();
    old.mark_checkpointed(id_of("sums"), 1, 0);
    old.mark_checkpointed(id_of("maxes"), 1, 1);
    old.mark_checkpointed(id_of("ranked"), 1, 1);
    store
        .commit_checkpoint(&old)
        .expect("write the old markers");
    drop(store);
    server.restart_after_kill9();
    let client = server.client().await;
    // Restored from layout 1 (not rebuilt: the retraction finds 20).
    client
        .batch_execute("DELETE FROM t WHERE v = 20; FLUSH;")
        .await
        .expect("delete");
    assert_eq!(
        rows_sorted(&client, "SELECT * FROM maxes")
            .await
            .expect("read"),
        ["1|10", "2|5"]
    );
    let message = error_message(&client, "SELECT * FROM ranked").await;
    assert!(
        message.contains("older version of Eddy, in state layout 1"),
        "unexpected error: {message}"
    );
    assert_eq!(
        rows_sorted(&client, "SELECT * FROM kept")
            .await
            .expect("read"),
        ["2"]
    );
    let message = error_message(&client, "SELECT * FROM sums").await;
    assert!(
        message.contains("older version of Eddy, in state layout 0"),
        "unexpected error: {message}"
    );
    assert_eq!(
        rows_sorted(
            &client,
            "SELECT state FROM eddy_catalog.jobs WHERE job = 'sums'"
        )
        .await
        .expect("jobs"),
        ["failed"]
    );
    // Created again, it is whole.
    client
        .batch_execute(
            "DROP MATERIALIZED VIEW sums;
             CREATE MATERIALIZED VIEW sums AS SELECT k, sum(v) AS total FROM t GROUP BY k;",
        )
        .await
        .expect("recreate");
    assert_eq!(
        rows_sorted(&client, "SELECT * FROM sums")
            .await
            .expect("read"),
        ["1|10", "2|5"]
    );
}

/// A relation nothing was ever retracted from keeps its rows as the batches
/// that arrived (stored as Arrow parts); the first retraction turns them
/// into counted rows (a base part replaces the Arrow ones). Both forms, and
/// the turn between them, come back the same after `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_rows_survive_kill9_before_and_after_their_first_retraction() {
    let mut server = EddyServer::start("restart_appended");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE events (k INT, note TEXT);
             CREATE MATERIALIZED VIEW copied AS SELECT k, note FROM events WHERE k > 1;
             INSERT INTO events VALUES (1, 'a'), (2, 'b'), (2, 'b');
             INSERT INTO events SELECT value, 'n' || value FROM generate_series(3, 2000);
             FLUSH;",
        )
        .await
        .expect("setup");
    let contents = |client: tokio_postgres::Client| async move {
        let mut out = Vec::new();
        for q in [
            "SELECT count(*), sum(k), count(DISTINCT note) FROM events",
            "SELECT count(*), sum(k), min(k) FROM copied",
            "SELECT * FROM events WHERE k <= 3",
        ] {
            out.push(rows_sorted(&client, q).await.expect("read"));
        }
        out
    };
    let appended = contents(client).await;
    assert_eq!(appended[0], vec!["2001|2001002|2000"]);

    server.restart_after_kill9();
    let client = server.client().await;
    assert_eq!(
        contents(client).await,
        appended,
        "appended rows after kill -9"
    );

    // The first retraction of each relation; then more appends on top.
    let client = server.client().await;
    client
        .batch_execute(
            "DELETE FROM events WHERE k = 2 OR k > 1000;
             INSERT INTO events VALUES (2, 'c'), (5000, 'z');
             FLUSH;",
        )
        .await
        .expect("retract");
    let counted = contents(client).await;
    assert_eq!(counted[0], vec!["1001|505500|1001"]);
    assert_eq!(counted[1], vec!["1000|505499|2"]);

    server.restart_after_kill9();
    let client = server.client().await;
    assert_eq!(
        contents(client).await,
        counted,
        "counted rows after kill -9"
    );
    let client = server.client().await;
    client
        .batch_execute("INSERT INTO events VALUES (7, 'x'); FLUSH;")
        .await
        .expect("insert after restart");
    assert_eq!(
        rows_sorted(&client, "SELECT count(*) FROM copied WHERE k = 7")
            .await
            .expect("read"),
        vec!["2"]
    );
}

/// Nexmark q12 (bids per bidder and processing-time window) across a
/// `kill -9` in the middle of the stream: rows read after the checkpoint are
/// read again, with a later processing time, so windows differ from an
/// uninterrupted run's, but every bid is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processing_time_windows_count_every_row_once_across_kill9() {
    let mut server = EddyServer::start("restart_proctime");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP, p_time AS PROCTIME())
               WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '20000',
                     nexmark.events.per.second = '5000');
             CREATE MATERIALIZED VIEW q12 AS
               SELECT bidder, count(*) AS bid_count, window_start, window_end
               FROM TUMBLE(bid, p_time, INTERVAL '1' SECOND) GROUP BY bidder, window_start, window_end;",
        )
        .await
        .expect("setup");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    drop(client);
    server.kill9();
    server.restart_after_kill9();
    let client = server.client().await;
    crate::nexmark::wait_for_sources(&client).await;
    let per_bidder = |from: &str| format!("SELECT bidder, {from} GROUP BY bidder");
    let counted = rows_sorted(&client, &per_bidder("sum(bid_count) FROM q12"))
        .await
        .expect("read view");
    let bids = rows_sorted(&client, &per_bidder("count(*) FROM bid"))
        .await
        .expect("read source");
    assert!(!bids.is_empty());
    assert_eq!(counted, bids, "a bid was lost or counted twice");
    let misshapen = rows_sorted(
        &client,
        "SELECT count(*) FROM q12 WHERE window_end - window_start <> INTERVAL '1' SECOND
           OR date_trunc('second', window_start) <> window_start OR window_start > now()",
    )
    .await
    .expect("read view");
    assert_eq!(misshapen, ["0"]);
}

/// The stored rows of an interval join's relation `name`, and their
/// entries in its indexes by time, read from the data directory of a
/// stopped server.
fn stored_join_rows(data_dir: &std::path::Path, name: &str) -> usize {
    let store = eddy_storage::Store::open(data_dir).expect("open the store");
    let id = store
        .catalog()
        .expect("catalog")
        .into_iter()
        .find(|e| e.name == name)
        .expect("the view's entry")
        .id;
    let mut rows = 0;
    // `<scope:4> <operator:2> t ...`: a join row kept by its time; in the
    // keyed range (the operator's top bit set), `r` a row kept by join
    // key, `a` and `b` the indexes by time.
    store
        .scan_state(id, &[], |key, _| {
            let keyed = key.get(4).is_some_and(|o| o & 0x80 != 0);
            let tag = key.get(6).copied();
            rows += usize::from(match keyed {
                false => tag == Some(b't'),
                true => matches!(tag, Some(b'r' | b'a' | b'b')),
            });
        })
        .expect("scan state");
    rows
}

/// Pairs of bids of one auction within 100 ms: an interval join.
const BID_PAIRS: &str = "SELECT b1.auction, b1.price, b2.price AS before
                 FROM bid b1 JOIN bid b2 ON b1.auction = b2.auction
                   AND b2.date_time BETWEEN b1.date_time - INTERVAL '100' MILLISECOND AND b1.date_time";

/// A bounded bid source, read over about four seconds.
const BID_SOURCE: &str = "CREATE SOURCE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP,
                 WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
               WITH (connector = 'nexmark', nexmark.table.type = 'bid', nexmark.event.num = '20000',
                     nexmark.events.per.second = '5000', nexmark.base.time = '1700000000000');";

/// Once the sources are read, each of `views` equals [`BID_PAIRS`] run as
/// a batch query; then, stopped, the checkpoint holds none of their join
/// rows (every one expired).
async fn bid_pairs_match_and_leave_no_rows(server: &mut EddyServer, views: &[&str]) {
    let client = server.client().await;
    crate::nexmark::wait_for_sources(&client).await;
    let batch = rows_sorted(&client, BID_PAIRS).await.expect("batch query");
    assert!(!batch.is_empty());
    for view in views {
        let rows = rows_sorted(&client, &format!("SELECT * FROM {view}"))
            .await
            .expect("view");
        assert_eq!(rows, batch, "{view} differs from its query");
    }
    drop(client);
    server.kill9();
    for view in views {
        assert_eq!(stored_join_rows(&server.data_dir, view), 0, "{view}");
    }
}

/// An interval join's rows leave its checkpoint when the watermark expires
/// them (one range deletion per checkpoint in memory; under `rocksdb`, the
/// rows one by one and their index by time in one range): mid-stream the
/// store holds some, and once every row expired, none, while the view is
/// intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_interval_join_rows_leave_the_checkpoint() {
    let mut server = EddyServer::start_with("restart_interval_expiry", &["--state-cache-mb", "0"]);
    let client = server.client().await;
    client
        .batch_execute(&format!(
            "{BID_SOURCE}
             CREATE MATERIALIZED VIEW pairs AS {BID_PAIRS};
             CREATE MATERIALIZED VIEW pairs_in_store WITH (state_backend = 'rocksdb') AS {BID_PAIRS};"
        ))
        .await
        .expect("setup");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    drop(client);
    server.kill9();
    for view in ["pairs", "pairs_in_store"] {
        let mid_stream = stored_join_rows(&server.data_dir, view);
        assert!(
            mid_stream > 0,
            "{view}: no join rows in the checkpoint mid-stream"
        );
    }
    server.restart_after_kill9();
    bid_pairs_match_and_leave_no_rows(&mut server, &["pairs", "pairs_in_store"]).await;
}

/// An interval join's timed rows survive a restart under the other
/// default state backend: ones moved to the store (by join key, with an
/// index by time) stay there under `memory`; ones kept by time in memory
/// move to the store under `rocksdb` (with no cache, at the first
/// checkpoint). Both views go on, equal their query, and leave nothing
/// behind once every row expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_joins_keep_their_rows_across_a_change_of_backend() {
    let in_store = ["--state-backend", "rocksdb", "--state-cache-mb", "0"];
    let mut server = EddyServer::start_with("restart_interval_backend", &in_store);
    server
        .client()
        .await
        .batch_execute(&format!(
            "{BID_SOURCE}
             CREATE MATERIALIZED VIEW first_in_store AS {BID_PAIRS};"
        ))
        .await
        .expect("setup");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    server.kill9();
    server.set_args(&[]);
    server.restart_after_kill9();
    server
        .client()
        .await
        .batch_execute(&format!(
            "CREATE MATERIALIZED VIEW first_in_memory AS {BID_PAIRS};"
        ))
        .await
        .expect("second view");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    server.kill9();
    server.set_args(&in_store);
    server.restart_after_kill9();
    bid_pairs_match_and_leave_no_rows(&mut server, &["first_in_store", "first_in_memory"]).await;
}

/// Expression-error counts are checkpointed with the state of the
/// fragments (and source readers) that counted them: after `kill -9`
/// mid-stream, each view has counted every failing row once, as an
/// uninterrupted run does, not only those after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_error_counts_survive_kill9() {
    let mut server = EddyServer::start("restart_error_counts");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE SOURCE nums (id BIGINT, v INT) WITH (connector = 'datagen',
               datagen.rows.total = '20000', datagen.rows.per.second = '4000',
               fields.id.kind = 'sequence', fields.v.min = '0', fields.v.max = '9', fields.v.seed = '5');
             CREATE MATERIALIZED VIEW ratios AS SELECT id, 100 / v AS r FROM nums;
             CREATE MATERIALIZED VIEW by_ratio AS SELECT 100 / v AS r, count(*) AS n FROM nums GROUP BY 100 / v;",
        )
        .await
        .expect("setup");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let counts = "SELECT relation, error_count FROM eddy_catalog.view_errors";
    let before = rows_sorted(&client, counts).await.expect("read");
    assert_eq!(before.len(), 2, "both views counted errors: {before:?}");
    let pending = rows_sorted(
        &client,
        "SELECT relation FROM eddy_catalog.source_readers WHERE finished_splits < splits",
    )
    .await
    .expect("source_readers");
    assert!(!pending.is_empty(), "the source ended before the kill");
    server.kill9();
    server.restart_after_kill9();
    let client = server.client().await;
    crate::nexmark::wait_for_sources(&client).await;
    let zeros = rows_sorted(&client, "SELECT count(*) FROM nums WHERE v = 0")
        .await
        .expect("read");
    let zeros = &zeros[0];
    assert_eq!(
        rows_sorted(&client, counts).await.expect("read"),
        [format!("by_ratio|{zeros}"), format!("ratios|{zeros}")]
    );
}
