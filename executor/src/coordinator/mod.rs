//! Epochs, checkpoints, and the committed state every query reads.
//!
//! ```text
//!  DML / ticks --Barrier(e)--> pipelines --state(rel, e)--------------> Coordinator
//!                                   \--> Materialize(rel) --ack(rel, e, delta)--^
//! ```
//!
//! [`Coordinator::begin_epoch`] opens epoch `e` expecting an ack from every
//! live relation. Fragments and readers stage their state changes for `e`
//! as the barrier passes them; each relation's materialize operator acks
//! with the net change of its rows during `e` (see [`crate::checkpoint`]).
//! When the last ack arrives, all deltas of `e` are applied together under
//! one lock and the committed epoch becomes `e`: readers see every relation
//! at the same epoch, never half of one. The same step builds `e`'s
//! checkpoint and hands it to the writer's thread, which makes it durable
//! after every earlier one (`durable_epoch` follows it). What is committed
//! but not yet durable is what a crash takes back, and recovery computes
//! again: whatever must not be taken back (a Kafka sink's delivery, an
//! evicted state entry) waits for durability.
//!
//! Invariants: epochs commit in order; a relation's rows (its *bag*: encoded
//! row -> multiplicity) change only at commit; a relation that failed is no
//! longer waited for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::watch;

use eddy_storage::{CheckpointBatch, Store, StoredFailure};

use crate::checkpoint::{
    BackgroundWriter, CheckpointStats, FragmentCheckpoint, STATE_LAYOUT, StateWrite,
};
use crate::error::{ExecutorError, Result};
use crate::relation_rows::{Changes, RelationRows};

mod failure;
mod replay;

use failure::Failure;
pub use failure::Feed;

#[derive(Debug)]
struct Relation {
    rows: RelationRows,
    feed: Feed,
    failed: Option<Failure>,
    /// The log position a restart from a failure replays after, until the
    /// relation's next checkpoint (see [`Failure`]).
    replays_after: Option<u64>,
    /// Whether a checkpoint holds this relation yet.
    checkpointed: bool,
    /// The epoch its checkpoint holds (the last committed epoch it acked
    /// in), if known: a restart replays what the views it reads changed
    /// since (see `replay.rs`).
    epoch: Option<u64>,
    /// Whether epochs wait for its ack. A late-rows relation's rows come in
    /// its view's checkpoints, so it has no ack of its own.
    acks: bool,
}

#[derive(Debug)]
struct PendingEpoch {
    waiting: HashSet<u32>,
    acked: Vec<u32>,
    changes: Vec<(u32, Changes)>,
    writes: Vec<(u32, StateWrite)>,
    /// The last table change before the epoch's barrier.
    log_position: u64,
    began: Instant,
}

/// What a relation handed over for an epoch it was not part of (see [`Coordinator::stage`]).
#[derive(Debug, Default)]
struct Carried {
    changes: Vec<(u32, Changes)>,
    writes: Vec<StateWrite>,
}

#[derive(Debug)]
struct State {
    relations: HashMap<u32, Relation>,
    pending: BTreeMap<u64, PendingEpoch>,
    next_epoch: u64,
    committed: u64,
    /// The last table change the committed epoch holds.
    committed_log: u64,
    /// The epoch the server recovered from: the one recovered relations'
    /// checkpoints hold.
    recovered_epoch: u64,
    /// Restartable failures the store recorded, by relation, until the
    /// relation is tracked again (failed, for the supervisor to restart):
    /// its restart replays the log after them, so no checkpoint deletes it
    /// meanwhile.
    recorded_failures: HashMap<u32, StoredFailure>,
    carried: HashMap<u32, Carried>,
    /// Changes made outside every pipeline (a DELETE of kept late rows),
    /// applied with the next epoch that commits.
    edits: Vec<(u32, Changes)>,
    /// Makes epochs durable; `None` runs in memory only.
    writer: Option<BackgroundWriter>,
}

/// Tracks epochs and owns the committed rows of every table and view.
#[derive(Debug)]
pub struct Coordinator {
    state: Mutex<State>,
    committed_tx: watch::Sender<u64>,
    /// The last epoch in the store (the committed one without a store):
    /// what a crash cannot take back. The writer's thread moves it.
    durable_tx: Arc<watch::Sender<u64>>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Self::with_writer(None, 0, Arc::new(watch::channel(0).0))
    }
}

