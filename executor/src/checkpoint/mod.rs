//! What pipelines hand to a checkpoint, and get back on recovery.
//!
//! At every barrier, after the barrier ran through its operator chain, a
//! fragment asks each operator for the state it changed during the epoch
//! ([`crate::operator::Operator::checkpoint`]) and hands the writes to the
//! coordinator in one [`FragmentCheckpoint`]; source readers hand over their
//! positions the same way when they forward the barrier. The materialize
//! operator adds its relation's net change of rows: that is the relation's
//! ack. Since every other fragment of a pipeline (and every reader) is
//! upstream of the materialize fragment, their writes for epoch `e` are
//! staged before the ack of `e`, so the epoch's checkpoint is complete when
//! the last relation acks.
//!
//! Layout of a pipeline's state keys (after the storage's `s <relation>`):
//!
//! ```text
//! <scope:u32be> <operator:u16be> <operator's own key>
//! ```
//!
//! `scope` names where the operator runs, the same whenever the pipeline is
//! built again from the same plan, even with more splits than before:
//!
//! - a source reader: [`READER_SCOPE`] + its split (the source's index in
//!   the pipeline << 16, + the split's index);
//! - a fragment with one instance per split of a source (the operators a
//!   reader's rows pass before their first shuffle): [`SPLIT_SCOPE`] + (the
//!   scan's number in plan order << 16) + the split's index;
//! - any other fragment: its index among those, in plan order.
//!
//! A relation's first checkpoint records [`STATE_LAYOUT`]; a pipeline
//! checkpointed under another layout is not restored from keys it would
//! not find (see [`crate::runtime`]).
//! A fragment's or reader's own state (its count of rows whose expressions
//! failed, [`crate::eval::RowErrors`]) is under the operator index
//! [`OWN_STATE`], which no operator chain reaches.
//! An operator's keyed state ([`crate::keyed_state`]) has a range of its
//! own, its operator index with [`KEYED`] set: recovery reads an operator's
//! other state in one scan and leaves the keyed state where it is, for the
//! `rocksdb` backend to read key by key.
//!
//! Invariant: an operator's checkpoint writes, applied to what it restored,
//! give exactly its state at the barrier — what it would have produced
//! from then on is what it produces after recovery.

mod bytes;
mod writer;

pub use bytes::{ValueReader, ValueWriter};
pub use writer::{BackgroundWriter, CheckpointStats};

use eddy_storage::CheckpointBatch;

use crate::error::Result;
use crate::relation_rows::{Changes, Delta};

/// Scopes of source readers start here.
pub const READER_SCOPE: u32 = 0x8000_0000;

/// Scopes of fragments with one instance per split start here.
pub const SPLIT_SCOPE: u32 = 0x4000_0000;

/// How many scans of sources one pipeline may have (a scan's number has
/// 14 bits in [`SPLIT_SCOPE`]).
pub const MAX_SCANS: u32 = 1 << 14;

/// The version of the state key layout, recorded with each relation's
/// first checkpoint. Bump it when a change moves pipeline state: a
/// pipeline checkpointed under another layout fails to restore, loudly,
/// instead of starting from state it cannot find. (Version 1: fragment
/// scopes no longer shift when a source gains splits; join rows without a
/// time in the keyed range. Version 2: top-N and window function rows in
/// the keyed range. Version 3: a windowed aggregate's group keys start
/// with the window, so closed windows leave in one range deletion.
/// Version 4: temporal filter rows in the keyed range, by time. Version 5:
/// session window rows in the keyed range.) A
/// pipeline restores from a layout at least [`oldest_layout_for`] its
/// plan; what differs between the layouts it reads, the builder follows
/// (see [`crate::aggregate::WindowKey::leads_key`]).
pub const STATE_LAYOUT: u32 = 5;

/// The oldest state layout a pipeline of `plan` restores from: the last
/// that moved the state of an operator it has (5 for a session window, 4
/// for a temporal filter, 2 for a top-N or window function), else 1.
pub fn oldest_layout_for(plan: &eddy_planner::StreamNode) -> u32 {
    use eddy_planner::StreamNode;
    let oldest = match plan {
        StreamNode::SessionWindow { .. } => 5,
        StreamNode::TemporalFilter { .. } => 4,
        StreamNode::TopN { .. } | StreamNode::OverWindow { .. } => 2,
        _ => 1,
    };
    plan.inputs()
        .into_iter()
        .map(oldest_layout_for)
        .fold(oldest, u32::max)
}

/// Set in the operator index of an operator's keyed state.
pub const KEYED: u16 = 0x8000;

/// The operator index of a fragment's or reader's own state.
pub const OWN_STATE: u16 = KEYED - 1;

