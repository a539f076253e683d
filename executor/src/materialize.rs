//! The last operator of every table and view pipeline.
//!
//! It consolidates the epoch's changes into a [`Delta`] (encoded row ->
//! net multiplicity change) and hands it to the checkpoint at the barrier:
//! that is the relation's ack to the coordinator. Chunks pass through unchanged (conformed to the relation's
//! schema) so views defined on this relation receive them.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use crate::checkpoint::StateWriter;
use crate::codec::RowCodec;
use crate::coordinator::{Delta, add_change};
use crate::error::Result;
use crate::message::{StreamChunk, Watermark};
use crate::operator::Operator;
use crate::progress::Progress;

/// Applies a changelog to a relation's committed rows, epoch by epoch.
#[derive(Debug)]
pub struct Materialize {
    relation: u32,
    schema: SchemaRef,
    codec: RowCodec,
    progress: Arc<Progress>,
    delta: Delta,
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
            delta: Delta::default(),
        })
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
        let rows = self.codec.encode(batch.columns())?;
        for (row, op) in rows.iter().zip(chunk.ops.iter()) {
            add_change(&mut self.delta, row.data(), op.sign());
        }
        out.push(StreamChunk {
            batch,
            ops: chunk.ops,
        });
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        state.rows(std::mem::take(&mut self.delta));
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
