//! How a message's payload maps to changes (`FORMAT PLAIN | DEBEZIUM`).
//!
//! - plain: the payload is a row, inserted;
//! - debezium: the payload is a change event `{"before": row | null,
//!   "after": row | null, "op": ...}` (other fields ignored): `before` is
//!   deleted, then `after` inserted. An event with neither is rejected.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::error::Result;
use crate::message::Op;

/// The shape of a payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Envelope {
    /// A row.
    Plain,
    /// A Debezium change event around rows.
    Debezium,
    /// A key's new row (see [`super::upsert`]; decoded as plain rows).
    Upsert,
}

/// Changes from decoded payloads.
#[derive(Debug)]
pub struct Changes {
    /// The rows, in the source's row schema.
    pub batch: RecordBatch,
    /// One op per row.
    pub ops: Vec<Op>,
    /// The decoded payload each row came from.
    pub payload: Vec<usize>,
    /// Payloads that hold no change: index and reason.
    pub rejected: Vec<(usize, String)>,
}

impl Envelope {
    /// What payloads decode into, for rows of `rows`.
    pub fn payload_schema(self, rows: &SchemaRef) -> SchemaRef {
        match self {
            Envelope::Plain | Envelope::Upsert => rows.clone(),
            Envelope::Debezium => {
                let row = DataType::Struct(rows.fields().clone());
                Arc::new(Schema::new(vec![
                    Field::new("before", row.clone(), true),
                    Field::new("after", row, true),
                    Field::new("op", DataType::Utf8, true),
                ]))
            }
        }
    }

    /// The changes `decoded` payloads (of [`Envelope::payload_schema`]) hold.
    pub fn changes(self, decoded: RecordBatch, rows: &SchemaRef) -> Result<Changes> {
        if self != Envelope::Debezium {
            let n = decoded.num_rows();
            return Ok(Changes {
                batch: decoded,
                ops: vec![Op::Insert; n],
                payload: (0..n).collect(),
                rejected: vec![],
            });
        }
        let before = decoded.column(0).as_struct();
        let after = decoded.column(1).as_struct();
        let (mut picks, mut ops, mut payload, mut rejected) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..decoded.num_rows() {
            if before.is_null(i) && after.is_null(i) {
                rejected.push((i, "a Debezium event with neither before nor after".into()));
                continue;
            }
            if before.is_valid(i) {
                picks.push((0, i));
                ops.push(Op::Delete);
                payload.push(i);
            }
            if after.is_valid(i) {
                picks.push((1, i));
                ops.push(Op::Insert);
                payload.push(i);
            }
        }
        let columns = (0..rows.fields().len())
            .map(|c| {
                let sides: [&dyn Array; 2] = [before.column(c).as_ref(), after.column(c).as_ref()];
                interleave(&sides, &picks)
            })
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
        Ok(Changes {
            batch: RecordBatch::try_new(rows.clone(), columns)?,
            ops,
            payload,
            rejected,
        })
    }
}
