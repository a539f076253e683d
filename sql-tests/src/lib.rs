//! Test support: a real `eddy` server process and Postgres-protocol clients.
//!
//! [`EddyServer`] starts the `eddy` binary built next to the test binary on a
//! free loopback port with its own data directory, and can `kill -9` and
//! restart it. [`PgDb`] plays `.slt` files through `tokio-postgres`.

pub mod kafka;
pub mod nexmark_queries;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// A running `eddy` process.
pub struct EddyServer {
    child: Option<Child>,
    /// Port it listens on.
    pub port: u16,
    /// Port of its Prometheus endpoint.
    pub metrics_port: u16,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Command-line arguments besides the listen addresses, data directory
    /// and checkpoint interval (kept across restarts).
    args: Vec<String>,
    /// Environment variables besides `RUST_LOG` (kept across restarts).
    env: Vec<(String, String)>,
}

/// Path of the `eddy` binary: `EDDY_BIN`, else the one built beside this one.
pub fn eddy_binary() -> PathBuf {
    if let Ok(p) = std::env::var("EDDY_BIN") {
        return PathBuf::from(p);
    }
    // Beside a binary (`target/<profile>/`), or above a test binary's `deps/`.
    let exe = std::env::current_exe().expect("test binary path");
    let beside = exe.with_file_name("eddy");
    if beside.exists() {
        return beside;
    }
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join("eddy")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A fresh, empty directory under the system temp dir.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "eddy-test-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl EddyServer {
    /// Starts a server on a new data directory.
    pub fn start(name: &str) -> Self {
        Self::start_on(fresh_dir(name))
    }

    /// Starts a server on a new data directory, with `args` besides the usual.
    pub fn start_with(name: &str, args: &[&str]) -> Self {
        Self::start_on_with(fresh_dir(name), args)
    }

    /// Starts a server on a new data directory, with environment `env`
    /// (e.g. `FAILPOINTS`, to inject faults).
    pub fn start_with_env(name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_on_with_env(fresh_dir(name), &[], env)
    }

    /// Starts a server on `data_dir` (which may hold earlier data).
    pub fn start_on(data_dir: PathBuf) -> Self {
        Self::start_on_with(data_dir, &[])
    }

    /// Starts a server on `data_dir`, with `args` besides the usual.
    pub fn start_on_with(data_dir: PathBuf, args: &[&str]) -> Self {
        Self::start_on_with_env(data_dir, args, &[])
    }

    fn start_on_with_env(data_dir: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            metrics_port: free_port(),
            data_dir,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.spawn();
        server
    }

    /// Starts the process and waits until it listens. A port picked free
    /// may be taken by another test's server before this one binds it; a
    /// server that exits during start is tried again on new ports.
    fn spawn(&mut self) {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            match self.try_spawn() {
                Ok(()) => return,
                Err(status) if attempt < ATTEMPTS => {
                    eprintln!("eddy exited during start ({status}); trying new ports");
                    self.port = free_port();
                    self.metrics_port = free_port();
                }
                Err(status) => panic!("eddy exited during start {ATTEMPTS} times: {status}"),
            }
        }
    }

    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let bin = eddy_binary();
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--checkpoint-interval-ms")
            .arg("100")
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (build it with `cargo build --bin eddy`)",
                    bin.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(status);
            }
            assert!(
                Instant::now() < deadline,
                "eddy did not start listening within 60s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `kill -9` the process.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sets the arguments the next start gets besides the usual.
    pub fn set_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Sets the environment variables the next start gets besides `RUST_LOG`.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Kill -9 and start again on the same data directory (and port, unless
    /// another process took it meanwhile).
    pub fn restart_after_kill9(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// What its Prometheus endpoint serves (`GET /metrics`).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics port");
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: eddy\r\n\r\n")
            .expect("metrics request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("metrics response");
        response
    }

    /// A connection string for `tokio-postgres`.
    pub fn conn_str(&self) -> String {
        format!("host=127.0.0.1 port={} user=root dbname=dev", self.port)
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.conn_str(), NoTls)
            .await
            .expect("connect to eddy");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for EddyServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Runs `sql` with the simple protocol and returns its rows as text (`NULL` for nulls), sorted.
pub async fn rows_sorted(client: &Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut rows: Vec<String> = client
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect();
    rows.sort();
    Ok(rows)
}

/// Runs `sql`, which must fail, and returns the server's error message.
pub async fn error_message(client: &Client, sql: &str) -> String {
    match client.simple_query(sql).await {
        Ok(_) => panic!("{sql} did not fail"),
        Err(e) => e
            .as_db_error()
            .map(|db| db.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// A sqllogictest database over one Postgres connection.
pub struct PgDb {
    client: Client,
}

impl PgDb {
    /// Connects to the server at `conn` (a tokio-postgres connection string).
    pub async fn connect(conn: &str) -> Result<Self, PgError> {
        let (client, connection) = tokio_postgres::connect(conn, NoTls)
            .await
            .map_err(PgError)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { client })
    }
}

/// A client error that shows the server's message, not just "db error".
#[derive(Debug)]
pub struct PgError(pub tokio_postgres::Error);

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{}: {}", db.code().code(), db.message()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for PgError {}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for PgDb {
    type Error = PgError;
    type ColumnType = sqllogictest::DefaultColumnType;

    async fn run(
        &mut self,
        sql: &str,
    ) -> Result<sqllogictest::DBOutput<Self::ColumnType>, Self::Error> {
        let messages = self.client.simple_query(sql).await.map_err(PgError)?;
        let mut rows = Vec::new();
        let mut width = None;
        let mut count = 0;
        for m in messages {
            match m {
                SimpleQueryMessage::Row(r) => {
                    width = Some(r.len());
                    rows.push(
                        (0..r.len())
                            .map(|i| match r.get(i) {
                                None => "NULL".to_string(),
                                Some("") => "(empty)".to_string(),
                                Some(v) => v.to_string(),
                            })
                            .collect(),
                    );
                }
                SimpleQueryMessage::RowDescription(d) => width = Some(d.len()),
                SimpleQueryMessage::CommandComplete(n) => count = n,
                _ => {}
            }
        }
        Ok(match width {
            Some(w) => sqllogictest::DBOutput::Rows {
                types: vec![sqllogictest::DefaultColumnType::Any; w],
                rows,
            },
            None => sqllogictest::DBOutput::StatementComplete(count),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "eddy"
    }

    async fn sleep(dur: Duration) {
        tokio::time::sleep(dur).await;
    }

    fn error_sql_state(err: &Self::Error) -> Option<String> {
        err.0.code().map(|c| c.code().to_string())
    }
}

/// Runs `attempt` until it returns `Ok`, for up to `within`, running
/// `between` after each failed attempt; then panics with the last error.
/// For what a test waits to come true on a live server.
pub async fn retry_until(
    within: Duration,
    mut attempt: impl AsyncFnMut() -> Result<(), String>,
    mut between: impl AsyncFnMut(),
) {
    let deadline = Instant::now() + within;
    loop {
        let Err(why) = attempt().await else {
            return;
        };
        assert!(Instant::now() < deadline, "{why}");
        between().await;
    }
}

/// A random generator seeded from environment variable `var` (or at
/// random), said on stderr so a failing run can be repeated.
pub fn seeded_rng(var: &str) -> rand::rngs::SmallRng {
    use rand::SeedableRng;
    let seed: u64 = std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{var}={seed}");
    rand::rngs::SmallRng::seed_from_u64(seed)
}
