//! Nexmark throughput: N events from the in-process generator through one
//! query's materialized-view pipeline, per query, each in a fresh process
//! (so peak memory is the query's own).
//!
//! ```text
//! cargo run --release --bin eddy-nexmark -- [--events N | --timeline SECONDS] [--parallelism P] [--queries q0,q1,...] [--checkpoints on|off] [--state-backend memory|rocksdb] [--state-cache-mb MB] [--source nexmark|kafka]
//! ```
//!
//! With `--source kafka`, the events are first generated, encoded as JSON
//! and produced into topics of an in-process Kafka mock broker (one
//! partition per core); the sources then read those topics, so the numbers
//! include consuming and decoding. Producing is not timed.
//!
//! Prints, per query: seconds from the view's creation until its readers
//! reached the end of the bounded sources and every change was committed;
//! source rows per second (total and per core); CPU seconds the process
//! used meanwhile (all threads) and source rows per CPU second, which the
//! machine's other load disturbs less than wall time; peak resident memory; the
//! view's row count; operator state rows (`eddy_catalog.operator_state`),
//! the largest seen (sampled every ~0.5 s) and at the end. Barriers run every
//! second, as in the server.
//!
//! With `--timeline SECONDS`, the sources are unbounded instead and each
//! query runs for that long, printing a line every twelfth of it: rows read,
//! the rate since the last line, resident memory, operator state rows and
//! view rows. With a watermark, state stays flat however long a run lasts.

use std::process::Command;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::arrow::json::LineDelimitedWriter;
use eddy_server::{Engine, EngineConfig, Outcome, Settings, StateBackend, StateConfig};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

// The standard queries, shared with the test that checks each against its
// batch query.
#[path = "../../../sql-tests/src/nexmark_queries.rs"]
mod nexmark_queries;

/// Views measured besides the standard queries (name, query).
const EXTRA_QUERIES: &[(&str, &str)] = &[
    (
        "q5_close",
        "SELECT auction, window_start, count(*) AS num FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start EMIT ON WINDOW CLOSE",
    ),
    // Window top-N ("hot items"): the 3 auctions with most bids per
    // sliding window, as each window's counts change.
    (
        "q5_top",
        "SELECT window_start, auction, num FROM (SELECT window_start, auction, num, ROW_NUMBER() OVER (PARTITION BY window_start ORDER BY num DESC, auction) AS rn FROM (SELECT auction, window_start, count(*) AS num FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start) c) t WHERE rn <= 3",
    ),
    // Processing-time windows: not in the shared list, as no batch query
    // can check them (restart.rs checks what must hold instead).
    (
        "q12",
        "SELECT bidder, count(*) AS bid_count, window_start, window_end FROM TUMBLE(bid, p_time, INTERVAL '10' SECOND) GROUP BY bidder, window_start, window_end",
    ),
];

/// What runs without `--queries`.
const DEFAULT_QUERIES: &[&str] = &[
    "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "q11", "q5_close",
];

/// Every query the benchmark knows, by name, with its `EMIT` clause.
fn queries() -> Vec<(&'static str, String)> {
    let standard = nexmark_queries::NEXMARK_QUERIES
        .iter()
        .map(|(name, query, close)| {
            let emit = if *close { " EMIT ON WINDOW CLOSE" } else { "" };
            (*name, format!("{query}{emit}"))
        });
    let extra = EXTRA_QUERIES.iter().map(|(n, q)| (*n, q.to_string()));
    standard.chain(extra).collect()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("eddy-nexmark: {message}");
    std::process::exit(1);
}

async fn sql(engine: &Engine, text: &str) -> Vec<Outcome> {
    engine
        .execute_all(text, &mut Settings::new())
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| fail(format!("{text}: {e}"))))
        .collect()
}

/// The first column of the first row of `text`'s answer, as u64.
async fn scalar(engine: &Engine, text: &str) -> u64 {
    for outcome in sql(engine, text).await {
        if let Outcome::Rows { batches, .. } = outcome
            && let Some(b) = batches.iter().find(|b| b.num_rows() > 0)
        {
            let column = datafusion::arrow::compute::cast(
                b.column(0),
                &datafusion::arrow::datatypes::DataType::UInt64,
            )
            .unwrap_or_else(|e| fail(e));
            let values = column.as_primitive::<UInt64Type>();
            return if values.is_null(0) {
                0
            } else {
                values.value(0)
            };
        }
    }
    0
}

/// Peak resident memory of this process, in MiB.
fn peak_rss_mib() -> f64 {
    memory_mib("VmHWM:")
}

/// Resident memory of this process now, in MiB.
fn rss_mib() -> f64 {
    memory_mib("VmRSS:")
}

