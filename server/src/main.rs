//! `eddy`: a streaming SQL database speaking the Postgres protocol.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tracing::{error, info};

use eddy_server::{
    DEFAULT_MAX_CHECKPOINT_BACKLOG, Engine, EngineConfig, PgHandler, StateBackend, StateConfig,
};

/// Command-line and environment configuration.
#[derive(Debug, Parser)]
#[command(
    name = "eddy",
    version,
    about = "Eddy: a streaming SQL database (Postgres wire protocol)"
)]
struct Config {
    /// Address to listen on.
    #[arg(long, env = "EDDY_LISTEN", default_value = "127.0.0.1:4466")]
    listen: SocketAddr,
    /// Directory holding Eddy's data.
    #[arg(long, env = "EDDY_DATA_DIR", default_value = "./eddy-data")]
    data_dir: PathBuf,
    /// Partitions per keyed operator (default: number of cores).
    #[arg(long, env = "EDDY_PARALLELISM")]
    parallelism: Option<usize>,
    /// Where Prometheus scrapes metrics (`/metrics`): checkpoints and more.
    #[arg(long, env = "EDDY_METRICS_LISTEN", default_value = "127.0.0.1:9466")]
    metrics_listen: SocketAddr,
    /// How often epochs end (barriers), in milliseconds; `SET
    /// checkpoint_interval = '...'` overrides it and persists.
    #[arg(long, env = "EDDY_CHECKPOINT_INTERVAL_MS", default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// Where views keep keyed state (aggregate groups) unless they say
    /// otherwise (`WITH (state_backend = ...)`): `memory`, or `rocksdb` (in
    /// the data directory, with a cache; for state larger than memory).
    #[arg(long, env = "EDDY_STATE_BACKEND", default_value = "memory", value_parser = parse_backend)]
    state_backend: StateBackend,
    /// The `rocksdb` state backend's cache, in MiB per stateful operator
    /// and partition.
    #[arg(long, env = "EDDY_STATE_CACHE_MB", default_value_t = 64)]
    state_cache_mb: u64,
    /// Checkpoints that cannot be written (a full disk) are kept in memory
    /// and written again; beyond this many MiB of them, epochs pause (views
    /// stay at their last epoch) until they are written.
    #[arg(long, env = "EDDY_MAX_CHECKPOINT_BACKLOG_MB", default_value_t = DEFAULT_MAX_CHECKPOINT_BACKLOG >> 20)]
    max_checkpoint_backlog_mb: u64,
}

fn parse_backend(name: &str) -> Result<StateBackend, String> {
    StateBackend::named(name).ok_or_else(|| format!("'{name}' is not memory or rocksdb"))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run(config: Config) -> Result<(), String> {
    let parallelism = config.parallelism.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(config.metrics_listen)
        .install()
        .map_err(|e| format!("cannot serve metrics on {}: {e}", config.metrics_listen))?;
    let engine_config = EngineConfig {
        parallelism,
        checkpoints: true,
        state: StateConfig {
            backend: config.state_backend,
            cache_bytes: config.state_cache_mb.saturating_mul(1 << 20),
        },
        max_checkpoint_backlog: config.max_checkpoint_backlog_mb.saturating_mul(1 << 20),
    };
    let engine = Engine::open(&config.data_dir, engine_config)
        .await
        .map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    info!(listen = %config.listen, data_dir = %config.data_dir.display(), parallelism, "eddy is ready");
    println!(
        "eddy listening on {} (data dir {})",
        config.listen,
        config.data_dir.display()
    );

    let ticker = engine.clone();
    let mut interval =
        engine.checkpoint_interval(Duration::from_millis(config.checkpoint_interval_ms));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(*interval.borrow_and_update());
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    ticker.tick().await;
                }
                // `SET checkpoint_interval` takes effect at once.
                Ok(()) = interval.changed() => {
                    tick = tokio::time::interval(*interval.borrow_and_update());
                }
            }
        }
    });

    let handler = Arc::new(PgHandler::new(engine.clone()));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => {
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        if let Err(e) = pgwire::tokio::process_socket(socket, None, handler).await {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => error!(error = %e, "accept failed"),
            },
            _ = &mut shutdown => {
                info!("shutting down");
                // Every DML statement is durable when it returns; nothing to save.
                return Ok(());
            }
        }
    }
}

/// Arms the fail points `FAILPOINTS` configures (`name=actions;...`, as
/// the `fail` crate reads them): the tests inject faults this way, e.g. a
/// pipeline failure to restart from. Without the variable, none is armed.
fn arm_fail_points() -> Result<(), String> {
    let Ok(points) = std::env::var("FAILPOINTS") else {
        return Ok(());
    };
    for point in points.split(';').filter(|p| !p.trim().is_empty()) {
        let (name, actions) = point
            .split_once('=')
            .ok_or_else(|| format!("{point:?} is not name=actions"))?;
        fail::cfg(name.trim(), actions.trim())?;
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    if let Err(e) = arm_fail_points() {
        eprintln!("eddy: FAILPOINTS: {e}");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("eddy: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(config)) {
        eprintln!("eddy: {e}");
        std::process::exit(1);
    }
}
