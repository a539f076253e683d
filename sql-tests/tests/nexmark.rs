//! Nexmark over deterministic, bounded nexmark sources: every query runs as
//! a materialized view, and once the view's readers have read their whole
//! source it must equal the same query run as a batch query over the same
//! events. Also windows (TUMBLE / HOP / SESSION, emit on update and on window close,
//! the Flink spelling) over nexmark and datagen sources.

use std::time::{Duration, Instant};

use eddy_sql_tests::nexmark_queries::NEXMARK_QUERIES;
use eddy_sql_tests::{EddyServer, rows_sorted};

/// Events of all types per source (bids are 46 of every 50).
const EVENTS: u64 = 60_000;

fn sources() -> String {
    let with = |kind: &str| {
        format!(
            "WITH (connector = 'nexmark', nexmark.table.type = '{kind}', nexmark.event.num = '{EVENTS}', nexmark.base.time = '1767225600000', nexmark.event.rate = '2000')"
        )
    };
    format!(
        "CREATE SOURCE person (id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR, state VARCHAR, date_time TIMESTAMP, extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) {};
         CREATE SOURCE auction (id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) {};
         CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP, extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) {};
         CREATE SOURCE ticks (id BIGINT, v INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (connector = 'datagen', fields.id.kind = 'sequence', fields.id.start = '1', fields.id.end = '5000', fields.v.min = '0', fields.v.max = '9', fields.v.seed = '7', fields.ts.kind = 'sequence', fields.ts.start = '2026-01-01 00:00:00', fields.ts.step = '100 milliseconds');
         CREATE TABLE side_input (key BIGINT PRIMARY KEY, value VARCHAR);
         INSERT INTO side_input SELECT id, 'v' || id FROM (SELECT DISTINCT auction AS id FROM bid) t WHERE id % 3 = 0;",
        with("person"),
        with("auction"),
        with("bid")
    )
}

/// Views the test adds to the standard queries: windows of every kind,
/// interval joins and a view on a view (name, query, emit on window close).
const EXTRA_VIEWS: &[(&str, &str, bool)] = &[
    (
        "top_global",
        "SELECT auction, bidder, price FROM bid ORDER BY price DESC, auction, bidder, date_time, extra LIMIT 5",
        false,
    ),
    // Windows.
    (
        "tumble_update",
        "SELECT auction, window_start, window_end, count(*) AS n, max(price) AS hi FROM TUMBLE(bid, date_time, INTERVAL '3' SECOND) GROUP BY auction, window_start, window_end",
        false,
    ),
    (
        "tumble_offset",
        "SELECT window_start, count(*) AS n FROM TUMBLE(bid, date_time, INTERVAL '4' SECOND, INTERVAL '1' SECOND) GROUP BY window_start",
        false,
    ),
    (
        "hop_close",
        "SELECT window_start, window_end, count(*) AS n, sum(price) AS total FROM HOP(bid, date_time, INTERVAL '1' SECOND, INTERVAL '3' SECOND) GROUP BY window_start, window_end",
        true,
    ),
    (
        "hop_uneven_close",
        "SELECT bidder % 5 AS b, window_end, count(*) AS n FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '5' SECOND) GROUP BY bidder % 5, window_end",
        true,
    ),
    (
        "flink_close",
        "SELECT window_start, window_end, count(*) AS n FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '5' SECOND)) GROUP BY window_start, window_end",
        true,
    ),
    (
        "datagen_close",
        "SELECT v, window_start, count(*) AS n, sum(id) AS s FROM TUMBLE(ticks, ts, INTERVAL '10' SECOND) GROUP BY v, window_start",
        true,
    ),
    (
        "interval_join",
        "SELECT P.id, P.name, A.id AS aid, A.date_time FROM person P JOIN auction A ON P.id = A.seller AND A.date_time BETWEEN P.date_time AND P.date_time + INTERVAL '5' SECOND",
        false,
    ),
    (
        "interval_left_join",
        "SELECT P.id, A.id AS aid FROM person P LEFT JOIN auction A ON P.id = A.seller AND A.date_time >= P.date_time AND A.date_time < P.date_time + INTERVAL '2' SECOND",
        false,
    ),
    (
        "session_update",
        "SELECT auction % 7 AS a, window_start, window_end, count(*) AS n, max(price) AS hi FROM TABLE(SESSION(TABLE bid PARTITION BY auction % 7, DESCRIPTOR(date_time), INTERVAL '300' MILLISECOND)) GROUP BY auction % 7, window_start, window_end",
        false,
    ),
    (
        "session_global_close",
        "SELECT window_start, window_end, count(*) AS n FROM SESSION(bid, date_time, INTERVAL '1' MILLISECOND) GROUP BY window_start, window_end",
        true,
    ),
    (
        "on_close_view",
        "SELECT window_start, n * 2 AS n2 FROM hop_close WHERE n > 0",
        false,
    ),
];

