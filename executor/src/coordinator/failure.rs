//! Failures: a pipeline that fails stops being waited for, with every
//! view and sink reading it, and can restart from its checkpoint when
//! that is exact (see [`Failure`]).
//!
//! Invariants: a failed relation's checkpoint stays at the last epoch it
//! committed, and the table log is kept after that epoch's position while
//! a restart may replay it; a run of a pipeline that was stopped (see
//! [`Feed::Pipeline`]) can neither stage nor fail anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eddy_storage::{CheckpointBatch, StoredFailure};

use super::{Coordinator, State};

/// What feeds a relation's rows.
#[derive(Debug, Clone)]
pub enum Feed {
    /// Statements: a table, whose changes are logged.
    Statements,
    /// A view's or sink's pipeline, reading `inputs`, tables and views
    /// (by id and name; the sources it reads are its own readers'). A
    /// restart starts another run of it, `incarnation`: what a stopped run
    /// still hands over or reports (it drains) is ignored.
    Pipeline {
        /// The tables and views it reads.
        inputs: Vec<(u32, String)>,
        /// Which run of the pipeline feeds the relation.
        incarnation: u64,
        /// Halts the run's fragments when the relation fails.
        halted: Arc<AtomicBool>,
    },
}

impl Feed {
    /// The tables and views it reads.
    pub(super) fn inputs(&self) -> &[(u32, String)] {
        match self {
            Feed::Statements => &[],
            Feed::Pipeline { inputs, .. } => inputs,
        }
    }

    /// Whether what the run `incarnation` hands over is its relation's.
    pub(super) fn is_fed_by(&self, incarnation: u64) -> bool {
        match self {
            Feed::Statements => incarnation == 0,
            Feed::Pipeline { incarnation: i, .. } => *i == incarnation,
        }
    }
}

/// Why a pipeline stopped, and whether it can restart from its checkpoint.
///
/// Its checkpoint stays at its last good epoch. A restart from it is exact
/// when what it reads since can be read again: its sources' splits from
/// their checkpointed positions, its tables' changes from the log after
/// [`Failure::log_position`] (kept while the failure lasts), and what the
/// views it reads changed since that epoch (their parts are held while the
/// failure lasts, see `replay.rs`). A failure fails every view and sink
/// reading the failed one in the same step (their checkpoints are at that
/// epoch, and what they took in of the failed epoch is dropped), and they
/// restart together: the *group* of the failure's *cause*, whose members
/// emit again, from that epoch, what the others read.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) reason: String,
    /// The relation whose failure this one's came with (a relation it
    /// reads), if any.
    pub(super) cause: Option<u32>,
    /// Why a restart from its checkpoint would not be exact, if it would not.
    pub(super) not_restartable: Option<String>,
    /// The last table change its checkpoint holds.
    pub(super) log_position: u64,
    /// Whether a checkpoint records it yet.
    pub(super) recorded: bool,
}

impl Coordinator {
    /// The table log position after which relation `id`'s pipeline, if
    /// restored from its checkpoint now, must be replayed the table changes:
    /// when it goes on from a failure (a restart, or a recovery after one).
    pub fn replays_after(&self, id: u32) -> Option<u64> {
        Self::replay_position(&self.lock(), id)
    }

    pub(super) fn replay_position(state: &State, id: u32) -> Option<u64> {
        match state.relations.get(&id) {
            Some(old) => match &old.failed {
                Some(f) => f.not_restartable.is_none().then_some(f.log_position),
                None => old.replays_after,
            },
            // Recovered as failed: the supervisor restarts it (see `track`).
            None => None,
        }
    }

    /// Run `incarnation` of relation `id`'s pipeline failed (see
    /// [`Coordinator::fail`]); a run since stopped is ignored.
    pub fn fail_pipeline(&self, id: u32, incarnation: u64, reason: String) {
        let mut state = self.lock();
        if state
            .relations
            .get(&id)
            .is_some_and(|r| r.feed.is_fed_by(incarnation))
        {
            Self::fail_locked(&mut state, id, reason);
            self.commit_ready(&mut state);
        }
    }

    /// Marks relation `id` failed: queries on it report `reason`, epochs
    /// stop waiting for it. Every view and sink reading it fails with it,
    /// before an epoch commits what they took in of its failed epoch.
    pub fn fail(&self, id: u32, reason: String) {
        let mut state = self.lock();
        Self::fail_locked(&mut state, id, reason);
        self.commit_ready(&mut state);
    }

    pub(super) fn fail_locked(state: &mut State, root: u32, reason: String) {
        let mut failing = vec![(root, reason)];
        let mut i = 0;
        while let Some((failed, _)) = failing.get(i) {
            let failed = *failed;
            i += 1;
            // Its late-rows relation's readers stop getting its epochs too.
            let late = crate::late_rows::late_rows_id(failed);
            for (reader, r) in &state.relations {
                if let Some((_, name)) = r
                    .feed
                    .inputs()
                    .iter()
                    .find(|(input, _)| *input == failed || *input == late)
                    && r.failed.is_none()
                    && failing.iter().all(|(f, _)| f != reader)
                {
                    failing.push((*reader, format!("its input {name} failed")));
                }
            }
        }
        // Readers after what they read (a relation reads only older ones).
        failing[1..].sort_by_key(|(id, _)| *id);
        let group_replay = state.relations.get(&root).and_then(|r| r.replays_after);
        for (id, reason) in failing {
            let not_restartable = Self::not_restartable(state, id, group_replay);
            let log_position = state.committed_log;
            if let Some(r) = state.relations.get_mut(&id)
                && r.failed.is_none()
            {
                if let Feed::Pipeline { halted, .. } = &r.feed {
                    halted.store(true, Ordering::Relaxed);
                }
                r.failed = Some(Failure {
                    reason,
                    cause: (id != root).then_some(root),
                    not_restartable,
                    log_position: r.replays_after.unwrap_or(log_position),
                    recorded: false,
                });
            }
            // Its checkpoint stays at the last committed epoch: parts of later
            // epochs (a reader's position past rows the failed operator never
            // took in) would make a restart from it skip input. Its late rows
            // go too: the restart drops them again.
            let late = crate::late_rows::late_rows_id(id);
            for pending in state.pending.values_mut() {
                pending.waiting.remove(&id);
                pending.writes.retain(|(rel, _)| *rel != id);
                pending
                    .changes
                    .retain(|(rel, _)| *rel != id && *rel != late);
                pending.acked.retain(|rel| *rel != id);
            }
        }
    }

