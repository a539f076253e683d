//! The state of operators that see each partition's rows in order: every
//! input row of a changelog, per PARTITION BY key, sorted by ORDER BY, and
//! what the operator last emitted for the partition.
//!
//! Top-N and window functions ([`crate::over_window`]) apply changes here as
//! they arrive and, at the barrier, recompute the partitions changes
//! touched against what they emitted before.
//!
//! Invariants:
//! - A partition's rows are a multiset keyed by (order key, whole row): the
//!   whole row breaks ties in the order key, so the order is total and
//!   every instance, and every recovery, sees the same order.
//! - `emitted` is a function of the rows (the operator computes it the same
//!   way each time), so checkpoints hold only the rows (`<partition> <order
//!   key> <row>` -> multiplicity) and recovery computes `emitted` again.
//! - A partition with no rows and nothing emitted is removed.
//! - With [`OrderedPartitions::keep_first`] (a top-N over an append-only
//!   input) a partition holds at most its first `keep` rows: a row past
//!   them can never move up, as nothing above it is ever deleted, so it is
//!   not stored; a row pushed past them leaves state.
//! - With [`OrderedPartitions::close_by_watermark`] partitions leave state
//!   once the watermark passes them (see [`crate::closing_partitions`]).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};

use crate::checkpoint::{
    Dirty, StateEntries, StateWriter, ValueReader, ValueWriter, push_part, split_part,
};
use crate::closing_partitions::{CLOSED_KEY, ClosingPartitions};
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::hash::{HashMap, HashSet};
use crate::key::KeyEncoder;
use crate::late_rows::LateRows;
use crate::message::StreamChunk;
use crate::operator::StateSize;

/// An encoded value (Arrow row format), shared by the state and its
/// changed-row list.
pub(crate) type Encoded = Arc<[u8]>;

/// One partition's rows, and what was last emitted for them.
#[derive(Debug, Default)]
pub(crate) struct Partition {
    /// (order key, row) -> multiplicity.
    rows: BTreeMap<(Encoded, Encoded), i64>,
    /// The multiplicities' sum.
    len: usize,
    /// Encoded output rows as last emitted, in the operator's order.
    pub(crate) emitted: Vec<Encoded>,
}

impl Partition {
    /// The rows in order, each as often as its multiplicity.
    pub(crate) fn rows(&self) -> impl Iterator<Item = &Encoded> {
        self.rows
            .iter()
            .flat_map(|((_, row), n)| std::iter::repeat_n(row, *n as usize))
    }
}