/// The `field` line of `/proc/self/status` (in kB), in MiB.
fn memory_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds (user and system, all threads) this process has used. The
/// kernel counts them in `USER_HZ` ticks, which is 100 on Linux.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let after = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

const KINDS: [(&str, &str); 3] = [
    (
        "person",
        "id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR, state VARCHAR, date_time TIMESTAMP, extra VARCHAR",
    ),
    (
        "auction",
        "id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR",
    ),
    (
        "bid",
        "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP, extra VARCHAR, p_time AS PROCTIME()",
    ),
];

/// `person`, `auction` and `bid` as sources named `{prefix}{kind}`, with
/// a watermark 4 s behind their event time and options `with(kind)`.
fn sources(prefix: &str, with: impl Fn(&str) -> String) -> String {
    KINDS
        .iter()
        .map(|(kind, columns)| {
            format!(
                "CREATE SOURCE {prefix}{kind} ({columns}, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) {};",
                with(kind)
            )
        })
        .collect()
}

/// Nexmark sources of `events` events, or unbounded, one alignment
/// group: read as fast as they go, the three streams keep together in
/// event time, as the one stream of events they come from.
fn nexmark_options(events: Option<u64>) -> impl Fn(&str) -> String {
    move |kind| {
        let events = events
            .map(|n| format!("nexmark.event.num = '{n}', "))
            .unwrap_or_default();
        format!(
            "WITH (connector = 'nexmark', nexmark.table.type = '{kind}', {events}nexmark.base.time = '1767225600000', watermark.alignment.group = 'nexmark')"
        )
    }
}

/// Produces the events of bounded sources `gen_<kind>` as JSON into topics
/// `<kind>` of a mock broker with at least `partitions` partitions each;
/// returns the broker and how many messages each topic got.
async fn fill_topics(
    engine: &Engine,
    events: u64,
    partitions: usize,
) -> (
    MockCluster<'static, DefaultProducerContext>,
    Vec<(String, u64)>,
) {
    let broker = MockCluster::new(1).unwrap_or_else(|e| fail(e));
    sql(engine, &sources("gen_", nexmark_options(Some(events)))).await;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap_or_else(|e| fail(e));
    let mut counts = Vec::new();
    for (kind, _) in KINDS {
        let mut batches = Vec::new();
        for outcome in sql(engine, &format!("SELECT * FROM gen_{kind}")).await {
            if let Outcome::Rows { batches: b, .. } = outcome {
                batches.extend(b);
            }
        }
        // The mock broker keeps only the last 5 MB of a partition: enough
        // partitions that nothing is dropped before it is read (JSON events
        // are under 400 bytes).
        let events: usize = batches.iter().map(|b| b.num_rows()).sum();
        let partitions = partitions.max((events * 400).div_ceil(4 << 20));
        broker
            .create_topic(kind, partitions as i32, 1)
            .unwrap_or_else(|e| fail(e));
        let mut sent = 0u64;
        for batch in batches {
            let mut writer = LineDelimitedWriter::new(Vec::new());
            writer.write(&batch).unwrap_or_else(|e| fail(e));
            writer.finish().unwrap_or_else(|e| fail(e));
            for line in writer.into_inner().split(|&b| b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                let partition = (sent % partitions as u64) as i32;
                let mut record = Some(
                    BaseRecord::<(), [u8]>::to(kind)
                        .partition(partition)
                        .payload(line),
                );
                while let Some(r) = record.take() {
                    if let Err((_, r)) = producer.send(r) {
                        std::thread::sleep(Duration::from_millis(5));
                        record = Some(r);
                    }
                }
                sent += 1;
            }
        }
        counts.push((kind.to_string(), sent));
    }
    producer
        .flush(Duration::from_secs(300))
        .unwrap_or_else(|e| fail(e));
    (broker, counts)
}

/// How each query runs.
struct RunConfig {
    events: u64,
    parallelism: usize,
    cores: usize,
    checkpoints: bool,
    state: StateConfig,
    kafka: bool,
}

/// An engine in a fresh data directory, ticking every second as the
/// server does; and that directory.
async fn open_engine(config: &RunConfig) -> (std::sync::Arc<Engine>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("eddy-nexmark-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine_config = EngineConfig {
        parallelism: config.parallelism,
        checkpoints: config.checkpoints,
        state: config.state,
        ..EngineConfig::new(config.parallelism)
    };
    let engine = Engine::open(&dir, engine_config)
        .await
        .unwrap_or_else(|e| fail(e));
    let ticker = engine.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            ticker.tick().await;
        }
    });
    (engine, dir)
}

