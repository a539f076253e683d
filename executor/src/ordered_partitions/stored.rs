//! Where ordered partitions live in checkpoints.
//!
//! ```text
//! keyed range (see crate::checkpoint):
//!   r <partition part> <order part> <row> -> multiplicity
//!   m <partition part>                    -> (empty): the partition has rows
//!   n                                     -> partitions with rows, rows
//! operator range:
//!   w                                     -> the closed bound (crate::closing_partitions)
//! ```
//!
//! One partition's rows sit together, in order: the `rocksdb` backend reads
//! a partition with one prefix scan, a closed partition leaves in one range
//! deletion, and recovery's read of the operator range leaves the rows
//! alone (the `memory` backend reads them all itself). The marker lets the
//! `rocksdb` backend ask for many partitions in one `multi_get`, whose
//! bloom filters answer for the new ones, and scan only those that exist.

use eddy_storage::prefix_end;

use super::{Encoded, OrderedPartitions, Partition, Sizes};
use crate::checkpoint::{
    StateEntries, StateWriter, ValueReader, ValueWriter, push_part, split_part,
};
use crate::closing_partitions::CLOSED_KEY;
use crate::error::{ExecutorError, Result};
use crate::keyed_state::StoreTable;

const ROW: u8 = b'r';
const MARKER: u8 = b'm';
const SIZES: &[u8] = b"n";

/// The key of partition `partition`'s marker.
fn marker_key(partition: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + partition.len());
    k.push(MARKER);
    push_part(&mut k, partition);
    k
}

/// The prefix of partition `partition`'s rows.
fn partition_prefix(partition: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + partition.len());
    k.push(ROW);
    push_part(&mut k, partition);
    k
}

/// The key of a stored row.
fn row_key(partition: &[u8], order: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = partition_prefix(partition);
    push_part(&mut k, order);
    k.extend_from_slice(row);
    k
}

/// A stored row's key, after `r`: (partition, order key, row).
fn parse_row(key: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
    let (partition, rest) = split_part(key)?;
    let (order, row) = split_part(rest)?;
    Ok((partition, order, row))
}

/// Adds a stored row to `partition`.
fn add_row(partition: &mut Partition, order: &[u8], row: &[u8], value: &[u8]) -> Result<()> {
    let count = ValueReader::new(value).i64()?;
    if count <= 0 {
        return Err(ExecutorError::CorruptState(
            "a window operator's stored row has no copies".into(),
        ));
    }
    partition.change(order.into(), row.into(), count);
    Ok(())
}

/// Partitions `keys` as the store holds them (empty where it holds none).
pub(super) fn read_partitions(table: &StoreTable, keys: &[&Encoded]) -> Result<Vec<Partition>> {
    let markers: Vec<Vec<u8>> = keys.iter().map(|k| marker_key(k)).collect();
    let found = table.get_many(markers.iter().map(Vec::as_slice))?;
    keys.iter()
        .zip(found)
        .map(|(key, marker)| match marker {
            Some(_) => read_partition(table, key),
            None => Ok(Partition::default()),
        })
        .collect()
}

