//! Nexmark over deterministic, bounded nexmark sources: every query runs as
//! a materialized view, and once the view's readers have read their whole
//! source it must equal the same query run as a batch query over the same
//! events. Also windows (TUMBLE / HOP / SESSION, emit on update and on window close,
//! the Flink spelling) over nexmark and datagen sources.

use std::time::{Duration, Instant};

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

/// (name, query, emit on window close).
const QUERIES: &[(&str, &str, bool)] = &[
    (
        "q0",
        "SELECT auction, bidder, price, date_time FROM bid",
        false,
    ),
    (
        "q1",
        "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid",
        false,
    ),
    (
        "q2",
        "SELECT auction, price FROM bid WHERE auction = 1007 OR auction = 1020 OR auction = 2001 OR auction = 2019 OR auction = 2087",
        false,
    ),
    (
        "q3",
        "SELECT P.name, P.city, P.state, A.id FROM auction AS A INNER JOIN person AS P ON A.seller = P.id WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca')",
        false,
    ),
    (
        "q4",
        "SELECT Q.category, avg(Q.final) AS avg FROM (SELECT max(B.price) AS final, A.category FROM auction A, bid B WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.category) Q GROUP BY Q.category",
        false,
    ),
    (
        "q5",
        "SELECT AuctionBids.auction, AuctionBids.num FROM (SELECT bid.auction, count(*) AS num, window_start AS starttime FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY window_start, bid.auction) AS AuctionBids JOIN (SELECT max(CountBids.num) AS maxn, CountBids.starttime_c FROM (SELECT count(*) AS num, window_start AS starttime_c FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY bid.auction, window_start) AS CountBids GROUP BY CountBids.starttime_c) AS MaxBids ON AuctionBids.starttime = MaxBids.starttime_c AND AuctionBids.num >= MaxBids.maxn",
        false,
    ),
    // q6: the average selling price of each seller's last auctions (the
    // auction's highest bid in its lifetime), over the 10 before it and
    // itself: a window function over an aggregate.
    (
        "q6",
        "SELECT Q.seller, avg(Q.final) OVER (PARTITION BY Q.seller ORDER BY Q.expires, Q.id ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg FROM (SELECT A.id, A.seller, A.expires, max(B.price) AS final FROM auction A, bid B WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.seller, A.expires) Q",
        false,
    ),
    (
        "q7",
        "SELECT B.auction, B.price, B.bidder, B.date_time FROM bid B JOIN (SELECT max(price) AS maxprice, window_end AS date_time FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_end) B1 ON B.price = B1.maxprice WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time",
        false,
    ),
    (
        "q8",
        "SELECT P.id, P.name, P.starttime FROM (SELECT id, name, window_start AS starttime, window_end AS endtime FROM TUMBLE(person, date_time, INTERVAL '10' SECOND) GROUP BY id, name, window_start, window_end) P JOIN (SELECT seller, window_start AS starttime, window_end AS endtime FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND) GROUP BY seller, window_start, window_end) A ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime",
        false,
    ),
    (
        "q9",
        "SELECT id, item_name, initial_bid, reserve, date_time, expires, seller, category, auction, bidder, price, bid_date_time FROM (SELECT A.*, B.auction, B.bidder, B.price, B.date_time AS bid_date_time, ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.date_time, B.bidder, B.extra) AS rownum FROM auction A, bid B WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires) t WHERE rownum <= 1",
        false,
    ),
    (
        "q10",
        "SELECT auction, bidder, price, date_time, to_char(date_time, '%Y-%m-%d') AS date, to_char(date_time, '%H:%M') AS time FROM bid",
        false,
    ),
    (
        "q11",
        "SELECT bidder, count(*) AS bid_count, window_start AS starttime, window_end AS endtime FROM SESSION(bid, date_time, INTERVAL '10' SECOND, bidder) GROUP BY bidder, window_start, window_end",
        true,
    ),
    (
        "q13",
        "SELECT B.auction, B.bidder, B.price, B.date_time, S.value FROM bid B JOIN side_input S ON B.auction = S.key",
        false,
    ),
    (
        "q14",
        "SELECT auction, bidder, 0.908 * price AS price, CASE WHEN extract(hour FROM date_time) >= 8 AND extract(hour FROM date_time) <= 18 THEN 'dayTime' WHEN extract(hour FROM date_time) <= 6 OR extract(hour FROM date_time) >= 20 THEN 'nightTime' ELSE 'otherTime' END AS bid_time_type, date_time, extra FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000",
        false,
    ),
    (
        "q15",
        "SELECT to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, count(*) FILTER (WHERE price < 10000) AS rank1_bids, count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids, count(*) FILTER (WHERE price >= 1000000) AS rank3_bids, count(DISTINCT bidder) AS total_bidders, count(DISTINCT bidder) FILTER (WHERE price < 10000) AS rank1_bidders, count(DISTINCT auction) AS total_auctions FROM bid GROUP BY to_char(date_time, '%Y-%m-%d')",
        false,
    ),
    (
        "q16",
        "SELECT channel, to_char(date_time, '%Y-%m-%d') AS day, max(to_char(date_time, '%H:%M')) AS minute, count(*) AS total_bids, count(DISTINCT bidder) AS total_bidders, count(DISTINCT auction) FILTER (WHERE price >= 1000000) AS rank3_auctions FROM bid GROUP BY channel, to_char(date_time, '%Y-%m-%d')",
        false,
    ),
    (
        "q17",
        "SELECT auction, to_char(date_time, '%Y-%m-%d') AS day, count(*) AS total_bids, count(*) FILTER (WHERE price < 10000) AS rank1_bids, min(price) AS min_price, max(price) AS max_price, avg(price) AS avg_price, sum(price) AS sum_price FROM bid GROUP BY auction, to_char(date_time, '%Y-%m-%d')",
        false,
    ),
    (
        "q18",
        "SELECT auction, bidder, price, channel, url, date_time, extra FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC, price DESC, extra) AS rank_number FROM bid) t WHERE rank_number <= 1",
        false,
    ),
    (
        "q19",
        "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, date_time, bidder, extra) AS rank_number FROM bid) t WHERE rank_number <= 10",
        false,
    ),
    (
        "top_global",
        "SELECT auction, bidder, price FROM bid ORDER BY price DESC, auction, bidder, date_time, extra LIMIT 5",
        false,
    ),
    (
        "q20",
        "SELECT auction, bidder, price, channel, url, B.date_time AS bid_time, B.extra AS bid_extra, item_name, description, initial_bid, reserve, A.date_time AS auction_time, expires, seller, category, A.extra AS auction_extra FROM bid AS B INNER JOIN auction AS A ON B.auction = A.id WHERE A.category = 10",
        false,
    ),
    (
        "q21",
        "SELECT auction, bidder, price, channel, CASE WHEN lower(channel) = 'apple' THEN '0' WHEN lower(channel) = 'google' THEN '1' WHEN lower(channel) = 'facebook' THEN '2' WHEN lower(channel) = 'baidu' THEN '3' ELSE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] END AS channel_id FROM bid WHERE regexp_match(url, '(&|^)channel_id=([^&]*)')[2] IS NOT NULL OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')",
        false,
    ),
    (
        "q22",
        "SELECT auction, bidder, price, channel, split_part(url, '/', 4) AS dir1, split_part(url, '/', 5) AS dir2, split_part(url, '/', 6) AS dir3 FROM bid",
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
    let server = EddyServer::start("nexmark");
    let client = server.client().await;
    exec(&client, &sources()).await;
    for (name, query, close) in QUERIES {
        let emit = if *close { " EMIT ON WINDOW CLOSE" } else { "" };
        exec(
            &client,
            &format!("CREATE MATERIALIZED VIEW {name} AS {query}{emit}"),
        )
        .await;
    }
    wait_for_sources(&client).await;
    for (name, query, _) in QUERIES {
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

    exec(
        &client,
        "CREATE SOURCE slow_jitter (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
           WITH (connector = 'datagen', datagen.rows.total = '20000', datagen.rows.per.second = '5000',
                 fields.id.kind = 'sequence', fields.ts.kind = 'random',
                 fields.ts.start = '2026-01-01 00:01:00', fields.ts.max_past = '60 seconds');
         CREATE MATERIALIZED VIEW slow_per_window WITH (late_rows = 'slow_late') AS
           SELECT window_start, count(*) AS n, max(id) AS last_id
           FROM TUMBLE(slow_jitter, ts, INTERVAL '5' SECOND)
           GROUP BY window_start EMIT ON WINDOW CLOSE;",
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
}
