//! The Nexmark benchmark's queries, as Eddy runs them: one list for the
//! test that checks each view against its batch query
//! (`tests/nexmark.rs`) and the throughput benchmark (`eddy-nexmark`, which
//! includes this file).
//!
//! Sources are `person`, `auction` and `bid` with the standard columns;
//! q13 also reads a table `side_input (key BIGINT PRIMARY KEY, value
//! VARCHAR)`. q12 (processing-time windows) is not here: its result
//! depends on when rows are read, so no batch query can check it
//! (`tests/restart.rs` checks what must hold of it across a crash).

/// (name, query, `EMIT ON WINDOW CLOSE`).
pub const NEXMARK_QUERIES: &[(&str, &str, bool)] = &[
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
    // The average selling price of each seller's last auctions (an
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
];
