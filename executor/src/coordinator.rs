//! Epochs and the committed state every query reads.
//!
//! ```text
//!  DML / ticks --Barrier(e)--> pipelines --> Materialize(rel) --ack(rel, e, delta)--> Coordinator
//! ```
//!
//! [`Coordinator::begin_epoch`] opens epoch `e` expecting an ack from every
//! live relation. Each relation's materialize operator acks with the net
//! change of its rows during `e`. When the last ack arrives, all deltas of
//! `e` are applied together under one lock and the committed epoch becomes
//! `e`: readers see every relation at the same epoch, never half of one.
//!
//! Invariants: epochs commit in order; a relation's rows (its *bag*: encoded
//! row -> multiplicity) change only at commit; a relation that failed is no
//! longer waited for.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::watch;

use crate::codec::RowCodec;
use crate::error::{ExecutorError, Result};

/// Net change of a relation's rows: encoded row -> change in multiplicity.
pub type Delta = crate::hash::HashMap<Box<[u8]>, i64>;

const BATCH_ROWS: usize = 8192;

#[derive(Debug)]
struct Relation {
    schema: SchemaRef,
    codec: RowCodec,
    rows: crate::hash::HashMap<Box<[u8]>, i64>,
    /// Decoded rows, valid until the next change.
    cache: Option<Arc<Vec<RecordBatch>>>,
    failed: Option<String>,
}

impl Relation {
    fn batches(&mut self) -> Result<Arc<Vec<RecordBatch>>> {
        if let Some(cache) = &self.cache {
            return Ok(cache.clone());
        }
        let mut batches = Vec::new();
        let mut pending: Vec<&[u8]> = Vec::with_capacity(BATCH_ROWS);
        let flush = |pending: &mut Vec<&[u8]>, batches: &mut Vec<RecordBatch>| -> Result<()> {
            let columns = self.codec.decode(pending.drain(..))?;
            batches.push(RecordBatch::try_new(self.schema.clone(), columns)?);
            Ok(())
        };
        for (row, n) in &self.rows {
            for _ in 0..*n {
                pending.push(row);
                if pending.len() == BATCH_ROWS {
                    flush(&mut pending, &mut batches)?;
                }
            }
        }
        if !pending.is_empty() {
            flush(&mut pending, &mut batches)?;
        }
        let batches = Arc::new(batches);
        self.cache = Some(batches.clone());
        Ok(batches)
    }
}

#[derive(Debug, Default)]
struct PendingEpoch {
    waiting: HashSet<u32>,
    deltas: Vec<(u32, Delta)>,
}

#[derive(Debug)]
struct State {
    relations: HashMap<u32, Relation>,
    pending: BTreeMap<u64, PendingEpoch>,
    next_epoch: u64,
    committed: u64,
    /// Deltas acked for epochs a relation was not part of (see [`Coordinator::ack`]).
    carried: HashMap<u32, Delta>,
}

/// Tracks epochs and owns the committed rows of every table and view.
#[derive(Debug)]
pub struct Coordinator {
    state: Mutex<State>,
    committed_tx: watch::Sender<u64>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                relations: HashMap::new(),
                pending: BTreeMap::new(),
                next_epoch: 1,
                committed: 0,
                carried: HashMap::new(),
            }),
            committed_tx: watch::channel(0).0,
        }
    }
}

impl Coordinator {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts tracking relation `id` (empty) with rows of `schema`.
    pub fn add_relation(&self, id: u32, schema: SchemaRef) -> Result<()> {
        let codec = RowCodec::for_schema(&schema)?;
        self.lock().relations.insert(
            id,
            Relation {
                schema,
                codec,
                rows: crate::hash::HashMap::default(),
                cache: None,
                failed: None,
            },
        );
        Ok(())
    }

    /// Stops tracking relation `id`.
    pub fn remove_relation(&self, id: u32) {
        let mut state = self.lock();
        state.relations.remove(&id);
        state.carried.remove(&id);
        for pending in state.pending.values_mut() {
            pending.waiting.remove(&id);
        }
        self.commit_ready(&mut state);
    }

    /// Marks relation `id` failed: queries on it report `reason`, epochs stop waiting for it.
    pub fn fail(&self, id: u32, reason: String) {
        let mut state = self.lock();
        if let Some(r) = state.relations.get_mut(&id) {
            r.failed.get_or_insert(reason);
        }
        for pending in state.pending.values_mut() {
            pending.waiting.remove(&id);
        }
        self.commit_ready(&mut state);
    }

