//! The extended query protocol: prepared statements with `$n` parameters,
//! binary results, and the type OIDs drivers rely on.

use eddy_sql_tests::EddyServer;
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_with_parameters() {
    let server = EddyServer::start("extended");
    let client = server.client().await;
    client
        .batch_execute("SET implicit_flush = true; CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT, flag BOOLEAN, small SMALLINT, i INT, f DOUBLE PRECISION, r REAL, d DATE, ts TIMESTAMP)")
        .await
        .expect("create");
    let insert = client.prepare("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, '2026-01-02', '2026-01-02 03:04:05')").await.expect("prepare insert");
    for id in 0..5i64 {
        let n = client
            .execute(
                &insert,
                &[
                    &id,
                    &format!("n{id}"),
                    &(id % 2 == 0),
                    &(id as i16),
                    &(id as i32 * 10),
                    &(id as f64 / 2.0),
                    &(id as f32),
                ],
            )
            .await
            .expect("insert");
        assert_eq!(n, 1);
    }
    let select = client
        .prepare("SELECT id, name, flag, small, i, f, r, d, ts FROM t WHERE id >= $1 ORDER BY id")
        .await
        .expect("prepare select");
    let types: Vec<Type> = select.columns().iter().map(|c| c.type_().clone()).collect();
    assert_eq!(
        types,
        vec![
            Type::INT8,
            Type::TEXT,
            Type::BOOL,
            Type::INT2,
            Type::INT4,
            Type::FLOAT8,
            Type::FLOAT4,
            Type::DATE,
            Type::TIMESTAMP
        ]
    );
    assert_eq!(select.params(), &[Type::INT8]);
    let rows = client.query(&select, &[&3i64]).await.expect("select");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, i64>(0), 3);
    assert_eq!(rows[0].get::<_, String>(1), "n3");
    assert!(!rows[0].get::<_, bool>(2));
    assert_eq!(rows[1].get::<_, i16>(3), 4);
    assert_eq!(rows[1].get::<_, i32>(4), 40);
    assert_eq!(rows[1].get::<_, f64>(5), 2.0);
    assert_eq!(rows[1].get::<_, f32>(6), 4.0);

    let n = client
        .execute("UPDATE t SET name = $1 WHERE id = $2", &[&"renamed", &1i64])
        .await
        .expect("update");
    assert_eq!(n, 1);
    let n = client
        .execute("DELETE FROM t WHERE id = $1", &[&0i64])
        .await
        .expect("delete");
    assert_eq!(n, 1);
    let row = client
        .query_one("SELECT count(*), min(name) FROM t", &[])
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 4);
    assert_eq!(row.get::<_, String>(1), "n2");

    // NULL parameters and results.
    client
        .execute(
            "INSERT INTO t (id, name) VALUES ($1, $2)",
            &[&9i64, &None::<String>],
        )
        .await
        .expect("insert null");
    let row = client
        .query_one("SELECT name, flag FROM t WHERE id = $1", &[&9i64])
        .await
        .expect("null row");
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, Option<bool>>(1), None);

    // A bad statement is an error with a SQLSTATE, and the connection lives on.
    let err = client
        .prepare("SELECT * FROM nowhere")
        .await
        .expect_err("unknown table");
    assert_eq!(err.code().map(|c| c.code()), Some("42P01"));
    let err = client
        .execute("INSERT INTO t (id) VALUES ($1)", &[&1i64])
        .await
        .expect_err("duplicate key");
    assert_eq!(err.code().map(|c| c.code()), Some("23505"));
    let row = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("still alive");
    assert_eq!(row.get::<_, i64>(0), 5);
}