impl Coordinator {
    fn with_writer(
        writer: Option<BackgroundWriter>,
        committed: u64,
        durable_tx: Arc<watch::Sender<u64>>,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                relations: HashMap::new(),
                pending: BTreeMap::new(),
                next_epoch: committed + 1,
                committed,
                committed_log: 0,
                recovered_epoch: committed,
                recorded_failures: HashMap::new(),
                carried: HashMap::new(),
                edits: Vec::new(),
                writer,
            }),
            committed_tx: watch::channel(committed).0,
            durable_tx,
        }
    }

    /// A coordinator checkpointing into `store`, continuing after its last
    /// committed checkpoint; pipelines run `parallelism` partitions.
    pub fn durable(store: Arc<Store>, parallelism: usize) -> Result<Self> {
        let meta = store.meta()?;
        let failures = store.failures()?;
        let durable_tx = Arc::new(watch::channel(meta.epoch).0);
        let writer =
            BackgroundWriter::spawn(store, meta.epoch, parallelism as u64, durable_tx.clone())
                .map_err(|e| {
                    ExecutorError::Internal(format!("starting the checkpoint writer failed: {e}"))
                })?;
        let coordinator = Self::with_writer(Some(writer), meta.epoch, durable_tx);
        {
            let mut state = coordinator.lock();
            state.committed_log = meta.log_position;
            state.recorded_failures = failures
                .into_iter()
                .filter(|(_, f)| f.restartable)
                .collect();
        }
        Ok(coordinator)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    /// The store checkpoints go to, if any.
    pub fn store(&self) -> Option<Arc<Store>> {
        self.lock().writer.as_ref().map(|w| w.store().clone())
    }

    /// Bytes of checkpoints that failed and wait, in memory, to be
    /// written (see [`BackgroundWriter::backlog`]).
    pub fn checkpoint_backlog(&self) -> u64 {
        self.lock()
            .writer
            .as_ref()
            .map_or(0, BackgroundWriter::backlog)
    }

    /// Recent checkpoints, oldest first, and the last durable epoch.
    pub fn checkpoints(&self) -> (Vec<CheckpointStats>, u64) {
        let state = self.lock();
        match &state.writer {
            Some(w) => w.history(),
            None => (vec![], 0),
        }
    }

    /// Starts tracking relation `id`, fed by `feed`, with rows of `schema`:
    /// empty, or, with `restore`, its rows as of the last checkpoint that
    /// held it.
    pub fn add_relation(
        &self,
        id: u32,
        schema: SchemaRef,
        restore: bool,
        feed: Feed,
    ) -> Result<()> {
        self.track(id, schema, restore, true, feed)
    }

    /// Starts tracking view `view`'s late-rows relation, with the rows the
    /// last checkpoint holds (it is only ever written with the view's).
    pub fn add_late_rows(&self, view: u32) -> Result<()> {
        let id = crate::late_rows::late_rows_id(view);
        let feed = Feed::Pipeline {
            inputs: vec![],
            incarnation: 0,
            halted: Default::default(),
        };
        self.track(id, crate::late_rows::schema(), true, false, feed)
    }

    fn track(
        &self,
        id: u32,
        schema: SchemaRef,
        restore: bool,
        acks: bool,
        feed: Feed,
    ) -> Result<()> {
        let store = if restore { self.store() } else { None };
        let rows = match &store {
            Some(store) => RelationRows::restore(schema, store, id)?,
            None => RelationRows::new(schema)?,
        };
        let mut state = self.lock();
        // Anything carried is from a pipeline this one replaces.
        state.carried.remove(&id);
        // A restart of a pipeline that failed goes on from its checkpoint:
        // the table changes after it are replayed to it. Recovered, it is
        // still failed, as recorded, for the supervisor to restart (with
        // the relations that failed with it, which are not tracked yet).
        let replays_after = Self::replay_position(&state, id).filter(|_| restore);
        let recorded = state
            .recorded_failures
            .remove(&id)
            .filter(|_| restore && !state.relations.contains_key(&id));
        // Where its checkpoint is: a restart goes on from the old run's, a
        // recovery from the recovered epoch or the failure's.
        let epoch = match (state.relations.get(&id), &recorded) {
            (Some(old), _) if restore => old.epoch,
            (_, Some(f)) => f.epoch,
            _ => restore.then_some(state.recovered_epoch),
        };
        let failed = recorded.map(|f| {
            if let Feed::Pipeline { halted, .. } = &feed {
                halted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let not_restartable = match (f.epoch, Self::view_input(&state, &feed)) {
                (None, Some(view)) => Some(format!(
                    "it reads view {view}, and its failure was recorded without its checkpoint's epoch"
                )),
                _ => None,
            };
            Failure {
                reason: f.reason,
                cause: f.cause,
                not_restartable,
                log_position: f.log_position,
                recorded: true,
            }
        });
        state.relations.insert(
            id,
            Relation {
                rows,
                feed,
                failed,
                replays_after,
                checkpointed: store.is_some(),
                epoch,
                acks,
            },
        );
        Ok(())
    }

    /// Stops tracking relation `id`.
    pub fn remove_relation(&self, id: u32) {
        let mut state = self.lock();
        state.relations.remove(&id);
        state.recorded_failures.remove(&id);
        state.carried.remove(&id);
        for pending in state.pending.values_mut() {
            pending.writes.retain(|(rel, _)| *rel != id);
        }
        for pending in state.pending.values_mut() {
            pending.waiting.remove(&id);
        }
        self.commit_ready(&mut state);
    }

    /// Opens the next epoch, which holds table changes up to
    /// `log_position`; returns its number. The caller then sends
    /// `Barrier(epoch)` into every source.
    pub fn begin_epoch(&self, log_position: u64) -> u64 {
        let mut state = self.lock();
        let epoch = state.next_epoch;
        state.next_epoch += 1;
        let waiting = state
            .relations
            .iter()
            .filter(|(_, r)| r.failed.is_none() && r.acks)
            .map(|(id, _)| *id)
            .collect();
        state.pending.insert(
            epoch,
            PendingEpoch {
                waiting,
                acked: vec![],
                changes: vec![],
                writes: vec![],
                log_position,
                began: Instant::now(),
            },
        );
        self.commit_ready(&mut state);
        epoch
    }

    /// A fragment or reader of run `incarnation` of relation `id`'s
    /// pipeline hands over its part of epoch `epoch`'s checkpoint; with rows (from the materialize operator) this
    /// is the relation's ack.
    ///
    /// A relation created right after a quiesce can see the barrier of an
    /// epoch that committed before it existed (its upstream acked, then
    /// forwarded the barrier). What it hands over then — its backfill —
    /// belongs to the relation's first epoch and is carried into it.
    pub fn stage(&self, id: u32, incarnation: u64, epoch: u64, checkpoint: FragmentCheckpoint) {
        let FragmentCheckpoint { writes, rows, late } = checkpoint;
        let mut state = self.lock();
        // A failed relation's checkpoint stays at its last good epoch (a
        // restart starts from there); what it stages since is dropped, as
        // is what a stopped run of its pipeline stages while it drains.
        if state
            .relations
            .get(&id)
            .is_none_or(|r| r.failed.is_some() || !r.feed.is_fed_by(incarnation))
        {
            return;
        }
        let waited = state
            .pending
            .get(&epoch)
            .is_some_and(|p| p.waiting.contains(&id));
        let late = late.into_iter().map(|(rel, d)| (rel, Changes::Counted(d)));
        if !waited {
            let carried = state.carried.entry(id).or_default();
            carried.writes.extend(writes);
            carried.changes.extend(late);
            carried.changes.extend(rows.map(|changes| (id, changes)));
            return;
        }
        let carried = state.carried.remove(&id);
        let Some(pending) = state.pending.get_mut(&epoch) else {
            return;
        };
        if let Some(carried) = carried {
            pending
                .writes
                .extend(carried.writes.into_iter().map(|w| (id, w)));
            pending.changes.extend(carried.changes);
        }
        pending.writes.extend(writes.into_iter().map(|w| (id, w)));
        pending.changes.extend(late);
        if let Some(changes) = rows {
            pending.waiting.remove(&id);
            pending.acked.push(id);
            if !changes.is_empty() {
                pending.changes.push((id, changes));
            }
            self.commit_ready(&mut state);
        }
    }

    fn commit_ready(&self, state: &mut State) {
        while let Some(entry) = state.pending.first_entry() {
            if !entry.get().waiting.is_empty() {
                break;
            }
            let (epoch, mut pending) = entry.remove_entry();
            pending.changes.append(&mut state.edits);
            let mut batch = state.writer.as_ref().map(|_| CheckpointBatch::default());
            let held = Self::held_relations(state);
            let mut changed = Vec::new();
            for (id, changes) in pending.changes {
                let Some(relation) = state.relations.get_mut(&id) else {
                    continue;
                };
                let applied = relation
                    .rows
                    .apply(id, epoch, changes, batch.as_mut(), held.of(id));
                if let Err(e) = applied {
                    // Only a bug can get here (the rows were encoded with
                    // this schema); the relation stops rather than diverge.
                    relation.failed.get_or_insert(Failure {
                        reason: e.to_string(),
                        cause: None,
                        not_restartable: Some("its rows could not be applied".into()),
                        log_position: state.committed_log,
                        recorded: false,
                    });
                }
                if !changed.contains(&id) {
                    changed.push(id);
                }
            }
            if let Some(batch) = batch.as_mut() {
                for id in changed {
                    if let Some(relation) = state.relations.get_mut(&id) {
                        relation.rows.end_epoch(id, epoch, batch, held.of(id));
                    }
                }
            }
            if let Some(mut batch) = batch {
                for (id, write) in &pending.writes {
                    if state.relations.contains_key(id) {
                        write.write_to(&mut batch, *id);
                    }
                }
                for id in &pending.acked {
                    if let Some(r) = state.relations.get_mut(id) {
                        r.epoch = Some(epoch);
                        if !r.checkpointed {
                            r.checkpointed = true;
                            batch.mark_checkpointed(*id, epoch, STATE_LAYOUT);
                        }
                        // Its checkpoint took in what the restart replayed.
                        if r.replays_after.take().is_some() {
                            batch.set_failure(*id, None);
                        }
                    }
                }
                Self::record_failures(state, &mut batch);
                if let Some(writer) = state.writer.as_ref() {
                    writer.submit(batch, epoch, pending.log_position, pending.began);
                }
            }
            state.committed = epoch;
            state.committed_log = pending.log_position;
            self.committed_tx.send_replace(epoch);
            if state.writer.is_none() {
                // Nothing to write: what is committed is all there is.
                self.durable_tx.send_replace(epoch);
            }
        }
    }

    /// Follows the committed epoch.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed_tx.subscribe()
    }

    /// Follows the last durable epoch: behind the committed one while
    /// checkpoints fail to be written (a full disk), equal to it otherwise.
    pub fn durable_epoch(&self) -> watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }

    /// Waits until the checkpoint of committed epoch `epoch` was written
    /// (or its write failed): then the store holds what it will hold of it.
    pub async fn wait_written(&self, epoch: u64) {
        let writer = self.lock().writer.as_ref().map(|w| w.tried());
        if let Some(mut tried) = writer {
            let _ = tried.wait_for(|e| *e >= epoch).await;
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
            if let Some(failure) = &relation.failed {
                return Err(ExecutorError::Unsupported(format!(
                    "this view failed and is no longer maintained: {}",
                    failure.reason
                )));
            }
            out.insert(*id, relation.rows.batches()?);
        }
        Ok(out)
    }

    /// The committed rows relation `id` holds, for a new pipeline to start
    /// from before it reads the changes that follow; an error if nothing
    /// will follow: the relation failed, or it is the late-rows relation of
    /// a view that failed (whose pipeline ends its epochs). Call quiesced.
    pub fn backfill(&self, id: u32) -> Result<Arc<Vec<RecordBatch>>> {
        if let Some(reason) =
            crate::late_rows::late_rows_view(id).and_then(|view| self.failure(view))
        {
            return Err(ExecutorError::Unsupported(format!(
                "the view keeping these late rows failed and is no longer maintained: {reason}"
            )));
        }
        let mut rows = self.read(&[id])?;
        Ok(rows.remove(&id).unwrap_or_default())
    }

    /// Removes `rows` (one copy each) from relation `id`, a late-rows
    /// relation, with the next epoch that commits. Call quiesced, with
    /// rows read from its committed ones, of its columns.
    pub fn retract(&self, id: u32, rows: &[RecordBatch]) -> Result<()> {
        let mut state = self.lock();
        let relation = state
            .relations
            .get(&id)
            .ok_or_else(|| ExecutorError::Internal(format!("relation {id} is not tracked")))?;
        let codec = crate::codec::RowCodec::for_schema(relation.rows.schema())?;
        let mut delta = crate::relation_rows::Delta::default();
        for batch in rows {
            for row in codec.encode(batch.columns())?.iter() {
                crate::relation_rows::add_change(&mut delta, row.data(), -1);
            }
        }
        state.edits.push((id, Changes::Counted(delta)));
        Ok(())
    }

    /// The schema of relation `id`'s rows.
    pub fn schema(&self, id: u32) -> Option<SchemaRef> {
        self.lock()
            .relations
            .get(&id)
            .map(|r| r.rows.schema().clone())
    }
}