async fn exec(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Waits until every view's source readers reached the end of their splits.
pub(crate) async fn wait_for_sources(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pending = rows_sorted(
            client,
            "SELECT relation, source, finished_splits, splits FROM eddy_catalog.source_readers WHERE finished_splits < splits",
        )
        .await
        .expect("source_readers");
        if pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sources not read to the end: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    exec(client, "FLUSH").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_views_match_batch_queries() {
    views_match_batch_queries(EddyServer::start("nexmark")).await;
}

/// The same with every view's state in RocksDB and no cache to speak of:
/// aggregate groups and join keys leave memory once their checkpoint is
/// durable and are read back when a change needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_views_match_batch_queries_with_rocksdb_state() {
    let server = EddyServer::start_with(
        "nexmark_rocksdb",
        &["--state-backend", "rocksdb", "--state-cache-mb", "0"],
    );
    views_match_batch_queries(server).await;
}

async fn views_match_batch_queries(server: EddyServer) {
    let client = server.client().await;
    exec(&client, &sources()).await;
    for (name, query, close) in NEXMARK_QUERIES.iter().chain(EXTRA_VIEWS) {
        let emit = if *close { " EMIT ON WINDOW CLOSE" } else { "" };
        exec(
            &client,
            &format!("CREATE MATERIALIZED VIEW {name} AS {query}{emit}"),
        )
        .await;
    }
    wait_for_sources(&client).await;
    for (name, query, _) in NEXMARK_QUERIES.iter().chain(EXTRA_VIEWS) {
        let got = rows_sorted(&client, &format!("SELECT * FROM {name}"))
            .await
            .expect("read view");
        let want = rows_sorted(&client, query).await.expect("batch query");
        assert!(!want.is_empty(), "{name}: the batch query found no rows");
        assert_eq!(got.len(), want.len(), "{name}: row count differs");
        assert_eq!(got, want, "{name}: view differs from its query");
    }
    // Every view over a watermarked source reached the end of time.
    let watermarks = rows_sorted(
        &client,
        "SELECT relation, column_name FROM eddy_catalog.watermarks WHERE relation = 'hop_close'",
    )
    .await
    .expect("watermarks");
    assert_eq!(watermarks, vec!["hop_close|window_start".to_string()]);
    // Bounded state: once the watermark passed every window, session and
    // join interval, those operators hold nothing, while a plain join keeps
    // its inputs.
    let state = rows_sorted(
        &client,
        "SELECT relation, operator, sum(state_rows) FROM eddy_catalog.operator_state WHERE relation IN ('hop_close', 'tumble_update', 'q11', 'session_global_close', 'q3', 'q7', 'q8', 'interval_join', 'interval_left_join') GROUP BY relation, operator",
    )
    .await
    .expect("operator_state");
    assert_eq!(
        state,
        vec![
            "hop_close|HashAggregate|0",
            "interval_join|HashJoin|0",
            "interval_left_join|HashJoin|0",
            "q11|HashAggregate|0",
            "q11|SessionWindow|0",
            &format!("q3|HashJoin|{}", q3_state_rows(&client).await),
            "q7|HashAggregate|0",
            "q7|HashJoin|0",
            "q8|HashAggregate|0",
            "q8|HashJoin|0",
            "session_global_close|HashAggregate|0",
            "session_global_close|SessionWindow|0",
            "tumble_update|HashAggregate|0",
        ]
    );
}

/// Rows a join of `auction` (category 10) and `person` (in or, id, ca) keeps:
/// every row of both filtered inputs.
async fn q3_state_rows(client: &tokio_postgres::Client) -> String {
    let n = rows_sorted(
        client,
        "SELECT (SELECT count(*) FROM auction WHERE category = 10) + (SELECT count(*) FROM person WHERE state IN ('or', 'id', 'ca'))",
    )
    .await
    .expect("count inputs");
    n.concat()
}

/// Out-of-order rows behind the watermark are dropped by windowed
/// aggregates, counted, and kept in the view's late-rows table: nothing
/// disappears unaccounted, and after `kill -9` mid-stream every row is in
/// a window or in the late-rows table exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_rows_are_dropped_counted_and_kept() {
    let mut server = EddyServer::start("late_rows");
    let client = server.client().await;
    exec(
        &client,
        "CREATE SOURCE jitter (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'datagen', datagen.rows.total = '20000', fields.id.kind = 'sequence',
                 fields.ts.kind = 'random', fields.ts.start = '2026-01-01 00:01:00', fields.ts.max_past = '60 seconds');
         CREATE MATERIALIZED VIEW per_window WITH (late_rows = 'per_window_late') AS
           SELECT window_start, count(*) AS n FROM TUMBLE(jitter, ts, INTERVAL '5' SECOND)
           GROUP BY window_start EMIT ON WINDOW CLOSE;",
    )
    .await;
    wait_for_sources(&client).await;
    let counted = rows_sorted(
        &client,
        "SELECT (SELECT sum(n) FROM per_window), late_rows, (SELECT count(*) FROM per_window_late)
         FROM eddy_catalog.watermarks WHERE relation = 'per_window'",
    )
    .await
    .expect("late rows");
    let [row] = counted.as_slice() else {
        panic!("one progress row expected, got {counted:?}");
    };
    let numbers: Vec<u64> = row
        .split('|')
        .map(|n| n.parse().expect("a number"))
        .collect();
    let [kept, late, late_kept] = numbers[..] else {
        panic!("three columns expected, got {row}");
    };
    assert!(
        late > 0,
        "random timestamps 60 s apart must produce late rows"
    );
    assert_eq!(
        kept + late,
        20_000,
        "every row is in a window or counted late"
    );
    assert_eq!(late_kept, late, "every late row is kept once");
    let shape = rows_sorted(
        &client,
        "SELECT DISTINCT operator, op, data LIKE '{\"window_start\":%' FROM per_window_late",
    )
    .await
    .expect("late rows' shape");
    assert_eq!(shape, ["window aggregate|insert|t"]);
    // Rows handled can be cleared; they stay cleared across kill -9.
    exec(
        &client,
        "DELETE FROM per_window_late WHERE data = (SELECT min(data) FROM per_window_late)",
    )
    .await;
    let kept_late = "SELECT count(*) FROM per_window_late";
    let left = rows_sorted(&client, kept_late).await.expect("late rows");
    assert!(
        left[0].parse::<u64>().expect("a count") < late,
        "DELETE cleared some: {left:?} of {late}"
    );

    exec(
        &client,
        "CREATE SOURCE slow_jitter (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'datagen', datagen.rows.total = '20000', datagen.rows.per.second = '5000',
                 fields.id.kind = 'sequence', fields.ts.kind = 'random',
                 fields.ts.start = '2026-01-01 00:01:00', fields.ts.max_past = '60 seconds');
         CREATE MATERIALIZED VIEW slow_per_window WITH (late_rows = 'slow_late') AS
           SELECT window_start, count(*) AS n, max(id) AS last_id
           FROM TUMBLE(slow_jitter, ts, INTERVAL '5' SECOND)
           GROUP BY window_start EMIT ON WINDOW CLOSE;
         CREATE MATERIALIZED VIEW slow_late_count AS
           SELECT count(*) AS n, count(DISTINCT data) AS windows FROM slow_late;",
    )
    .await;
    // Mid-stream (20000 rows at 5000/s), the server dies.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.kill9();
    server.restart_after_kill9();
    let client = server.client().await;
    wait_for_sources(&client).await;
    // The view killed mid-stream: windows and late rows account for every
    // row once, with nothing lost or repeated by the recovery, and the
    // count of late rows went on from its checkpoint.
    let slow = rows_sorted(
        &client,
        "SELECT (SELECT sum(n) FROM slow_per_window) + (SELECT count(*) FROM slow_late),
                (SELECT count(*) FROM slow_late) > 0,
                (SELECT count(*) FROM slow_late) = late_rows
         FROM eddy_catalog.watermarks WHERE relation = 'slow_per_window'",
    )
    .await
    .expect("slow view");
    assert_eq!(slow, ["20000|t|t"]);
    // The view reading the late rows took each in once.
    let read = rows_sorted(
        &client,
        "SELECT n = (SELECT count(*) FROM slow_late),
                windows = (SELECT count(DISTINCT data) FROM slow_late)
         FROM slow_late_count",
    )
    .await
    .expect("late rows read");
    assert_eq!(read, ["t|t"]);
    assert_eq!(
        rows_sorted(&client, kept_late).await.expect("late rows"),
        left,
        "the cleared rows stay cleared"
    );
}
