//! What a restarted pipeline is replayed of the views it reads.
//!
//! A failed pipeline restarts from its checkpoint, at epoch `e`; a view it
//! reads (one that did not fail with it) has gone on since. The restart
//! (quiesced: the view's committed rows are all it emitted) replays to it
//! the view's rows now less its rows at `e`, before the changes that
//! follow. So the pipeline sees each epoch's net change of the view, merged
//! from `e` on, then the same changes an uninterrupted run would: what it
//! holds at each later epoch is what that run would hold. (A sink reading
//! the view delivers, in its first epoch, that merged change.)
//!
//! The view's rows at `e` are its stored parts up to `e`. A base part
//! replaces every part before it, so while a failed pipeline may restart
//! (its failure restartable, or restarted and not checkpointed since),
//! the views it reads are *held* through `e`: their bases keep the parts
//! up to the oldest such `e` (see `relation_rows`). Recorded failures not
//! tracked again yet (just after a recovery) hold every relation whole.
//!
//! A view that restarts in the same group (from the same epoch) has its
//! checkpointed rows back: nothing to replay, it emits again what follows.

use std::collections::HashMap;

use crate::error::{ExecutorError, Result};
use crate::message::StreamChunk;
use crate::relation_rows::{Hold, RelationRows};

use super::{Coordinator, State};

/// The relations whose parts must keep what a failed reader's checkpoint
/// needs: per relation, the oldest such checkpoint's epoch (None: not
/// known, keep every part).
pub(super) struct HeldRelations {
    all: bool,
    through: HashMap<u32, Option<u64>>,
}

impl HeldRelations {
    /// What relation `id`'s parts must keep.
    pub(super) fn of(&self, id: u32) -> Hold {
        match self.through.get(&id) {
            _ if self.all => Hold::All,
            None => Hold::None,
            Some(Some(e)) => Hold::Through(*e),
            Some(None) => Hold::All,
        }
    }
}

impl Coordinator {
    pub(super) fn held_relations(state: &State) -> HeldRelations {
        let mut through: HashMap<u32, Option<u64>> = HashMap::new();
        for r in state.relations.values() {
            if Self::may_restart(r) {
                for (input, _) in r.feed.inputs() {
                    let kept = through.entry(*input).or_insert(r.epoch);
                    *kept = kept.zip(r.epoch).map(|(a, b)| a.min(b));
                }
            }
        }
        HeldRelations {
            all: !state.recorded_failures.is_empty(),
            through,
        }
    }

    /// Whether a relation may restart from its checkpoint, not at the
    /// committed epoch: its failure is restartable, or it restarted and
    /// has not checkpointed since.
    fn may_restart(r: &super::Relation) -> bool {
        match &r.failed {
            Some(f) => f.not_restartable.is_none(),
            None => r.replays_after.is_some(),
        }
    }

    /// What pipeline `reader`, being built to go on from its checkpoint,
    /// is replayed of relation `input` before its changes (see the module
    /// docs): nothing for a table (its log is replayed) or when `reader`
    /// goes on from the committed epoch. Call quiesced.
    pub fn view_changes_since(&self, input: u32, reader: u32) -> Result<Vec<StreamChunk>> {
        let (schema, since) = {
            let state = self.lock();
            let Some(r) = state.relations.get(&reader) else {
                return Ok(vec![]);
            };
            if !Self::may_restart(r) || Self::is_table(&state, input) {
                return Ok(vec![]);
            }
            let since = r.epoch.ok_or_else(|| {
                ExecutorError::Unsupported(
                    "restarting a pipeline that reads a view, from a checkpoint whose epoch is not known"
                        .into(),
                )
            })?;
            let Some(view) = state.relations.get(&input) else {
                return Ok(vec![]);
            };
            if view.epoch == Some(since) && Self::may_restart(view) {
                // It restarts from the same epoch too.
                return Ok(vec![]);
            }
            (view.rows.schema().clone(), since)
        };
        let store = self.store().ok_or_else(|| {
            ExecutorError::Internal("a restart from a checkpoint without a store".into())
        })?;
        let then = RelationRows::restore_at(schema, &store, input, since)?;
        let state = self.lock();
        let view = state
            .relations
            .get(&input)
            .ok_or_else(|| ExecutorError::Internal(format!("relation {input} is not tracked")))?;
        view.rows.changes_since(then)
    }
}
