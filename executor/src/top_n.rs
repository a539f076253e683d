//! `ROW_NUMBER() OVER (PARTITION BY p ORDER BY o)`, optionally cut at N
//! (top-N), over a changelog.
//!
//! State per partition: every input row in order (a multiset keyed by the
//! order key, then the whole row, which breaks ties deterministically), and
//! the numbered rows last emitted. Changes are applied as they arrive; at
//! the barrier each touched partition is renumbered and only the positions
//! whose row changed are emitted (`delete (old row, i)` + `insert (new row,
//! i)`). Every row must be kept, not only the first N: a deleted winner is
//! replaced by the next one.
//!
//! Checkpoints hold every stored row (`<partition> <order key> <row>` ->
//! multiplicity); the numbering last emitted is the numbering of those rows,
//! so recovery computes it again.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::PhysicalSortExpr;

use crate::checkpoint::{
    Dirty, StateEntries, StateWriter, ValueReader, ValueWriter, push_part, split_part,
};
use crate::codec::RowCodec;
use crate::error::Result;
use crate::eval::Evaluator;
use crate::hash::{HashMap, HashSet};
use crate::key::KeyEncoder;
use crate::message::{Barrier, Op, StreamChunk};
use crate::operator::{Operator, StateSize};

/// An encoded value (Arrow row format), shared by the state and its
/// changed-row list.
type Encoded = Arc<[u8]>;

#[derive(Debug, Default)]
struct Partition {
    /// (order key, row) -> multiplicity.
    rows: BTreeMap<(Encoded, Encoded), i64>,
    /// Rows numbered 1.. as last emitted.
    emitted: Vec<Encoded>,
}

/// The rows of `partition` in order, numbered from 1, up to `limit`.
fn numbered(partition: &Partition, limit: Option<usize>) -> Vec<Encoded> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for ((_, row), count) in &partition.rows {
        for _ in 0..*count {
            if out.len() >= limit {
                return out;
            }
            out.push(row.clone());
        }
    }
    out
}

/// The top-N / row-number operator.
#[derive(Debug)]
pub struct TopN {
    partitions_of: KeyEncoder,
    order_by: Vec<PhysicalSortExpr>,
    order_codec: RowConverter,
    row_codec: RowCodec,
    limit: Option<usize>,
    schema: SchemaRef,
    evaluator: Evaluator,
    partitions: HashMap<Encoded, Partition>,
    touched: HashSet<Encoded>,
    /// Distinct (order key, row) entries over all partitions.
    stored: u64,
    /// (partition, order key, row) changed since the last checkpoint.
    dirty: Dirty<(Encoded, Encoded, Encoded)>,
}

/// State key of a stored row.
fn row_state_key(partition: &[u8], order: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + partition.len() + order.len() + row.len());
    push_part(&mut k, partition);
    push_part(&mut k, order);
    k.extend_from_slice(row);
    k
}

impl TopN {
    /// Numbers rows of `input` per partition, keeping numbers up to `limit`.
    pub fn new(
        partition_by: Vec<Arc<dyn datafusion::physical_expr::PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        limit: Option<usize>,
        input: &SchemaRef,
        schema: SchemaRef,
        evaluator: Evaluator,
    ) -> Result<Self> {
        let order_fields = order_by
            .iter()
            .map(|s| {
                Ok(SortField::new_with_options(
                    s.expr.data_type(input)?,
                    s.options,
                ))
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(Self {
            partitions_of: KeyEncoder::new(partition_by, input)?,
            order_by,
            order_codec: RowConverter::new(order_fields)?,
            row_codec: RowCodec::for_schema(input)?,
            limit,
            schema,
            evaluator,
            partitions: HashMap::default(),
            touched: HashSet::default(),
            stored: 0,
            dirty: Dirty::default(),
        })
    }

    fn build_output(&self, rows: Vec<(Op, &[u8], u64)>) -> Result<StreamChunk> {
        let mut columns: Vec<ArrayRef> = self.row_codec.decode(rows.iter().map(|(_, r, _)| *r))?;
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
        let batch = &chunk.batch;
        let n = batch.num_rows();
        // No PARTITION BY (or no ORDER BY): one empty key for every row.
        let partitions: Vec<Encoded> = self.partitions_of.keys(&self.evaluator, batch)?;
        let orders: Vec<Encoded> = if self.order_by.is_empty() {
            vec![Encoded::from(&[][..]); n]
        } else {
            let columns = self
                .order_by
                .iter()
                .map(|s| self.evaluator.eval(&s.expr, batch))
                .collect::<Result<Vec<_>>>()?;
            let encoded = self.order_codec.convert_columns(&columns)?;
            encoded.iter().map(|r| r.as_ref().into()).collect()
        };
        let rows = self.row_codec.encode(batch.columns())?;
        for (i, (key, order)) in partitions.into_iter().zip(orders).enumerate() {
            let sign = chunk.ops[i].sign();
            if !self.touched.contains(&key) {
                self.touched.insert(key.clone());
            }
            let row: Encoded = rows.row(i).as_ref().into();
            self.dirty.push((key.clone(), order.clone(), row.clone()));
            let partition = self.partitions.entry(key).or_default();
            match partition.rows.entry((order, row)) {
                Entry::Occupied(mut o) => {
                    *o.get_mut() += sign;
                    if *o.get() <= 0 {
                        o.remove();
                        self.stored -= 1;
                    }
                }
                Entry::Vacant(v) => {
                    if sign > 0 {
                        v.insert(sign);
                        self.stored += 1;
                    }
                }
            }
        }
        Ok(())
    }

    fn state_size(&self) -> Option<StateSize> {
        Some(StateSize::in_memory(
            "TopN",
            self.partitions.len() as u64,
            self.stored,
        ))
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        for (partition, order, row) in self.dirty.take() {
            let state_key = row_state_key(&partition, &order, &row);
            let count = self
                .partitions
                .get(&partition)
                .and_then(|p| p.rows.get(&(order, row)));
            match count {
                Some(n) => state.put(&state_key, ValueWriter::new().i64(*n).finish()),
                None => state.delete(&state_key),
            }
        }
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.partitions.clear();
        self.touched.clear();
        self.stored = 0;
        for (key, value) in entries {
            let (partition, rest) = split_part(&key)?;
            let (order, row) = split_part(rest)?;
            let count = ValueReader::new(&value).i64()?;
            self.partitions
                .entry(partition.into())
                .or_default()
                .rows
                .insert((order.into(), row.into()), count);
            self.stored += 1;
        }
        let limit = self.limit;
        for partition in self.partitions.values_mut() {
            partition.emitted = numbered(partition, limit);
        }
        Ok(())
    }

    fn on_barrier(&mut self, _barrier: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
        let touched = std::mem::take(&mut self.touched);
        let mut renumbered = Vec::new();
        for key in touched {
            let Some(partition) = self.partitions.get(&key) else {
                continue;
            };
            let new = numbered(partition, self.limit);
            if new != partition.emitted {
                renumbered.push((key, new));
            } else if partition.rows.is_empty() {
                self.partitions.remove(&key);
            }
        }
        let mut rows = Vec::new();
        for (key, new) in &renumbered {
            let old = &self.partitions[key].emitted;
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
            let empty = new.is_empty();
            if let Some(p) = self.partitions.get_mut(&key) {
                p.emitted = new;
                if empty && p.rows.is_empty() {
                    self.partitions.remove(&key);
                }
            }
        }
        Ok(())
    }
}
