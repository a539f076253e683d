//! The state of operators that see each partition's rows in order: every
//! input row of a changelog, per PARTITION BY key, sorted by ORDER BY, and
//! what the operator last emitted for the partition.
//!
//! Top-N and window functions ([`crate::over_window`]) apply changes here
//! as they arrive and, at the barrier, recompute the partitions changes
//! touched against what they emitted before.
//!
//! Invariants:
//! - A partition's rows are a multiset keyed by (order key, whole row): the
//!   whole row breaks ties in the order key, so the order is total and
//!   every instance, and every recovery, sees the same order.
//! - `emitted` is a function of the rows (the operator computes it the same
//!   way each time), so checkpoints hold only the rows (see [`stored`]) and
//!   a partition read back from them computes `emitted` again.
//! - With the `memory` backend every partition is in memory; one with no
//!   rows and nothing emitted is removed. With `rocksdb`, memory holds the
//!   partitions used lately: an operator [`OrderedPartitions::load`]s the
//!   partitions a chunk touches (one prefix scan each) before applying it.
//!   A partition stays in memory while the store may lack its changes (its
//!   last checkpoint is not durable), so one read back is always current.
//! - With [`OrderedPartitions::keep_first`] (a top-N over an append-only
//!   input) a partition holds at most its first `keep` rows: a row past
//!   them can never move up, as nothing above it is ever deleted, so it is
//!   not stored; a row pushed past them leaves state.
//! - With [`OrderedPartitions::close_by_watermark`] partitions leave state
//!   once the watermark passes them (see [`crate::closing_partitions`]).

mod stored;

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};

use crate::checkpoint::Dirty;
use crate::closing_partitions::ClosingPartitions;
use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::hash::{HashMap, HashSet};
use crate::key::KeyEncoder;
use crate::keyed_state::{StateConfig, StoreTable, eviction_victims};
use crate::late_rows::LateRows;
use crate::message::StreamChunk;
use crate::operator::StateSize;

/// An encoded value (Arrow row format), shared by the state and its
/// changed-row list.
pub(crate) type Encoded = Arc<[u8]>;

/// Bytes counted for a row besides its order key and row: the map's node.
const ROW_OVERHEAD: usize = 48;

/// One partition's rows, and what was last emitted for them.
#[derive(Debug, Default)]
pub(crate) struct Partition {
    /// (order key, row) -> multiplicity.
    rows: BTreeMap<(Encoded, Encoded), i64>,
    /// The multiplicities' sum.
    len: usize,
    /// Encoded output rows as last emitted, in the operator's order.
    pub(crate) emitted: Vec<Encoded>,
    /// Bytes counted for its rows and emitted rows.
    bytes: usize,
    /// The epoch it was last used in.
    used: u64,
    /// The epoch of the last checkpoint that wrote its rows.
    written: u64,
    /// Whether the store (or a checkpoint on its way) marks it as having rows.
    in_store: bool,
}

impl Partition {
    /// The rows in order, each as often as its multiplicity.
    pub(crate) fn rows(&self) -> impl Iterator<Item = &Encoded> {
        self.rows
            .iter()
            .flat_map(|((_, row), n)| std::iter::repeat_n(row, *n as usize))
    }

    /// Adds `sign` copies of (order, row).
    fn change(&mut self, order: Encoded, row: Encoded, sign: i64) {
        let bytes = ROW_OVERHEAD + order.len() + row.len();
        match self.rows.entry((order, row)) {
            Entry::Occupied(mut o) => {
                *o.get_mut() += sign;
                self.len = self.len.wrapping_add_signed(sign as isize);
                if *o.get() <= 0 {
                    o.remove();
                    self.bytes -= bytes;
                }
            }
            Entry::Vacant(v) => {
                if sign > 0 {
                    v.insert(sign);
                    self.len += sign as usize;
                    self.bytes += bytes;
                }
            }
        }
    }