/// Rows per partition in order, for one operator instance.
#[derive(Debug)]
pub(crate) struct OrderedPartitions {
    partitions_of: KeyEncoder,
    order_by: Vec<PhysicalSortExpr>,
    order_codec: RowConverter,
    row_codec: RowCodec,
    evaluator: Evaluator,
    partitions: HashMap<Encoded, Partition>,
    touched: HashSet<Encoded>,
    /// The most rows a partition keeps, if the input never deletes.
    keep: Option<usize>,
    /// Partitions closed by a watermark, if a PARTITION BY column has one.
    closing: Option<ClosingPartitions>,
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

impl OrderedPartitions {
    /// Rows of `input`, partitioned by `partition_by`, ordered by `order_by`.
    pub(crate) fn new(
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        input: &SchemaRef,
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
            evaluator,
            partitions: HashMap::default(),
            touched: HashSet::default(),
            keep: None,
            closing: None,
            stored: 0,
            dirty: Dirty::default(),
        })
    }

    /// Keeps only the first `n` rows of each partition, for an input that
    /// only inserts: a deletion is then an error.
    pub(crate) fn keep_first(&mut self, n: usize) {
        self.keep = Some(n);
    }

    /// Closes partitions as the watermark of input column `column` (a
    /// PARTITION BY column) passes them; rows behind it go to `late`.
    pub(crate) fn close_by_watermark(
        &mut self,
        column: usize,
        input: &SchemaRef,
        late: LateRows,
    ) -> Result<()> {
        let data_type = input.field(column).data_type().clone();
        self.closing = Some(ClosingPartitions::new(column, data_type, late)?);
        Ok(())
    }

    /// The partitions that close by watermark, if they do.
    pub(crate) fn closing(&mut self) -> Option<&mut ClosingPartitions> {
        self.closing.as_mut()
    }

    /// Whether partition `key` changed since the last [`Self::take_touched`].
    pub(crate) fn is_touched(&self, key: &[u8]) -> bool {
        self.touched.contains(key)
    }

    /// Removes partitions `keys` (closed) from state.
    pub(crate) fn forget(&mut self, keys: &[Encoded]) {
        for key in keys {
            self.touched.remove(key);
            if let Some(partition) = self.partitions.remove(key) {
                for ((order, row), _) in partition.rows {
                    self.stored -= 1;
                    self.dirty.push((key.clone(), order, row));
                }
            }
        }
    }

    /// The codec of the input rows the partitions hold.
    pub(crate) fn row_codec(&self) -> &RowCodec {
        &self.row_codec
    }

    /// Applies a chunk of changes, marking the partitions it touches.
    pub(crate) fn apply(&mut self, chunk: &StreamChunk) -> Result<()> {
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
        let values = match &self.closing {
            Some(closing) => Some(closing.values(batch.column(closing.column()))?),
            None => None,
        };
        let mut late = Vec::new();
        for (i, (key, order)) in partitions.into_iter().zip(orders).enumerate() {
            let sign = chunk.ops[i].sign();
            let row = rows.row(i);
            if let (Some(closing), Some(values)) = (self.closing.as_mut(), &values) {
                let value = values.row(i);
                if closing.is_late(value.as_ref()) {
                    late.push(i);
                    continue;
                }
                if !self.partitions.contains_key(&key) {
                    closing.open(value.as_ref(), &key);
                }
            }
            if let Some(keep) = self.keep {
                if sign < 0 {
                    return Err(ExecutorError::Internal(
                        "a top-N over an append-only input received a deletion".into(),
                    ));
                }
                let past_the_last = |p: &Partition| {
                    p.len >= keep
                        && p.rows.last_key_value().is_some_and(|((o, r), _)| {
                            (order.as_ref(), row.as_ref()) >= (o.as_ref(), r.as_ref())
                        })
                };
                if self.partitions.get(&key).is_some_and(past_the_last) {
                    continue;
                }
            }
            if !self.touched.contains(&key) {
                self.touched.insert(key.clone());
            }
            let row: Encoded = row.as_ref().into();
            self.dirty.push((key.clone(), order.clone(), row.clone()));
            let partition = self.partitions.entry(key.clone()).or_default();
            match partition.rows.entry((order, row)) {
                Entry::Occupied(mut o) => {
                    *o.get_mut() += sign;
                    partition.len = partition.len.wrapping_add_signed(sign as isize);
                    if *o.get() <= 0 {
                        o.remove();
                        self.stored -= 1;
                    }
                }
                Entry::Vacant(v) => {
                    if sign > 0 {
                        v.insert(sign);
                        partition.len += 1;
                        self.stored += 1;
                    }
                }
            }
            if let Some(keep) = self.keep {
                trim(partition, &key, keep, &mut self.dirty, &mut self.stored);
            }
        }
        if let Some(closing) = self.closing.as_mut() {
            closing.dropped(batch, &chunk.ops, &late)?;
        }
        Ok(())
    }

    /// The partitions touched since the last call.
    pub(crate) fn take_touched(&mut self) -> Vec<Encoded> {
        self.touched.drain().collect()
    }

    /// Partition `key`, if it has rows or emitted any.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Partition> {
        self.partitions.get(key)
    }

    /// Every partition key.
    pub(crate) fn keys(&self) -> Vec<Encoded> {
        self.partitions.keys().cloned().collect()
    }

    /// Records what was emitted for partition `key`; forgets the partition
    /// once it has neither rows nor emitted rows.
    pub(crate) fn set_emitted(&mut self, key: &[u8], emitted: Vec<Encoded>) {
        if let Some(p) = self.partitions.get_mut(key) {
            p.emitted = emitted;
            if p.emitted.is_empty() && p.rows.is_empty() {
                self.partitions.remove(key);
            }
        }
    }

    /// The state's size, as operator `operator`.
    pub(crate) fn state_size(&self, operator: &'static str) -> StateSize {
        StateSize::in_memory(operator, self.partitions.len() as u64, self.stored)
    }

    /// Writes every row changed since the last checkpoint.
    pub(crate) fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        if let Some(closing) = self.closing.as_mut() {
            closing.checkpoint(state);
        }
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

    /// Replaces the rows with the checkpointed ones; nothing is emitted
    /// yet (the operator computes `emitted` again).
    pub(crate) fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.partitions.clear();
        self.touched.clear();
        self.stored = 0;
        let mut closed_below = None;
        for (key, value) in entries {
            if key.as_ref() == CLOSED_KEY {
                closed_below = Some(value.into());
                continue;
            }
            let (partition, rest) = split_part(&key)?;
            let (order, row) = split_part(rest)?;
            let count = ValueReader::new(&value).i64()?;
            let partition = self.partitions.entry(partition.into()).or_default();
            partition.rows.insert((order.into(), row.into()), count);
            partition.len += count as usize;
            self.stored += 1;
        }
        // A checkpoint written before the input was known append-only may
        // hold more rows than are kept now.
        if let Some(keep) = self.keep {
            for (key, partition) in &mut self.partitions {
                trim(partition, key, keep, &mut self.dirty, &mut self.stored);
            }
        }
        if let Some(closing) = self.closing.as_mut() {
            // A partition's value is in each of its rows: read it from one.
            let (keys, firsts): (Vec<Encoded>, Vec<&[u8]>) = self
                .partitions
                .iter()
                .filter_map(|(key, p)| p.rows().next().map(|row| (key.clone(), row.as_ref())))
                .unzip();
            let columns = if keys.is_empty() {
                None
            } else {
                Some(self.row_codec.decode(firsts.into_iter())?)
            };
            let values = columns.as_ref().map(|c| &c[closing.column()]);
            closing.restore(closed_below, &keys, values)?;
        }
        Ok(())
    }
}

/// Drops `partition`'s last rows until at most `keep` remain, noting them
/// for the next checkpoint.
fn trim(
    partition: &mut Partition,
    key: &Encoded,
    keep: usize,
    dirty: &mut Dirty<(Encoded, Encoded, Encoded)>,
    stored: &mut u64,
) {
    while partition.len > keep {
        let Some(mut last) = partition.rows.last_entry() else {
            break;
        };
        let (order, row) = last.key().clone();
        *last.get_mut() -= 1;
        partition.len -= 1;
        if *last.get() <= 0 {
            last.remove();
            *stored -= 1;
        }
        dirty.push((key.clone(), order, row));
    }
}
