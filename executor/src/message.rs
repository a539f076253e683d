//! What flows on the edges of a pipeline.

use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::error::ArrowError;
use datafusion::scalar::ScalarValue;

/// Whether a row is added to or retracted from a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The row is added.
    Insert,
    /// One identical copy of the row is retracted.
    Delete,
}

impl Op {
    /// +1 for inserts, -1 for deletes: the row's change in multiplicity.
    pub fn sign(self) -> i64 {
        match self {
            Op::Insert => 1,
            Op::Delete => -1,
        }
    }
}

/// A batch of changes: row `i` of `batch` is inserted or deleted per `ops[i]`.
///
/// An update is a delete of the old row followed by an insert of the new one.
#[derive(Debug, Clone)]
pub struct StreamChunk {
    /// The rows.
    pub batch: RecordBatch,
    /// One op per row.
    pub ops: Arc<[Op]>,
}

impl StreamChunk {
    /// The rows where `keep` is true (NULL counts as false), with their
    /// ops; `None` when no row is kept.
    pub fn filter(self, keep: &BooleanArray) -> Result<Option<Self>, ArrowError> {
        match keep.true_count() {
            0 => Ok(None),
            n if n == self.len() => Ok(Some(self)),
            _ => {
                let ops: Vec<Op> = self
                    .ops
                    .iter()
                    .zip(keep.iter())
                    .filter_map(|(op, k)| (k == Some(true)).then_some(*op))
                    .collect();
                Ok(Some(Self {
                    batch: filter_record_batch(&self.batch, keep)?,
                    ops: ops.into(),
                }))
            }
        }
    }

    /// A chunk that inserts every row of `batch`.
    pub fn inserts(batch: RecordBatch) -> Self {
        let ops = vec![Op::Insert; batch.num_rows()].into();
        Self { batch, ops }
    }

    /// A chunk that deletes every row of `batch`.
    pub fn deletes(batch: RecordBatch) -> Self {
        let ops = vec![Op::Delete; batch.num_rows()].into();
        Self { batch, ops }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the chunk holds no rows.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Marks the end of epoch `epoch` on every edge it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The epoch that ends here. Epochs only increase along an edge.
    pub epoch: u64,
    /// Processing time at which the epoch ended: nanoseconds since the Unix
    /// epoch, never decreasing from one barrier to the next. Every
    /// operator sees the same time for an epoch (temporal filters use it
    /// as `NOW()`).
    pub now: i64,
}

/// Event-time progress: no later row on this edge has `column < value`.
///
/// Watermarks only increase along an edge, per column. A row that arrives
/// below its watermark anyway is *late*; windowed operators drop and count it.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    /// Column index in the edge's schema.
    pub column: usize,
    /// Lower bound of every later value of `column` (never NULL).
    pub value: ScalarValue,
}

/// One message on a pipeline edge.
#[derive(Debug, Clone)]
pub enum Message {
    /// Changes.
    Chunk(StreamChunk),
    /// End of an epoch.
    Barrier(Barrier),
    /// Event-time progress.
    Watermark(Watermark),
}