    /// Drops its last rows until at most `keep` remain; returns them.
    fn trim(&mut self, keep: usize) -> Vec<(Encoded, Encoded)> {
        let mut dropped = Vec::new();
        while self.len > keep {
            let Some(mut last) = self.rows.last_entry() else {
                break;
            };
            let (order, row) = last.key().clone();
            *last.get_mut() -= 1;
            self.len -= 1;
            if *last.get() <= 0 {
                last.remove();
                self.bytes -= ROW_OVERHEAD + order.len() + row.len();
            }
            dropped.push((order, row));
        }
        dropped
    }

    fn emitted_bytes(&self) -> usize {
        self.emitted.iter().map(|r| ROW_OVERHEAD + r.len()).sum()
    }
}

/// What is stored, and what of it is in memory.
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    /// Partitions with rows, in memory or not.
    partitions: u64,
    /// Distinct (order key, row) entries, in memory or not.
    rows: u64,
    /// Entries in memory.
    cached_rows: u64,
    /// Bytes counted for the partitions in memory.
    bytes: usize,
}

impl Sizes {
    /// Counts a change of a partition in memory from (`rows`, `bytes`)
    /// before to `after`.
    fn account(&mut self, before: (usize, usize), after: &Partition) {
        let rows = after.rows.len() as i64 - before.0 as i64;
        self.rows = self.rows.wrapping_add_signed(rows);
        self.cached_rows = self.cached_rows.wrapping_add_signed(rows);
        self.bytes = (self.bytes + after.bytes).saturating_sub(before.1);
        match (before.0 > 0, !after.rows.is_empty()) {
            (false, true) => self.partitions += 1,
            (true, false) => self.partitions -= 1,
            _ => {}
        }
    }

    /// Counts `partition` leaving memory; `stored` says whether its rows
    /// stay in the store.
    fn evicted(&mut self, partition: &Partition, stored: bool) {
        let rows = partition.rows.len() as u64;
        self.cached_rows -= rows;
        self.bytes = self.bytes.saturating_sub(partition.bytes);
        if !stored {
            self.rows -= rows;
            self.partitions -= u64::from(rows > 0);
        }
    }
}

/// The partitions of a chunk's rows, found before it is applied.
pub(crate) struct ChunkPartitions {
    /// Per row; None for a row dropped as late.
    keys: Vec<Option<Encoded>>,
    /// Per row, the encoded value of the closing column, if partitions close.
    values: Option<Rows>,
}

