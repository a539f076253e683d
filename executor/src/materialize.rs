//! The last operator of every table and view pipeline.
//!
//! It collects the epoch's changes and hands them to the checkpoint at the
//! barrier: that is the relation's ack to the coordinator. Until the first
//! retraction it sees, the changes are the inserted batches themselves;
//! from then on a [`Delta`] (encoded row -> net multiplicity change), for
//! good (see [`crate::relation_rows`]). Chunks pass through unchanged
//! (conformed to the relation's schema) so views defined on this relation
//! receive them.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::checkpoint::StateWriter;
use crate::codec::RowCodec;
use crate::error::Result;
use crate::message::{Op, StreamChunk, Watermark};
use crate::operator::Operator;
use crate::progress::Progress;
use crate::relation_rows::{Changes, Delta, add_change};

/// Applies a changelog to a relation's committed rows, epoch by epoch.
#[derive(Debug)]
pub struct Materialize {
    relation: u32,
    schema: SchemaRef,
    codec: RowCodec,
    progress: Arc<Progress>,
    /// The epoch's inserted batches, while nothing was ever retracted.
    appended: Vec<RecordBatch>,
    /// The epoch's changes, once something was.
    delta: Delta,
    retracted: bool,
}

impl Materialize {
    /// Materializes relation `relation` with rows of `schema`.
    pub fn new(relation: u32, schema: SchemaRef, progress: Arc<Progress>) -> Result<Self> {
        let codec = RowCodec::for_schema(&schema)?;
        Ok(Self {
            relation,
            schema,
            codec,
            progress,
            appended: Vec::new(),
            delta: Delta::default(),
            retracted: false,
        })
    }
}

impl Materialize {
    /// Adds `batch`'s rows, changed by `ops`, into the epoch's delta.
    fn count<'a>(&mut self, batch: &RecordBatch, ops: impl Iterator<Item = &'a Op>) -> Result<()> {
        let rows = self.codec.encode(batch.columns())?;
        for (row, op) in rows.iter().zip(ops) {
            add_change(&mut self.delta, row.data(), op.sign());
        }
        Ok(())
    }
}

impl Operator for Materialize {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let batch = RecordBatch::try_new(self.schema.clone(), chunk.batch.columns().to_vec())?;
        if !self.retracted && chunk.ops.iter().all(|op| *op == Op::Insert) {
            self.appended.push(batch.clone());
        } else {
            if !self.retracted {
                self.retracted = true;
                for appended in std::mem::take(&mut self.appended) {
                    self.count(&appended, std::iter::repeat(&Op::Insert))?;
                }
            }
            self.count(&batch, chunk.ops.iter())?;
        }
        out.push(StreamChunk {
            batch,
            ops: chunk.ops,
        });
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        state.rows(if self.retracted {
            Changes::Counted(std::mem::take(&mut self.delta))
        } else {
            Changes::Appended(std::mem::take(&mut self.appended))
        });
    }

    fn on_watermark(
        &mut self,
        _port: usize,
        watermark: Watermark,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<Vec<Watermark>> {
        if let Some(field) = self.schema.fields().get(watermark.column) {
            self.progress
                .watermark(self.relation, field.name(), &watermark.value);
        }
        Ok(vec![watermark])
    }
}
