//! Partitions that close: when a window operator's PARTITION BY includes a
//! column with a watermark (a window's start or end), a partition whose
//! value the watermark has passed can never receive a row again, as rows
//! behind the watermark are dropped as late. Its state may go; what it
//! emitted stays in the view.
//!
//! Invariants:
//! - Every open partition is in the [`WindowIndex`], by (value, key); a key
//!   may stay there after its partition emptied out (closing it then finds
//!   nothing).
//! - A row whose value is below the closed bound is late: dropped and
//!   counted, never applied.
//! - The closed bound is checkpointed (key [`CLOSED_KEY`], which no row
//!   key of [`crate::ordered_partitions`] can be: those start with a 4-byte
//!   length); the open partitions are indexed again on recovery.

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::scalar::ScalarValue;

use crate::checkpoint::StateWriter;
use crate::error::Result;
use crate::late_rows::LateRows;
use crate::message::Op;
use crate::ordered_partitions::Encoded;
pub(crate) use crate::window_index::CLOSED_KEY;
use crate::window_index::WindowIndex;

/// The open partitions of one operator instance, by the value of their
/// watermarked column.
#[derive(Debug)]
pub(crate) struct ClosingPartitions {
    /// The input column (also the output's) whose watermark closes them.
    column: usize,
    data_type: DataType,
    /// Encodes the column's values so that byte order is value order.
    codec: RowConverter,
    index: WindowIndex<Encoded>,
    late: LateRows,
}

impl ClosingPartitions {
    /// Partitions closed by the watermark of input column `column`, of
    /// `data_type`; late rows go to `late`.
    pub(crate) fn new(column: usize, data_type: DataType, late: LateRows) -> Result<Self> {
        Ok(Self {
            column,
            codec: RowConverter::new(vec![SortField::new(data_type.clone())])?,
            data_type,
            index: WindowIndex::default(),
            late,
        })
    }

    /// The column whose watermark closes partitions.
    pub(crate) fn column(&self) -> usize {
        self.column
    }

    /// The encoded values of the column in `column` (one per row).
    pub(crate) fn values(&self, column: &ArrayRef) -> Result<Rows> {
        Ok(self.codec.convert_columns(std::slice::from_ref(column))?)
    }

    /// Whether a row of encoded value `value` is late.
    pub(crate) fn is_late(&self, value: &[u8]) -> bool {
        self.index.is_late(value)
    }

    /// Notes partition `key`, of encoded value `value`, as open.
    pub(crate) fn open(&mut self, value: &[u8], key: &Encoded) {
        self.index.open(value, key.clone());
    }

    /// Counts (and keeps, if the view keeps them) rows `rows` of `batch`
    /// as late.
    pub(crate) fn dropped(
        &mut self,
        batch: &RecordBatch,
        ops: &[Op],
        rows: &[usize],
    ) -> Result<()> {
        self.late.dropped(batch, ops, rows)
    }

    /// Closes every partition of a value below `watermark`; returns their
    /// keys, in order.
    pub(crate) fn close_below(&mut self, watermark: &ScalarValue) -> Result<Vec<Encoded>> {
        let value = watermark.cast_to(&self.data_type)?;
        let encoded = self.codec.convert_columns(&[value.to_array()?])?;
        Ok(self.index.close_below(encoded.row(0).as_ref().into()))
    }

    /// Where late rows go.
    pub(crate) fn late_rows(&mut self) -> &mut LateRows {
        &mut self.late
    }

    /// Writes the closed bound if it moved.
    pub(crate) fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        self.index.checkpoint(state);
    }

    /// Takes up the checkpointed bound and the open partitions: `keys`, of
    /// the column's values `values` (none if there are no keys).
    pub(crate) fn restore(
        &mut self,
        closed_below: Option<Box<[u8]>>,
        keys: &[Encoded],
        values: Option<&ArrayRef>,
    ) -> Result<()> {
        self.index.restore(closed_below);
        if let Some(values) = values {
            let values = self.values(values)?;
            for (i, key) in keys.iter().enumerate() {
                self.open(values.row(i).as_ref(), key);
            }
        }
        Ok(())
    }
}