/// Partition `key` as the store holds it.
fn read_partition(table: &StoreTable, key: &[u8]) -> Result<Partition> {
    let mut partition = Partition {
        in_store: true,
        ..Partition::default()
    };
    let mut failed = None;
    table.scan(&partition_prefix(key), |rest, value| {
        if failed.is_none() {
            failed = split_part(rest)
                .and_then(|(order, row)| add_row(&mut partition, order, row, value))
                .err();
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(partition),
    }
}

impl OrderedPartitions {
    /// Writes every row changed since the last checkpoint, and drops the
    /// closed partitions' rows; then, with the `rocksdb` backend, evicts.
    pub(crate) fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        if let Some(closing) = self.closing.as_mut() {
            closing.checkpoint(state);
        }
        let epoch = self.epoch;
        let mut keyed = state.keyed();
        let mut unmarked: Option<Encoded> = None;
        for (partition, order, row) in self.dirty.take() {
            let key = row_key(&partition, &order, &row);
            let stored = self.partitions.get_mut(&partition);
            let count = stored
                .as_ref()
                .and_then(|p| p.rows.get(&(order, row)).copied());
            match count {
                Some(n) => keyed.put(&key, ValueWriter::new().i64(n).finish()),
                None => keyed.delete(&key),
            }
            let Some(p) = stored else {
                // Gone from memory with no rows (emptied, or closed).
                if unmarked.as_ref() != Some(&partition) {
                    keyed.delete(&marker_key(&partition));
                    unmarked = Some(partition);
                }
                continue;
            };
            p.written = epoch;
            // The marker follows whether the partition has rows.
            if p.in_store == p.rows.is_empty() {
                p.in_store = !p.rows.is_empty();
                match p.in_store {
                    true => keyed.put(&marker_key(&partition), Vec::new()),
                    false => keyed.delete(&marker_key(&partition)),
                }
            }
        }
        for partition in self.closed.drain(..) {
            let from = partition_prefix(&partition);
            if let Some(to) = prefix_end(&from) {
                keyed.delete_range(&from, &to);
            }
            keyed.delete(&marker_key(&partition));
        }
        let sizes = (self.sizes.partitions, self.sizes.rows);
        if sizes != self.written {
            keyed.put(
                SIZES,
                ValueWriter::new()
                    .i64(sizes.0 as i64)
                    .i64(sizes.1 as i64)
                    .finish(),
            );
            self.written = sizes;
        }
        self.epoch = epoch + 1;
        self.shed();
    }

    /// Starts from the checkpointed state: `entries` (the operator range)
    /// and the rows in the keyed range, which the `memory` backend reads
    /// and the `rocksdb` backend leaves in the store (reading them once to
    /// index closing partitions). Nothing is emitted yet (the operator
    /// computes `emitted` again for the partitions in memory).
    pub(crate) fn restore(&mut self, entries: StateEntries) -> Result<()> {
        self.partitions.clear();
        self.touched.clear();
        self.closed.clear();
        self.emptied.clear();
        self.sizes = Sizes::default();
        let mut closed_below = None;
        for (key, value) in entries {
            if key.as_ref() != CLOSED_KEY {
                return Err(ExecutorError::CorruptState(
                    "a window operator's state key is unknown".into(),
                ));
            }
            closed_below = Some(value);
        }
        let Some(table) = self.table.clone() else {
            return Ok(());
        };
        let keep_all = self.cache_limit().is_none();
        // Per partition, its first row: a closing partition's value is in
        // each of its rows.
        let mut firsts: Vec<(Encoded, Encoded)> = Vec::new();
        if keep_all || self.closing.is_some() {
            let mut failed = None;
            table.scan(&[ROW], |key, value| {
                if failed.is_some() {
                    return;
                }
                let read = parse_row(key).and_then(|(partition, order, row)| {
                    if firsts.last().is_none_or(|(p, _)| p.as_ref() != partition) {
                        firsts.push((partition.into(), row.into()));
                    }
                    if keep_all {
                        let p = self.partitions.entry(partition.into()).or_default();
                        p.in_store = true;
                        let before = (p.rows.len(), p.bytes);
                        add_row(p, order, row, value)?;
                        self.sizes.account(before, p);
                    }
                    Ok(())
                });
                failed = read.err();
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if !keep_all && let Some(sizes) = table.get(SIZES)? {
            let mut value = ValueReader::new(&sizes);
            self.sizes.partitions = value.i64()? as u64;
            self.sizes.rows = value.i64()? as u64;
        }
        self.written = (self.sizes.partitions, self.sizes.rows);
        if let Some(closing) = self.closing.as_mut() {
            let keys: Vec<Encoded> = firsts.iter().map(|(p, _)| p.clone()).collect();
            let columns = if firsts.is_empty() {
                None
            } else {
                Some(
                    self.row_codec
                        .decode(firsts.iter().map(|(_, r)| r.as_ref()))?,
                )
            };
            let values = columns.as_ref().map(|c| &c[closing.column()]);
            closing.restore(closed_below, &keys, values)?;
        }
        Ok(())
    }
}