    /// Opens the next epoch; returns its number. The caller then sends
    /// `Barrier(epoch)` into every source.
    pub fn begin_epoch(&self) -> u64 {
        let mut state = self.lock();
        let epoch = state.next_epoch;
        state.next_epoch += 1;
        let waiting = state
            .relations
            .iter()
            .filter(|(_, r)| r.failed.is_none())
            .map(|(id, _)| *id)
            .collect();
        state.pending.insert(
            epoch,
            PendingEpoch {
                waiting,
                deltas: vec![],
            },
        );
        self.commit_ready(&mut state);
        epoch
    }

    /// Relation `id` finished epoch `epoch` with net change `delta`.
    ///
    /// A relation created right after a quiesce can see the barrier of an
    /// epoch that committed before it existed (its upstream acked, then
    /// forwarded the barrier). Such a delta — its backfill — belongs to the
    /// relation's first epoch and is carried into its next ack.
    pub fn ack(&self, id: u32, epoch: u64, mut delta: Delta) {
        let mut state = self.lock();
        let waited = state
            .pending
            .get(&epoch)
            .is_some_and(|p| p.waiting.contains(&id));
        if !waited {
            merge(state.carried.entry(id).or_default(), delta);
            return;
        }
        if let Some(carried) = state.carried.remove(&id) {
            merge(&mut delta, carried);
        }
        if let Some(pending) = state.pending.get_mut(&epoch) {
            pending.waiting.remove(&id);
            if !delta.is_empty() {
                pending.deltas.push((id, delta));
            }
        }
        self.commit_ready(&mut state);
    }

    fn commit_ready(&self, state: &mut State) {
        while let Some(entry) = state.pending.first_entry() {
            if !entry.get().waiting.is_empty() {
                break;
            }
            let (epoch, pending) = entry.remove_entry();
            for (id, delta) in pending.deltas {
                let Some(relation) = state.relations.get_mut(&id) else {
                    continue;
                };
                relation.cache = None;
                merge(&mut relation.rows, delta);
            }
            state.committed = epoch;
            self.committed_tx.send_replace(epoch);
        }
    }

    /// Waits until `epoch` is committed.
    pub async fn wait_committed(&self, epoch: u64) {
        let mut rx = self.committed_tx.subscribe();
        // The sender lives as long as `self`, so this only ends by reaching `epoch`.
        let _ = rx.wait_for(|e| *e >= epoch).await;
    }

    /// The committed rows of several relations, all at one epoch.
    pub fn read(&self, ids: &[u32]) -> Result<HashMap<u32, Arc<Vec<RecordBatch>>>> {
        let mut state = self.lock();
        let mut out = HashMap::new();
        for id in ids {
            let relation = state
                .relations
                .get_mut(id)
                .ok_or_else(|| ExecutorError::Internal(format!("relation {id} is not tracked")))?;
            if let Some(reason) = &relation.failed {
                return Err(ExecutorError::Unsupported(format!(
                    "this view failed and is no longer maintained: {reason}"
                )));
            }
            out.insert(*id, relation.batches()?);
        }
        Ok(out)
    }

    /// The failure of relation `id`, if it failed.
    pub fn failure(&self, id: u32) -> Option<String> {
        self.lock()
            .relations
            .get(&id)
            .and_then(|r| r.failed.clone())
    }
}

/// Adds `delta` into `into`, dropping rows whose multiplicity becomes zero.
fn merge(into: &mut Delta, delta: Delta) {
    for (row, change) in delta {
        match into.entry(row) {
            Entry::Occupied(mut e) => {
                *e.get_mut() += change;
                if *e.get() == 0 {
                    e.remove();
                }
            }
            Entry::Vacant(e) => {
                e.insert(change);
            }
        }
    }
}

/// Adds one row's change into `delta` without allocating for rows already in it.
pub(crate) fn add_change(delta: &mut Delta, row: &[u8], change: i64) {
    match delta.get_mut(row) {
        Some(n) => {
            *n += change;
            if *n == 0 {
                delta.remove(row);
            }
        }
        None => {
            delta.insert(row.into(), change);
        }
    }
}
