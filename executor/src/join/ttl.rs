//! A join's state TTL (see [`crate::state_ttl`]): its stored rows by
//! stamp, in memory while the join's rows are all there, and in the store,
//! an index by stamp ([`TimeOrderedState`]), once they moved there (see
//! [`JoinState`]): expiry then reads back the rows it deletes.

use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use super::HashJoin;
use super::state::{Encoded, JoinState};
use super::state_key;
use crate::checkpoint::{StateWriter, split_part};
use crate::error::{ExecutorError, Result};
use crate::keyed_state::{StateConfig, StatePlace, StoreTable};
use crate::message::{Op, StreamChunk};
use crate::state_ttl::StateTtl;
use crate::time_ordered_state::TimeOrderedState;

/// A stored row: (side, join key, row).
pub(super) type StoredRow = (u8, Encoded, Encoded);

/// The tag of the index by stamp in the join's keyed range.
const BY_STAMP: u8 = b's';

/// A stored row's name in the index by stamp: side, join key part, row.
fn name(row: &StoredRow) -> Vec<u8> {
    let mut name = vec![row.0];
    name.extend_from_slice(&state_key::part_and_row(&row.1, &row.2));
    name
}

fn parse_name(name: &[u8]) -> Result<StoredRow> {
    let (&side, rest) = name.split_first().ok_or_else(|| {
        ExecutorError::CorruptState("a join's index by stamp names no row".into())
    })?;
    let (key, row) = split_part(rest)?;
    Ok((side, key.into(), row.into()))
}

/// A join's state TTL.
#[derive(Debug)]
pub(super) struct JoinTtl {
    /// The clock, and the rows by stamp while memory holds the join's rows.
    rows: StateTtl<StoredRow>,
    /// The rows by stamp in the store, once the join's rows are there.
    stored: Option<TimeOrderedState<()>>,
    place: Option<(StoreTable, StateConfig)>,
    /// Each side's schema (to delete expired rows as input would).
    schemas: [SchemaRef; 2],
}

impl JoinTtl {
    pub fn new(ttl: Duration, schemas: [SchemaRef; 2]) -> Self {
        Self {
            rows: StateTtl::new(ttl),
            stored: None,
            place: None,
            schemas,
        }
    }

    /// Gives the index its place in the store, kept as `config` says.
    pub fn attach(&mut self, table: StoreTable, config: StateConfig) {
        self.place = Some((table, config));
    }

    /// An empty index by stamp in the store.
    fn new_index(&self) -> Option<TimeOrderedState<()>> {
        let (table, config) = self.place.clone()?;
        let mut index = TimeOrderedState::new(BY_STAMP, |_| Vec::new(), |_| Ok(()));
        *index.place() = StatePlace::new(config, table);
        Some(index)
    }

    /// `row`, stamped `previous` (None when new), changed now; returns its
    /// new stamp.
    pub fn touch(&mut self, row: &StoredRow, previous: Option<i64>) -> i64 {
        let Some(index) = self.stored.as_mut() else {
            return self.rows.touch(row, previous);
        };
        let now = self.rows.now();
        if previous != Some(now) {
            let name = name(row);
            if let Some(previous) = previous {
                index.remove_present(previous, &name);
            }
            index.set(now, &name, Some(()));
        }
        now
    }

    /// `row`, stamped `stamp`, left state.
    pub fn forget(&mut self, row: &StoredRow, stamp: i64) {
        match self.stored.as_mut() {
            Some(index) => index.remove_present(stamp, &name(row)),
            None => self.rows.forget(row, stamp),
        }
    }

    /// Moves time to barrier time `now`; takes the rows that expired.
    fn advance(&mut self, now: i64) -> Result<Vec<StoredRow>> {
        let Some(index) = self.stored.as_mut() else {
            return Ok(self.rows.advance(now));
        };
        let threshold = self.rows.move_clock(now);
        index
            .take_below(threshold)?
            .into_iter()
            .map(|(_, name, ())| parse_name(&name))
            .collect()
    }

    /// Forgets every row (before a restore).
    pub fn clear(&mut self) {
        self.rows.clear();
        self.stored = None;
    }

    /// A row read back from a checkpoint, stamped `stamp` (rows in memory).
    pub fn restored(&mut self, row: &StoredRow, stamp: i64) {
        self.rows.stamp(row, None, stamp);
    }

    /// After the join's state restored: the index is in the store when the
    /// join's rows are.
    pub fn restore(&mut self, state: &JoinState) -> Result<()> {
        if state.in_store()
            && let Some(mut index) = self.new_index()
        {
            index.restore()?;
            self.stored = Some(index);
        }
        Ok(())
    }

    /// Writes the index's changes of epoch `epoch`. When the join's rows
    /// just moved to the store (all of them in memory still), their stamps
    /// move with them.
    pub fn checkpoint(&mut self, state: &JoinState, writer: &mut StateWriter<'_>, epoch: u64) {
        if self.stored.is_none()
            && state.in_store()
            && let Some(mut index) = self.new_index()
        {
            for (side, key, row, entry) in state.rows_in_memory() {
                let stored_row = (side as u8, key.clone(), row.clone());
                index.set(entry.stamp, &name(&stored_row), Some(()));
            }
            self.rows.clear();
            self.stored = Some(index);
        }
        if let Some(index) = self.stored.as_mut() {
            index.checkpoint(writer, epoch);
        }
    }
}

impl HashJoin {
    /// Whether a retraction of `row` on `side` finds nothing stored: with a
    /// state TTL, the row expired (and was retracted) already.
    pub(super) fn expired_already(&self, side: usize, key: Option<&Encoded>, row: &[u8]) -> bool {
        self.ttl.is_some()
            && key.is_some_and(|k| {
                self.state
                    .bucket(side, k)
                    .and_then(|b| b.get(row))
                    .is_none_or(|e| e.copies <= 0)
            })
    }

    /// Deletes the stored rows that expired by barrier time `now`, as their
    /// input would.
    pub(super) fn expire(&mut self, now: i64, out: &mut Vec<StreamChunk>) -> Result<()> {
        let Some(ttl) = self.ttl.as_mut() else {
            return Ok(());
        };
        let expired = ttl.advance(now)?;
        let schemas = ttl.schemas.clone();
        for (side, schema) in schemas.into_iter().enumerate() {
            let mine: Vec<&StoredRow> = expired
                .iter()
                .filter(|(s, _, _)| usize::from(*s) == side)
                .collect();
            // Rows that left memory are read back first.
            let whole = self.reads_degrees();
            let read_whole =
                self.state
                    .load(side, mine.iter().map(|(_, k, r)| (k, r.as_ref())), whole)?;
            if whole && !read_whole.is_empty() {
                self.compute_degrees(&read_whole)?;
            }
            let mut rows: Vec<&[u8]> = Vec::new();
            for (_, key, row) in mine {
                let copies = self
                    .state
                    .bucket(side, key)
                    .and_then(|b| b.get(row))
                    .map_or(0, |e| e.copies);
                for _ in 0..copies {
                    rows.push(row);
                }
            }
            if rows.is_empty() {
                continue;
            }
            let columns = self.sides[side].codec.decode(rows.iter().copied())?;
            let chunk = StreamChunk {
                batch: RecordBatch::try_new(schema, columns)?,
                ops: vec![Op::Delete; rows.len()].into(),
            };
            self.apply(side, chunk, None, out)?;
        }
        Ok(())
    }
}
