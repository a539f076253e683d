//! Maintenance throughput: rows streamed into a table feeding a GROUP BY
//! view and a join view, end to end (constraint checks, synced RocksDB
//! writes, every pipeline, commit).
//!
//! ```text
//! cargo run --release --bin eddy-bench -- [--rows N] [--batch B] [--parallelism P] \
//!     [--state-backend memory|rocksdb] [--state-cache-mb MB]
//! ```

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use eddy_executor::{StateBackend, StateConfig};
use eddy_server::{Engine, EngineConfig, Settings};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sql(engine: &Engine, text: &str) {
    for r in engine.execute_all(text, &mut Settings::new()).await {
        if let Err(e) = r {
            eprintln!("eddy-bench: {text}: {e}");
            std::process::exit(1);
        }
    }
}

/// Streams `rows` order rows into `orders` and returns the seconds until
/// every view reflects them.
async fn stream_orders(
    engine: &Engine,
    start: i64,
    rows: usize,
    batch: usize,
    customers: i64,
) -> f64 {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("customer", DataType::Int64, true),
        Field::new("amount", DataType::Int64, true),
    ]));
    let t0 = Instant::now();
    let mut next = start;
    while next < start + rows as i64 {
        let end = (next + batch as i64).min(start + rows as i64);
        let ids: Vec<i64> = (next..end).collect();
        // A cheap deterministic spread of customers and amounts.
        let customer: Vec<i64> = ids
            .iter()
            .map(|i| (i.wrapping_mul(2654435761) % customers).abs())
            .collect();
        let amount: Vec<i64> = ids.iter().map(|i| i % 1000).collect();
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(Int64Array::from(customer)),
                Arc::new(Int64Array::from(amount)),
            ],
        )
        .expect("batch");
        if let Err(e) = engine.insert_batch("orders", b).await {
            eprintln!("eddy-bench: insert: {e}");
            std::process::exit(1);
        }
        next = end;
    }
    sql(engine, "FLUSH").await;
    t0.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let rows = arg("--rows", 2_000_000);
    let batch = arg("--batch", 10_000);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let parallelism = arg("--parallelism", cores);
    let customers = 10_000i64;
    let backend = std::env::args()
        .skip_while(|a| a != "--state-backend")
        .nth(1)
        .map_or(Some(StateBackend::Memory), |name| {
            StateBackend::named(&name)
        })
        .unwrap_or_else(|| {
            eprintln!("eddy-bench: --state-backend takes memory or rocksdb");
            std::process::exit(2);
        });
    let cache_mb = arg("--state-cache-mb", 64) as u64;
    let mut config = EngineConfig::new(parallelism);
    config.state = StateConfig {
        backend,
        cache_bytes: cache_mb << 20,
    };
    let dir = std::env::temp_dir().join(format!("eddy-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let engine = match Engine::open(&dir, config).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("eddy-bench: {e}");
            std::process::exit(1);
        }
    };
    sql(&engine, "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer BIGINT, amount BIGINT); CREATE TABLE customers (id BIGINT PRIMARY KEY, region BIGINT)").await;
    sql(&engine, &format!("INSERT INTO customers SELECT value, value % 50 FROM generate_series(0, {}) AS t(value)", customers - 1)).await;

    println!(
        "eddy-bench: {rows} rows in batches of {batch}, parallelism {parallelism}, {cores} cores, state backend {} ({cache_mb} MiB cache)",
        backend.name()
    );
    println!(
        "{:<34} {:>12} {:>14} {:>14}",
        "pipeline", "seconds", "rows/s", "rows/s/core"
    );
    let report = |name: &str, secs: f64| {
        let rate = rows as f64 / secs;
        println!(
            "{name:<34} {secs:>12.2} {rate:>14.0} {:>14.0}",
            rate / cores as f64
        );
    };

    // Baseline: the table alone (storage + the table's own materialization).
    let secs = stream_orders(&engine, 0, rows, batch, customers).await;
    report("table only", secs);

    sql(&engine, "CREATE MATERIALIZED VIEW by_customer AS SELECT customer, count(*) AS n, sum(amount) AS total, min(amount) AS lo, max(amount) AS hi FROM orders GROUP BY customer").await;
    let secs = stream_orders(&engine, rows as i64, rows, batch, customers).await;
    report("table + GROUP BY view", secs);

    sql(&engine, "DROP MATERIALIZED VIEW by_customer").await;
    sql(&engine, "CREATE MATERIALIZED VIEW by_region AS SELECT c.region, o.id, o.amount FROM orders o JOIN customers c ON o.customer = c.id").await;
    let secs = stream_orders(&engine, 2 * rows as i64, rows, batch, customers).await;
    report("table + join view", secs);

    let _ = std::fs::remove_dir_all(&dir);
}
