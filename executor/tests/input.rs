//! Barrier alignment and watermark merging.

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::scalar::ScalarValue;
use eddy_executor::input::{AlignedInput, InputChannel};
use eddy_executor::{Barrier, Message, StreamChunk, Watermark};
use tokio::sync::mpsc;

fn chunk(v: i64) -> Message {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, true)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).expect("batch");
    Message::Chunk(StreamChunk::inserts(batch))
}

fn value(m: &Message) -> Option<i64> {
    match m {
        Message::Chunk(c) => c
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .map(|a| a.value(0)),
        Message::Barrier(_) | Message::Watermark(_) => None,
    }
}

#[tokio::test]
async fn an_input_past_the_barrier_waits_for_the_others() {
    let (tx0, rx0) = mpsc::channel(8);
    let (tx1, rx1) = mpsc::channel(8);
    let mut input = AlignedInput::new(vec![InputChannel::new(rx0), InputChannel::new(rx1)]);
    let b = Message::Barrier(Barrier { epoch: 1, now: 0 });
    tx0.send(chunk(1)).await.unwrap();
    tx0.send(b.clone()).await.unwrap();
    tx0.send(chunk(2)).await.unwrap(); // epoch 2: must not overtake input 1's epoch-1 rows
    tx1.send(chunk(10)).await.unwrap();
    tx1.send(b).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (_, m) = input.next().await.expect("message");
        seen.push(value(&m));
    }
    assert_eq!(seen, vec![Some(1), Some(10), None, Some(2)]);
    drop((tx0, tx1));
    assert!(input.next().await.is_none(), "closed inputs end the stream");
}

fn watermark(column: usize, v: i64) -> Message {
    Message::Watermark(Watermark {
        column,
        value: ScalarValue::Int64(Some(v)),
    })
}

fn watermark_value(m: &Message) -> Option<i64> {
    match m {
        Message::Watermark(w) => match w.value {
            ScalarValue::Int64(v) => v,
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test]
async fn watermarks_merge_to_the_minimum_per_port() {
    let (tx0, rx0) = mpsc::channel(8);
    let (tx1, rx1) = mpsc::channel(8);
    let (tx2, rx2) = mpsc::channel(8);
    // Inputs 0 and 1 feed port 0, input 2 feeds port 1.
    let mut input = AlignedInput::with_ports(
        vec![
            InputChannel::new(rx0),
            InputChannel::new(rx1),
            InputChannel::new(rx2),
        ],
        vec![0, 0, 1],
    );
    tx0.send(watermark(0, 10)).await.unwrap();
    tx2.send(watermark(3, 7)).await.unwrap();
    // Port 0 has no watermark until both its inputs report one.
    let (i, m) = input.next().await.expect("port 1 watermark");
    assert_eq!((input.port(i), watermark_value(&m)), (1, Some(7)));
    tx1.send(watermark(0, 4)).await.unwrap();
    let (i, m) = input.next().await.expect("port 0 watermark");
    assert_eq!((input.port(i), watermark_value(&m)), (0, Some(4)));
    // Raising the larger one changes nothing; raising the smaller one does.
    tx0.send(watermark(0, 20)).await.unwrap();
    tx1.send(watermark(0, 15)).await.unwrap();
    tx1.send(chunk(1)).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (_, m) = input.next().await.expect("message");
        seen.push((watermark_value(&m), value(&m)));
    }
    seen.sort();
    assert_eq!(seen, vec![(None, Some(1)), (Some(15), None)]);
}