    /// Why restarting relation `id` from its checkpoint, with the
    /// relations that failed with it, would not be exact (see
    /// [`Failure`]), if it would not. `group_replay` is where the group's
    /// checkpoints left the table log, if a restart they have not
    /// checkpointed since left it behind the committed epoch's. (A failure
    /// recovered from a record without its epoch, reading a view, is not
    /// restartable either: see `track`.)
    fn not_restartable(state: &State, id: u32, group_replay: Option<u64>) -> Option<String> {
        let relation = state.relations.get(&id)?;
        if state.writer.is_none() {
            return Some("the server runs without a data directory".into());
        }
        if !relation.checkpointed {
            return Some("it failed before its first checkpoint".into());
        }
        if relation.replays_after != group_replay {
            return Some("it had not checkpointed since it last restarted".into());
        }
        None
    }

    /// Whether relation `id` is a table (its changes are logged).
    pub(super) fn is_table(state: &State, id: u32) -> bool {
        state
            .relations
            .get(&id)
            .is_some_and(|r| matches!(r.feed, Feed::Statements))
    }

    /// A view (not a table) `feed` reads, by name, if any.
    pub(super) fn view_input<'f>(state: &State, feed: &'f Feed) -> Option<&'f str> {
        feed.inputs()
            .iter()
            .find(|(input, _)| !Self::is_table(state, *input))
            .map(|(_, name)| name.as_str())
    }

    /// Writes the failures no checkpoint records yet, and keeps the table
    /// log after the oldest position a restart will replay from.
    pub(super) fn record_failures(state: &mut State, batch: &mut CheckpointBatch) {
        // Recorded before the server started, not tracked yet.
        for failure in state.recorded_failures.values() {
            batch.keep_log_after(failure.log_position);
        }
        for (id, r) in state.relations.iter_mut() {
            if let Some(position) = r.replays_after {
                batch.keep_log_after(position);
            }
            let Some(failure) = r.failed.as_mut() else {
                continue;
            };
            if failure.not_restartable.is_none() {
                batch.keep_log_after(failure.log_position);
            }
            // A relation no checkpoint holds starts afresh anyway.
            if !failure.recorded && r.checkpointed {
                failure.recorded = true;
                let reason = match &failure.not_restartable {
                    Some(why) => format!("{} (not restarted: {why})", failure.reason),
                    None => failure.reason.clone(),
                };
                batch.set_failure(
                    *id,
                    Some(&StoredFailure {
                        log_position: failure.log_position,
                        epoch: r.epoch,
                        restartable: failure.not_restartable.is_none(),
                        cause: failure.cause,
                        reason,
                    }),
                );
            }
        }
    }

    /// The failure of relation `id`, if it failed.
    pub fn failure(&self, id: u32) -> Option<String> {
        self.lock()
            .relations
            .get(&id)
            .and_then(|r| r.failed.as_ref().map(|f| f.reason.clone()))
    }

    /// Failed relation `id` will not be restarted (its restart strategy
    /// gave up, `why`): the log is no longer kept for it, and it stays
    /// failed across restarts of the server, until dropped.
    pub fn give_up(&self, id: u32, why: String) {
        let mut state = self.lock();
        if let Some(failure) = state.relations.get_mut(&id).and_then(|r| r.failed.as_mut())
            && failure.not_restartable.is_none()
        {
            failure.not_restartable = Some(why);
            failure.recorded = false;
        }
    }

    /// The relations that failed with failed relation `root` (reading it)
    /// and restart with it, in creation order.
    pub fn failed_with(&self, root: u32) -> Vec<u32> {
        let state = self.lock();
        let mut group: Vec<u32> = state
            .relations
            .iter()
            .filter_map(|(id, r)| {
                let f = r.failed.as_ref()?;
                (f.cause == Some(root) && f.not_restartable.is_none()).then_some(*id)
            })
            .collect();
        group.sort();
        group
    }

    /// The relation whose failure failed relation `id` (one it reads), if
    /// its failure came with another's.
    pub fn failure_cause(&self, id: u32) -> Option<u32> {
        self.lock()
            .relations
            .get(&id)
            .and_then(|r| r.failed.as_ref()?.cause)
    }

    /// Whether failed relation `id` can restart from its checkpoint
    /// exactly; if not, why not.
    pub fn restartable(&self, id: u32) -> Result<(), String> {
        match self
            .lock()
            .relations
            .get(&id)
            .and_then(|r| r.failed.as_ref())
        {
            Some(Failure {
                not_restartable: Some(why),
                ..
            }) => Err(why.clone()),
            _ => Ok(()),
        }
    }
}
