//! Plays every `sql-tests/slt/*.slt` file against its own fresh server,
//! with a Kafka broker holding the topics in `slt/topics/`.

use eddy_sql_tests::kafka::KafkaBroker;
use eddy_sql_tests::{EddyServer, PgDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("slt dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let only = std::env::var("SLT").ok();
    // Topics the files read (`slt/topics/<topic>.txt`), on a broker they
    // reach as `${KAFKA_BROKER}` (with `control substitution on`).
    let kafka = KafkaBroker::start();
    kafka.seed(&dir.join("topics"));
    let mut failures = Vec::new();
    for file in &files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("slt")
            .to_string();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        // No cache for the `rocksdb` state backend: its views read every
        // group back from RocksDB (see `state_backend.slt`).
        let server = EddyServer::start_with(&name, &["--state-cache-mb", "0"]);
        let conn = server.conn_str();
        let mut runner = sqllogictest::Runner::new(move || {
            let conn = conn.clone();
            async move { PgDb::connect(&conn).await }
        });
        runner.set_var("KAFKA_BROKER".into(), kafka.bootstrap());
        match runner.run_file_async(file).await {
            Ok(()) => eprintln!("ok   {name}"),
            Err(e) => {
                eprintln!("FAIL {name}: {e}");
                failures.push(format!("{name}: {e}"));
            }
        }
        drop(server);
    }
    assert!(
        failures.is_empty(),
        "{} slt file(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