/// The prefix of the state keys of operator `operator` of scope `scope`.
pub fn state_prefix(scope: u32, operator: u16) -> [u8; 6] {
    let mut prefix = [0u8; 6];
    prefix[..4].copy_from_slice(&scope.to_be_bytes());
    prefix[4..].copy_from_slice(&operator.to_be_bytes());
    prefix
}

/// A state key or value.
pub type Bytes = Box<[u8]>;

/// One state write, its key with the operator's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateWrite {
    /// Sets a key.
    Put(Vec<u8>, Vec<u8>),
    /// Removes a key.
    Delete(Vec<u8>),
    /// Removes every key from the first up to, not including, the second.
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl StateWrite {
    /// Writes it into `batch` as relation `id`'s state.
    pub fn write_to(&self, batch: &mut CheckpointBatch, id: u32) {
        match self {
            StateWrite::Put(key, value) => batch.set_state(id, key, Some(value)),
            StateWrite::Delete(key) => batch.set_state(id, key, None),
            StateWrite::DeleteRange(from, to) => batch.delete_state_range(id, from, to),
        }
    }
}

/// One fragment's (or reader's) contribution to an epoch's checkpoint.
#[derive(Debug, Default)]
pub struct FragmentCheckpoint {
    pub(crate) writes: Vec<StateWrite>,
    /// The relation's net change of rows: set by the materialize operator.
    pub(crate) rows: Option<Changes>,
    /// Rows kept in late-rows relations (by id), in the same commit.
    pub(crate) late: Vec<(u32, Delta)>,
}

impl FragmentCheckpoint {
    /// A writer for operator `operator` of scope `scope`.
    pub fn scope(&mut self, scope: u32, operator: u16) -> StateWriter<'_> {
        StateWriter {
            prefix: state_prefix(scope, operator),
            checkpoint: self,
        }
    }

    /// The state writes, in the order they were made.
    pub fn writes(&self) -> &[StateWrite] {
        &self.writes
    }

    /// Whether there is nothing to hand over.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.rows.is_none() && self.late.is_empty()
    }
}

/// Where one operator writes its changed state.
#[derive(Debug)]
pub struct StateWriter<'a> {
    prefix: [u8; 6],
    checkpoint: &'a mut FragmentCheckpoint,
}

impl StateWriter<'_> {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(6 + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    /// A writer for this operator's keyed state.
    pub fn keyed(&mut self) -> StateWriter<'_> {
        let mut prefix = self.prefix;
        prefix[4] |= (KEYED >> 8) as u8;
        StateWriter {
            prefix,
            checkpoint: self.checkpoint,
        }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>) {
        let key = self.key(key);
        self.checkpoint.writes.push(StateWrite::Put(key, value));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        let key = self.key(key);
        self.checkpoint.writes.push(StateWrite::Delete(key));
    }

    /// Removes every key from `from` up to, not including, `to`: one write
    /// however many keys there are.
    pub fn delete_range(&mut self, from: &[u8], to: &[u8]) {
        let (from, to) = (self.key(from), self.key(to));
        self.checkpoint
            .writes
            .push(StateWrite::DeleteRange(from, to));
    }

    /// The relation's net change of rows this epoch (its ack).
    pub(crate) fn rows(&mut self, changes: Changes) {
        self.checkpoint.rows = Some(changes);
    }

    /// Late rows for late-rows relation `id` (see [`crate::late_rows`]).
    pub(crate) fn late_rows(&mut self, id: u32, rows: Delta) {
        self.checkpoint.late.push((id, rows));
    }
}

/// One operator's restored entries, in key order, its prefix removed.
pub type StateEntries = Vec<(Bytes, Bytes)>;

/// Keys changed since the last checkpoint. Pushing is cheap (duplicates
/// allowed); they are sorted and deduplicated when the checkpoint is taken.
#[derive(Debug)]
pub struct Dirty<K>(Vec<K>);

impl<K> Default for Dirty<K> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord> Dirty<K> {
    /// Marks `key` changed.
    pub fn push(&mut self, key: K) {
        self.0.push(key);
    }

    /// Every key changed since the last call, once each.
    pub fn take(&mut self) -> Vec<K> {
        let mut keys = std::mem::take(&mut self.0);
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// Appends `part` to `key`, length first, so concatenated parts split back unambiguously.
pub fn push_part(key: &mut Vec<u8>, part: &[u8]) {
    key.extend_from_slice(&(part.len() as u32).to_be_bytes());
    key.extend_from_slice(part);
}

/// Splits a length-prefixed part (see [`push_part`]) off the front of `key`.
pub fn split_part(key: &[u8]) -> Result<(&[u8], &[u8])> {
    let mut reader = ValueReader::new(key);
    let part = reader.bytes()?;
    Ok((part, reader.rest()))
}