impl ChunkPartitions {
    /// The partitions rows go to.
    pub(crate) fn keys(&self) -> impl Iterator<Item = &Encoded> {
        self.keys.iter().flatten()
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
    /// The partitions in memory: all of them but with the `rocksdb` backend.
    partitions: HashMap<Encoded, Partition>,
    touched: HashSet<Encoded>,
    /// The most rows a partition keeps, if the input never deletes.
    keep: Option<usize>,
    /// Partitions closed by a watermark, if a PARTITION BY column has one.
    closing: Option<ClosingPartitions>,
    sizes: Sizes,
    /// Partitions and rows as last checkpointed.
    written: (u64, u64),
    /// (partition, order key, row) changed since the last checkpoint.
    dirty: Dirty<(Encoded, Encoded, Encoded)>,
    /// Partitions closed since the last checkpoint, whose rows leave it.
    closed: Vec<Encoded>,
    /// `rocksdb` backend: partitions left with no rows, to forget once
    /// the store has their rows' removal.
    emptied: Vec<Encoded>,
    config: StateConfig,
    table: Option<StoreTable>,
    /// The epoch being processed.
    epoch: u64,
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
            sizes: Sizes::default(),
            written: (0, 0),
            dirty: Dirty::default(),
            closed: Vec::new(),
            emptied: Vec::new(),
            config: StateConfig::default(),
            table: None,
            epoch: 1,
        })
    }

    /// Keeps the partitions as `config` says (the `rocksdb` backend takes
    /// effect once the state has a place in a store).
    pub(crate) fn configure(&mut self, config: StateConfig) {
        self.config = config;
    }

    /// Gives the state its place in the store.
    pub(crate) fn attach(&mut self, table: StoreTable) {
        self.table = Some(table);
    }

    /// The cache's size, when partitions leave memory.
    fn cache_limit(&self) -> Option<usize> {
        self.table.as_ref().and(self.config.cache_limit())
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

    /// Removes partitions `keys` (closed, and loaded) from state.
    pub(crate) fn forget(&mut self, keys: &[Encoded]) {
        for key in keys {
            self.touched.remove(key);
            if let Some(partition) = self.partitions.remove(key) {
                self.sizes.evicted(&partition, false);
            }
            self.closed.push(key.clone());
        }
    }

    /// The codec of the input rows the partitions hold.
    pub(crate) fn row_codec(&self) -> &RowCodec {
        &self.row_codec
    }

    /// The partitions of `chunk`'s rows; rows behind a closing watermark
    /// are dropped as late here.
    pub(crate) fn partitions_of(&mut self, chunk: &StreamChunk) -> Result<ChunkPartitions> {
        let batch = &chunk.batch;
        // No PARTITION BY: one empty key for every row.
        let mut keys: Vec<Option<Encoded>> = self
            .partitions_of
            .keys(&self.evaluator, batch)?
            .into_iter()
            .map(Some)
            .collect();
        let Some(closing) = self.closing.as_mut() else {
            return Ok(ChunkPartitions { keys, values: None });
        };
        let values = closing.values(batch.column(closing.column()))?;
        let mut late = Vec::new();
        for (i, key) in keys.iter_mut().enumerate() {
            if closing.is_late(values.row(i).as_ref()) {
                *key = None;
                late.push(i);
            }
        }
        closing.dropped(batch, &chunk.ops, &late)?;
        Ok(ChunkPartitions {
            keys,
            values: Some(values),
        })
    }

    /// Makes the partitions `keys` readable: the `rocksdb` backend reads
    /// those not in memory from the store. Returns the ones read that have
    /// rows: their `emitted` is for the operator to set.
    pub(crate) fn load<'k>(
        &mut self,
        keys: impl IntoIterator<Item = &'k Encoded>,
    ) -> Result<Vec<Encoded>> {
        let (Some(table), Some(_)) = (self.table.as_ref(), self.config.cache_limit()) else {
            return Ok(Vec::new());
        };
        let mut missing = Vec::new();
        for key in keys {
            match self.partitions.get_mut(key) {
                Some(partition) => partition.used = self.epoch,
                None => missing.push(key),
            }
        }
        missing.sort_unstable();
        missing.dedup();
        let mut read = Vec::new();
        for (key, mut partition) in missing
            .iter()
            .zip(stored::read_partitions(table, &missing)?)
        {
            partition.used = self.epoch;
            self.sizes.cached_rows += partition.rows.len() as u64;
            self.sizes.bytes += partition.bytes;
            if !partition.rows.is_empty() {
                read.push((*key).clone());
            }
            self.partitions.insert((*key).clone(), partition);
        }
        Ok(read)
    }

    /// Applies a chunk of changes to the partitions of its rows (loaded),
    /// marking the partitions it touches.
    pub(crate) fn apply(&mut self, chunk: &StreamChunk, partitions: ChunkPartitions) -> Result<()> {
        let batch = &chunk.batch;
        let n = batch.num_rows();
        // No ORDER BY: one empty order key for every row.
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
        let ChunkPartitions { keys, values } = partitions;
        for (i, (key, order)) in keys.into_iter().zip(orders).enumerate() {
            let Some(key) = key else {
                continue;
            };
            let sign = chunk.ops[i].sign();
            let row = rows.row(i);
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
            let epoch = self.epoch;
            let partition = self
                .partitions
                .entry(key.clone())
                .or_insert_with(|| Partition {
                    used: epoch,
                    ..Partition::default()
                });
            if let (Some(closing), Some(values)) = (self.closing.as_mut(), &values)
                && partition.rows.is_empty()
            {
                closing.open(values.row(i).as_ref(), &key);
            }
            let before = (partition.rows.len(), partition.bytes);
            let row: Encoded = row.as_ref().into();
            self.dirty.push((key.clone(), order.clone(), row.clone()));
            partition.change(order, row, sign);
            if let Some(keep) = self.keep {
                for (order, row) in partition.trim(keep) {
                    self.dirty.push((key.clone(), order, row));
                }
            }
            self.sizes.account(before, partition);
        }
        Ok(())
    }

    /// The partitions touched since the last call.
    pub(crate) fn take_touched(&mut self) -> Vec<Encoded> {
        self.touched.drain().collect()
    }

    /// Partition `key`, if it is in memory.
    pub(crate) fn get(&self, key: &[u8]) -> Option<&Partition> {
        self.partitions.get(key)
    }

    /// The keys of the partitions in memory.
    pub(crate) fn keys(&self) -> Vec<Encoded> {
        self.partitions.keys().cloned().collect()
    }

    /// Records what was emitted for partition `key`. With the `memory`
    /// backend, forgets the partition once it has neither rows nor emitted
    /// rows (the `rocksdb` backend forgets it at a checkpoint, once the
    /// store has its rows' removal).
    pub(crate) fn set_emitted(&mut self, key: &[u8], emitted: Vec<Encoded>) {
        let limited = self.cache_limit().is_some();
        let Some(p) = self.partitions.get_mut(key) else {
            return;
        };
        let before = (p.rows.len(), p.bytes);
        p.bytes -= p.emitted_bytes();
        p.emitted = emitted;
        p.bytes += p.emitted_bytes();
        self.sizes.account(before, p);
        if !(p.emitted.is_empty() && p.rows.is_empty()) {
            return;
        }
        if limited {
            if let Some((key, _)) = self.partitions.get_key_value(key) {
                self.emptied.push(key.clone());
            }
        } else if let Some(p) = self.partitions.remove(key) {
            self.sizes.evicted(&p, true);
        }
    }

    /// The state's size, as operator `operator`.
    pub(crate) fn state_size(&self, operator: &'static str) -> StateSize {
        StateSize {
            operator,
            keys: self.sizes.partitions,
            rows: self.sizes.rows,
            cached: self.sizes.cached_rows,
        }
    }

    /// Epoch `epoch` ends: the next checkpoint is its.
    pub(crate) fn end_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// `rocksdb` backend: beyond the cache's size, evicts the partitions
    /// used longest ago among those the store holds as they are; and
    /// forgets empty ones.
    fn shed(&mut self) {
        let (Some(limit), Some(table)) = (self.cache_limit(), self.table.as_ref()) else {
            return;
        };
        let durable = table.durable();
        let evictable = |p: &Partition| p.written <= durable;
        for key in std::mem::take(&mut self.emptied) {
            match self.partitions.get(&key) {
                Some(p) if p.rows.is_empty() && p.emitted.is_empty() => {
                    if evictable(p) && !self.touched.contains(&key) {
                        if let Some(p) = self.partitions.remove(&key) {
                            self.sizes.evicted(&p, true);
                        }
                    } else {
                        self.emptied.push(key);
                    }
                }
                _ => {}
            }
        }
        if self.sizes.bytes <= limit {
            return;
        }
        let candidates = self
            .partitions
            .iter()
            .filter(|(key, p)| evictable(p) && !self.touched.contains(*key))
            .map(|(key, p)| (p.used, p.bytes, key.clone()))
            .collect();
        for key in eviction_victims(candidates, self.sizes.bytes, limit) {
            if let Some(p) = self.partitions.remove(&key) {
                self.sizes.evicted(&p, true);
            }
        }
    }
}
