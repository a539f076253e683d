//! psql's own catalog commands against a real server.

use eddy_sql_tests::EddyServer;

fn psql(server: &EddyServer, command: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port.to_string(),
            "-U",
            "root",
            "-d",
            "dev",
            "-X",
            "-c",
            command,
        ])
        .output()
        .expect("psql must be installed (.ci/run installs postgresql-client)");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "psql -c '{command}' failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describe_commands() {
    let server = EddyServer::start("psql");
    let client = server.client().await;
    client
        .batch_execute(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT, amount DECIMAL(12,2));
             CREATE MATERIALIZED VIEW revenue AS SELECT customer, sum(amount) AS total FROM orders GROUP BY customer;
             CREATE VIEW small AS SELECT id FROM orders WHERE amount < 10;",
        )
        .await
        .expect("setup");
    let dt = psql(&server, "\\dt");
    assert!(dt.contains("orders"), "\\dt:\n{dt}");
    assert!(!dt.contains("revenue"), "a view is not a table:\n{dt}");
    let dm = psql(&server, "\\dm");
    assert!(dm.contains("revenue"), "\\dm:\n{dm}");
    assert!(!dm.contains("orders"), "\\dm lists only views:\n{dm}");
    let dv = psql(&server, "\\dv");
    assert!(dv.contains("small"), "\\dv:\n{dv}");
    let d = psql(&server, "\\d orders");
    for word in ["id", "customer", "amount", "bigint", "numeric"] {
        assert!(d.contains(word), "\\d orders lacks {word}:\n{d}");
    }
    let d = psql(&server, "\\d revenue");
    assert!(d.contains("total"), "\\d revenue:\n{d}");
    let version = psql(&server, "SELECT version()");
    assert!(version.contains("PostgreSQL 15"), "{version}");
}
