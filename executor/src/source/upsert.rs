//! `FORMAT UPSERT`: the message key is the row's key, the value its new
//! row, and a message without a value deletes it.
//!
//! Turning upserts into changes needs each key's current row (to retract
//! it), so a split keeps its keys' rows as state, checkpointed with the
//! split's position: only the keys changed during an epoch are written.
//! A key must always arrive in one partition (Kafka's default partitioner
//! does that); a view's readers each keep the state of their partition.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::checkpoint::{Dirty, StateEntries, StateWriter};
use crate::codec::RowCodec;
use crate::error::Result;
use crate::hash::HashMap;
use crate::message::Op;

/// One message of an upsert topic, decoded.
pub enum Upsert<'a> {
    /// Key `key` now holds row `row` of the decoded batch.
    Put { key: &'a [u8], row: usize },
    /// Key `key` is gone.
    Delete { key: &'a [u8] },
}

/// The current row of every key of one split.
#[derive(Debug)]
pub struct UpsertState {
    codec: RowCodec,
    rows: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys changed since the last checkpoint.
    dirty: Dirty<Vec<u8>>,
}

/// Changes from a batch of upserts.
pub struct UpsertChanges {
    /// Rows (of the source's row schema).
    pub columns: Vec<datafusion::arrow::array::ArrayRef>,
    /// One op per row.
    pub ops: Vec<Op>,
    /// The upsert each row came from.
    pub origin: Vec<usize>,
}

impl UpsertState {
    /// Empty state for rows of `schema`.
    pub fn new(schema: &SchemaRef) -> Result<Self> {
        Ok(Self {
            codec: RowCodec::for_schema(schema)?,
            rows: HashMap::default(),
            dirty: Dirty::default(),
        })
    }

    /// Applies `upserts` (rows from `decoded`), in order.
    pub fn apply(
        &mut self,
        upserts: &[Upsert<'_>],
        decoded: &RecordBatch,
    ) -> Result<UpsertChanges> {
        let new_rows = self.codec.encode(decoded.columns())?;
        let mut out: Vec<Vec<u8>> = Vec::new();
        let (mut ops, mut origin) = (Vec::new(), Vec::new());
        for (i, upsert) in upserts.iter().enumerate() {
            let (key, new) = match upsert {
                Upsert::Put { key, row } => (*key, Some(new_rows.row(*row).data().to_vec())),
                Upsert::Delete { key } => (*key, None),
            };
            let old = match &new {
                Some(row) => self.rows.insert(key.to_vec(), row.clone()),
                None => self.rows.remove(key),
            };
            if old == new {
                continue;
            }
            self.dirty.push(key.to_vec());
            if let Some(old) = old {
                out.push(old);
                ops.push(Op::Delete);
                origin.push(i);
            }
            if let Some(new) = new {
                out.push(new);
                ops.push(Op::Insert);
                origin.push(i);
            }
        }
        let columns = self.codec.decode(out.iter().map(Vec::as_slice))?;
        Ok(UpsertChanges {
            columns,
            ops,
            origin,
        })
    }

    /// Writes the keys changed since the last checkpoint.
    pub fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        for key in self.dirty.take() {
            match self.rows.get(&key) {
                Some(row) => state.put(&key, row.clone()),
                None => state.delete(&key),
            }
        }
    }

    /// Takes up the rows a checkpoint holds.
    pub fn restore(&mut self, entries: StateEntries) {
        for (key, row) in entries {
            self.rows.insert(key.to_vec(), row.to_vec());
        }
    }
}
