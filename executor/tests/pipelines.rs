//! Whole pipelines: tables, views, epochs, backfill.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use eddy_executor::{Op, ReadTarget, Runtime, StreamChunk};

fn schema(cols: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(
        cols.iter()
            .map(|c| Field::new(*c, DataType::Int64, true))
            .collect::<Vec<_>>(),
    ))
}

fn rows(schema: &SchemaRef, rows: &[&[Option<i64>]], op: Op) -> StreamChunk {
    let columns = (0..schema.fields().len())
        .map(|c| {
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r[c]).collect::<Vec<_>>(),
            )) as _
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
    StreamChunk {
        ops: vec![op; batch.num_rows()].into(),
        batch,
    }
}

/// Tables `l(k, v)` and `r(k, w)` (ids 1, 2) and a DataFusion context knowing them.
async fn setup() -> (Arc<Runtime>, SessionContext, SchemaRef, SchemaRef) {
    let runtime = Runtime::new(2);
    let (l, r) = (schema(&["k", "v"]), schema(&["k", "w"]));
    let ctx = SessionContext::new();
    ctx.register_table(
        "l",
        Arc::new(MemTable::try_new(l.clone(), vec![vec![]]).expect("l")),
    )
    .expect("register");
    ctx.register_table(
        "r",
        Arc::new(MemTable::try_new(r.clone(), vec![vec![]]).expect("r")),
    )
    .expect("register");
    let guard = runtime.write_lock().await;
    runtime.create_table(&guard, 1, l.clone()).expect("l");
    runtime.create_table(&guard, 2, r.clone()).expect("r");
    drop(guard);
    (runtime, ctx, l, r)
}

async fn create_view(runtime: &Runtime, ctx: &SessionContext, id: u32, sql: &str) {
    let plan = ctx
        .sql(sql)
        .await
        .expect("plan")
        .into_optimized_plan()
        .expect("optimize");
    let stream = eddy_planner::lower(&plan).expect("lower");
    let names: HashMap<&str, u32> = [("l", 1), ("r", 2)].into();
    let guard = runtime.write_lock().await;
    let quiesced = runtime.quiesce(&guard).await;
    runtime
        .create_view(&quiesced, id, &stream, Default::default(), &|n| {
            names.get(n).copied().map(ReadTarget::Relation)
        })
        .expect("create view");
}

async fn publish(runtime: &Runtime, table: u32, chunk: StreamChunk) {
    let guard = runtime.write_lock().await;
    runtime.publish(&guard, table, chunk, 0).await;
}

/// Committed rows of relation `id`, as sorted text.
async fn contents(runtime: &Runtime, id: u32) -> Vec<String> {
    runtime.flush().await;
    let read = runtime.coordinator().read(&[id]).expect("read");
    let mut out = Vec::new();
    for batch in read[&id].iter() {
        for row in 0..batch.num_rows() {
            let cells: Vec<String> = batch
                .columns()
                .iter()
                .map(|c| {
                    if c.is_null(row) {
                        "NULL".into()
                    } else {
                        array_value_to_string(c, row).unwrap_or_default()
                    }
                })
                .collect();
            out.push(cells.join(","));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_join_pads_and_unpads_as_matches_come_and_go() {
    let (runtime, ctx, l, r) = setup().await;
    create_view(
        &runtime,
        &ctx,
        3,
        "SELECT l.k, l.v, r.w FROM l LEFT JOIN r ON l.k = r.k",
    )
    .await;
    publish(
        &runtime,
        1,
        rows(
            &l,
            &[
                &[Some(1), Some(10)],
                &[Some(2), Some(20)],
                &[None, Some(30)],
            ],
            Op::Insert,
        ),
    )
    .await;
    assert_eq!(
        contents(&runtime, 3).await,
        ["1,10,NULL", "2,20,NULL", "NULL,30,NULL"]
    );
    publish(
        &runtime,
        2,
        rows(
            &r,
            &[&[Some(1), Some(100)], &[Some(1), Some(101)]],
            Op::Insert,
        ),
    )
    .await;
    assert_eq!(
        contents(&runtime, 3).await,
        ["1,10,100", "1,10,101", "2,20,NULL", "NULL,30,NULL"]
    );
    publish(
        &runtime,
        2,
        rows(
            &r,
            &[&[Some(1), Some(100)], &[Some(1), Some(101)]],
            Op::Delete,
        ),
    )
    .await;
    assert_eq!(
        contents(&runtime, 3).await,
        ["1,10,NULL", "2,20,NULL", "NULL,30,NULL"]
    );
    publish(&runtime, 1, rows(&l, &[&[None, Some(30)]], Op::Delete)).await;
    assert_eq!(contents(&runtime, 3).await, ["1,10,NULL", "2,20,NULL"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_minimum_finds_the_next_one() {
    let (runtime, ctx, l, _) = setup().await;
    create_view(
        &runtime,
        &ctx,
        3,
        "SELECT k, min(v) AS lo, max(v) AS hi, count(*) AS n FROM l GROUP BY k",
    )
    .await;
    publish(
        &runtime,
        1,
        rows(
            &l,
            &[
                &[Some(1), Some(5)],
                &[Some(1), Some(3)],
                &[Some(1), Some(3)],
                &[Some(1), Some(9)],
            ],
            Op::Insert,
        ),
    )
    .await;
    assert_eq!(contents(&runtime, 3).await, ["1,3,9,4"]);
    publish(&runtime, 1, rows(&l, &[&[Some(1), Some(3)]], Op::Delete)).await;
    assert_eq!(
        contents(&runtime, 3).await,
        ["1,3,9,3"],
        "one copy of the minimum is left"
    );
    publish(
        &runtime,
        1,
        rows(&l, &[&[Some(1), Some(3)], &[Some(1), Some(9)]], Op::Delete),
    )
    .await;
    assert_eq!(contents(&runtime, 3).await, ["1,5,5,1"]);
    publish(&runtime, 1, rows(&l, &[&[Some(1), Some(5)]], Op::Delete)).await;
    assert!(
        contents(&runtime, 3).await.is_empty(),
        "an emptied group disappears"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_created_late_starts_from_existing_rows() {
    let (runtime, ctx, l, _) = setup().await;
    publish(
        &runtime,
        1,
        rows(&l, &[&[Some(1), Some(1)], &[Some(2), Some(2)]], Op::Insert),
    )
    .await;
    create_view(
        &runtime,
        &ctx,
        3,
        "SELECT count(*) AS n, sum(v) AS s FROM l",
    )
    .await;
    assert_eq!(contents(&runtime, 3).await, ["2,3"]);
    publish(&runtime, 1, rows(&l, &[&[Some(3), Some(3)]], Op::Insert)).await;
    assert_eq!(contents(&runtime, 3).await, ["3,6"]);
}
