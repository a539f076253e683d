//! `ROW_NUMBER() OVER (PARTITION BY p ORDER BY o)`, optionally cut at N
//! (top-N), over a changelog.
//!
//! Every input row is kept per partition, in order
//! ([`OrderedPartitions`]): a deleted winner is replaced by the next one.
//! At the barrier each touched partition is renumbered and only the
//! positions whose row changed are emitted (`delete (old row, i)` +
//! `insert (new row, i)`). The numbering last emitted is the numbering of
//! the stored rows, so recovery computes it again.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};

use crate::checkpoint::{StateEntries, StateWriter};
use crate::error::Result;
use crate::eval::Evaluator;
use crate::message::{Barrier, Op, StreamChunk};
use crate::operator::{Operator, StateSize};
use crate::ordered_partitions::{Encoded, OrderedPartitions, Partition};

/// The rows of `partition` in order, numbered from 1, up to `limit`.
fn numbered(partition: &Partition, limit: Option<usize>) -> Vec<Encoded> {
    partition
        .rows()
        .take(limit.unwrap_or(usize::MAX))
        .cloned()
        .collect()
}

/// The top-N / row-number operator.
#[derive(Debug)]
pub struct TopN {
    rows: OrderedPartitions,
    limit: Option<usize>,
    schema: SchemaRef,
}

impl TopN {
    /// Numbers rows of `input` per partition, keeping numbers up to `limit`.
    pub fn new(
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        limit: Option<usize>,
        input: &SchemaRef,
        schema: SchemaRef,
        evaluator: Evaluator,
    ) -> Result<Self> {
        Ok(Self {
            rows: OrderedPartitions::new(partition_by, order_by, input, evaluator)?,
            limit,
            schema,
        })
    }

    fn build_output(&self, rows: Vec<(Op, &[u8], u64)>) -> Result<StreamChunk> {
        let mut columns: Vec<ArrayRef> = self
            .rows
            .row_codec()
            .decode(rows.iter().map(|(_, r, _)| *r))?;
        columns.push(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|(_, _, n)| *n),
        )));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        Ok(StreamChunk {
            batch,
            ops: rows.iter().map(|(op, _, _)| *op).collect::<Vec<_>>().into(),
        })
    }
}

impl Operator for TopN {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        self.rows.apply(&chunk)
    }

    fn state_size(&self) -> Option<StateSize> {
        Some(self.rows.state_size("TopN"))
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        self.rows.checkpoint(state);
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.rows.restore(entries)?;
        for key in self.rows.keys() {
            if let Some(partition) = self.rows.get(&key) {
                let emitted = numbered(partition, self.limit);
                self.rows.set_emitted(&key, emitted);
            }
        }
        Ok(())
    }

    fn on_barrier(&mut self, _barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        let mut renumbered = Vec::new();
        for key in self.rows.take_touched() {
            let Some(partition) = self.rows.get(&key) else {
                continue;
            };
            let new = numbered(partition, self.limit);
            if new != partition.emitted {
                renumbered.push((key, new));
            } else if new.is_empty() {
                self.rows.set_emitted(&key, new);
            }
        }
        let mut rows = Vec::new();
        for (key, new) in &renumbered {
            let old = self.rows.get(key).map_or(&[][..], |p| &p.emitted);
            for i in 0..old.len().max(new.len()) {
                let (before, after) = (old.get(i), new.get(i));
                if before == after {
                    continue;
                }
                if let Some(b) = before {
                    rows.push((Op::Delete, b.as_ref(), i as u64 + 1));
                }
                if let Some(a) = after {
                    rows.push((Op::Insert, a.as_ref(), i as u64 + 1));
                }
            }
        }
        if !rows.is_empty() {
            out.push(self.build_output(rows)?);
        }
        for (key, new) in renumbered {
            self.rows.set_emitted(&key, new);
        }
        Ok(())
    }
}