/// The query named `name`, or exit.
fn query_named(name: &str) -> String {
    match queries().into_iter().find(|(n, _)| *n == name) {
        Some((_, query)) => query,
        None => fail(format!("unknown query {name}")),
    }
}

/// q13's side input: every third auction id of the first thousands.
const SIDE_INPUT: &str = "CREATE TABLE side_input (key BIGINT PRIMARY KEY, value VARCHAR);
     INSERT INTO side_input SELECT value, 'v' || value FROM generate_series(1000, 9999, 3)";

/// Operator state rows of view `name`.
fn state_rows_of(name: &str) -> String {
    format!("SELECT sum(state_rows) FROM eddy_catalog.operator_state WHERE relation = '{name}'")
}

/// Source rows view `name` read.
fn rows_read_by(name: &str) -> String {
    format!("SELECT sum(rows_read) FROM eddy_catalog.source_readers WHERE relation = '{name}'")
}

/// Runs one query in this process over unbounded sources for `seconds`,
/// printing a line every twelfth of it.
async fn run_timeline(name: &str, config: &RunConfig, seconds: u64) {
    let query = query_named(name);
    let (engine, dir) = open_engine(config).await;
    sql(&engine, &sources("", nexmark_options(None))).await;
    sql(&engine, SIDE_INPUT).await;
    let t0 = Instant::now();
    sql(
        &engine,
        &format!("CREATE MATERIALIZED VIEW {name} AS {query}"),
    )
    .await;
    let every = Duration::from_secs((seconds / 12).max(1));
    let (mut last_rows, mut last_at) = (0, t0);
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(every).await;
        let rows = scalar(&engine, &rows_read_by(name)).await;
        let state = scalar(&engine, &state_rows_of(name)).await;
        let view_rows = scalar(&engine, &format!("SELECT count(*) FROM {name}")).await;
        let rate = rows.saturating_sub(last_rows) as f64 / last_at.elapsed().as_secs_f64();
        (last_rows, last_at) = (rows, Instant::now());
        println!(
            "{name:<9} {:>9.0} {rows:>13} {rate:>13.0} {:>10.0} {state:>11} {view_rows:>11}",
            t0.elapsed().as_secs_f64(),
            rss_mib(),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs one query in this process and prints its result line.
async fn run_one(name: &str, config: &RunConfig) {
    let query = query_named(name);
    let RunConfig {
        events,
        parallelism,
        cores,
        kafka,
        ..
    } = *config;
    let (engine, dir) = open_engine(config).await;
    // Kafka: the broker lives as long as the run; every source's reader
    // is done when it read as many rows as its topic holds.
    let (_broker, expected) = if kafka {
        let (broker, counts) = fill_topics(&engine, events, parallelism).await;
        let bootstrap = broker.bootstrap_servers();
        sql(
            &engine,
            &sources("", |kind| {
                format!(
                    "WITH (connector = 'kafka', topic = '{kind}', properties.bootstrap.server = '{bootstrap}') FORMAT PLAIN ENCODE JSON"
                )
            }),
        )
        .await;
        (Some(broker), counts)
    } else {
        sql(&engine, &sources("", nexmark_options(Some(events)))).await;
        (None, vec![])
    };
    let pending_readers = if kafka {
        // Malformed messages are skipped, not read.
        let expected: Vec<String> = expected
            .iter()
            .map(|(kind, n)| {
                format!("(r.source = '{kind}' AND r.rows_read + coalesce(e.bad, 0) < {n})")
            })
            .collect();
        format!(
            "SELECT count(*) FROM eddy_catalog.source_readers r LEFT JOIN
               (SELECT source, max(source_total) AS bad FROM eddy_catalog.source_errors GROUP BY source) e
               ON r.source = e.source WHERE {}",
            expected.join(" OR ")
        )
    } else {
        "SELECT count(*) FROM eddy_catalog.source_readers WHERE finished_splits < splits".into()
    };
    sql(&engine, SIDE_INPUT).await;
    let t0 = Instant::now();
    let cpu0 = cpu_seconds();
    sql(
        &engine,
        &format!("CREATE MATERIALIZED VIEW {name} AS {query}"),
    )
    .await;
    let state_rows = state_rows_of(name);
    let mut peak_state = 0;
    let mut polls = 0u64;
    loop {
        let pending = scalar(&engine, &pending_readers).await;
        if pending == 0 {
            break;
        }
        polls += 1;
        if polls.is_multiple_of(25) {
            peak_state = peak_state.max(scalar(&engine, &state_rows).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sql(&engine, "FLUSH").await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let final_state = scalar(&engine, &state_rows).await;
    peak_state = peak_state.max(final_state);
    let rows = scalar(&engine, &rows_read_by(name)).await;
    let result_rows = scalar(&engine, &format!("SELECT count(*) FROM {name}")).await;
    let malformed = scalar(
        &engine,
        "SELECT coalesce(sum(total), 0) FROM (SELECT max(source_total) AS total FROM eddy_catalog.source_errors GROUP BY source)",
    )
    .await;
    if malformed > 0 {
        eprintln!("{name}: {malformed} malformed messages skipped");
    }
    let rate = rows as f64 / secs;
    println!(
        "{name:<9} {rows:>11} {secs:>9.2} {rate:>13.0} {:>13.0} {cpu:>7.2} {:>13.0} {:>10.0} {result_rows:>11} {peak_state:>11} {final_state:>11}",
        rate / cores as f64,
        rows as f64 / cpu.max(0.01),
        peak_rss_mib(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main]
async fn main() {
    let events: u64 = arg("--events")
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail("--events takes a number"))
        })
        .unwrap_or(10_000_000);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let parallelism: usize = arg("--parallelism")
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail("--parallelism takes a number"))
        })
        .unwrap_or(cores);
    let checkpoints = match arg("--checkpoints").as_deref() {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => fail(format!("--checkpoints takes on or off, not {other}")),
    };
    let backend = match arg("--state-backend") {
        None => StateBackend::Memory,
        Some(name) => StateBackend::named(&name).unwrap_or_else(|| {
            fail(format!(
                "--state-backend takes memory or rocksdb, not {name}"
            ))
        }),
    };
    let cache_mb: u64 = arg("--state-cache-mb")
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail("--state-cache-mb takes a number"))
        })
        .unwrap_or(StateConfig::default().cache_bytes >> 20);
    let state = StateConfig {
        backend,
        cache_bytes: cache_mb.saturating_mul(1 << 20),
    };
    let kafka = match arg("--source").as_deref() {
        None | Some("nexmark") => false,
        Some("kafka") => true,
        Some(other) => fail(format!("--source takes nexmark or kafka, not {other}")),
    };
    let timeline: Option<u64> = arg("--timeline").map(|v| {
        v.parse()
            .unwrap_or_else(|_| fail("--timeline takes a number of seconds"))
    });
    if timeline.is_some() && kafka {
        fail("--timeline reads unbounded nexmark sources, not kafka");
    }
    let config = RunConfig {
        events,
        parallelism,
        cores,
        checkpoints,
        state,
        kafka,
    };
    if let Some(one) = arg("--run-one") {
        match timeline {
            Some(seconds) => run_timeline(&one, &config, seconds).await,
            None => run_one(&one, &config).await,
        }
        return;
    }
    let selected: Vec<String> = match arg("--queries") {
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None => DEFAULT_QUERIES.iter().map(|n| n.to_string()).collect(),
    };
    let run = match timeline {
        Some(seconds) => format!("unbounded sources for {seconds} s"),
        None => format!("{events} events per source"),
    };
    println!(
        "eddy-nexmark: {run}, parallelism {parallelism}, {cores} cores, checkpoints {}, state backend {} ({cache_mb} MiB cache), source {}",
        if checkpoints { "on (1 s)" } else { "off" },
        backend.name(),
        if kafka {
            "kafka (JSON)"
        } else {
            "nexmark (in-process)"
        }
    );
    if timeline.is_some() {
        println!(
            "{:<9} {:>9} {:>13} {:>13} {:>10} {:>11} {:>11}",
            "query", "seconds", "rows read", "rows/s", "RSS MiB", "state rows", "view rows"
        );
    } else {
        println!(
            "{:<9} {:>11} {:>9} {:>13} {:>13} {:>7} {:>13} {:>10} {:>11} {:>11} {:>11}",
            "query",
            "rows read",
            "seconds",
            "rows/s",
            "rows/s/core",
            "cpu s",
            "rows/cpu-s",
            "peak MiB",
            "view rows",
            "peak state",
            "end state"
        );
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| fail(e));
    for name in selected {
        let mut command = Command::new(&exe);
        if let Some(seconds) = timeline {
            command.args(["--timeline", &seconds.to_string()]);
        }
        let status = command
            .args([
                "--run-one",
                &name,
                "--events",
                &events.to_string(),
                "--parallelism",
                &parallelism.to_string(),
                "--checkpoints",
                if checkpoints { "on" } else { "off" },
                "--state-backend",
                backend.name(),
                "--state-cache-mb",
                &cache_mb.to_string(),
                "--source",
                if kafka { "kafka" } else { "nexmark" },
            ])
            .status()
            .unwrap_or_else(|e| fail(e));
        if !status.success() {
            fail(format!("{name} failed"));
        }
    }
}
