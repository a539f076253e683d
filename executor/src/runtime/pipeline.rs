//! Building, starting, stopping and restarting a view's or sink's
//! pipeline (see the module above for when each happens).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use eddy_planner::StreamNode;

use super::{PipelineDef, Quiesced, ReadTarget, Runtime};
use crate::build::{FragmentScopes, PipelineBuilder, SharedPlans, Upstream};
use crate::checkpoint::{OWN_STATE, STATE_LAYOUT, StateEntries, oldest_layout_for, state_prefix};
use crate::coordinator::Feed;
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::fragment::Fragment;
use crate::keyed_state::StoreTable;
use crate::message::Message;
use crate::operator::Operator;
use crate::sink::SinkWriter;

/// A pipeline built and connected, not running yet.
struct ConnectedPipeline {
    fragments: Vec<Fragment>,
    readers: Vec<crate::source::Reader>,
}

impl ConnectedPipeline {
    fn run(self) {
        Runtime::spawn(self.fragments);
        for reader in self.readers {
            tokio::spawn(reader.run());
        }
    }
}

impl Runtime {
    /// Stops pipelines `ids` (a failed pipeline and those that failed
    /// with it, readers after what they read) and builds them again from
    /// their checkpoints (with as many splits as their sources have now),
    /// all connected before any runs, so none misses what another emits.
    /// Must be called quiesced.
    pub fn restart_pipelines(
        &self,
        quiesced: &Quiesced<'_>,
        ids: &[u32],
        resolve: &dyn Fn(&str) -> Option<ReadTarget>,
    ) -> Result<()> {
        let mut defs = Vec::with_capacity(ids.len());
        for &id in ids {
            let def = crate::sync::lock(&self.pipelines)
                .get(&id)
                .cloned()
                .ok_or_else(|| ExecutorError::Internal(format!("relation {id} has no pipeline")))?;
            if !self.is_checkpointed(id)? {
                return Err(ExecutorError::Unsupported(
                    "restarting a pipeline without a checkpoint (the server runs without a data directory)"
                        .into(),
                ));
            }
            defs.push((id, def));
        }
        for &id in ids {
            self.stop_pipeline(id);
            self.progress.readers_restarted(id);
            // It goes back to its checkpoint, behind what it passed on.
            if let Some(output) = self.subscribers_of(id) {
                output.forget_watermarks();
            }
        }
        let mut ready = Vec::with_capacity(ids.len());
        let mut built = Ok(());
        for (id, def) in defs {
            match self.connect_pipeline(quiesced, id, def, resolve) {
                Ok(pipeline) => ready.push(pipeline),
                Err(e) => {
                    built = Err(e);
                    break;
                }
            }
        }
        // What was connected runs (the coordinator waits for it); one that
        // could not be built stays failed.
        for pipeline in ready {
            pipeline.run();
        }
        built
    }

    /// Stops failed pipeline `id` until it restarts (or is dropped): its
    /// halted run would go on reading its sources and forwarding barriers
    /// for nothing. Whatever reads it failed with it, so nothing waits for
    /// it; it stays subscribed to what it reads no longer, so nothing it
    /// reads waits for it either.
    pub fn stop_failed(&self, id: u32) {
        if self.coordinator.failure(id).is_some() {
            self.stop_pipeline(id);
        }
    }

    /// Disconnects pipeline `id` from its inputs and ticks: its tasks end.
    /// What reads it stays subscribed to its output.
    pub(super) fn stop_pipeline(&self, id: u32) {
        for s in crate::sync::lock(&self.subscribers).values() {
            s.remove_owner(id);
        }
        self.ticks.remove_owner(id);
    }

    /// Starts pipeline `id`: from its checkpoint when one holds it, else
    /// backfilled. One recovered failed stays stopped (connected, so what
    /// it reads and what reads it are in place) for the supervisor to
    /// restart with the pipelines that failed with it.
    pub(super) fn start_pipeline(
        &self,
        quiesced: &Quiesced<'_>,
        id: u32,
        def: PipelineDef,
        resolve: &dyn Fn(&str) -> Option<ReadTarget>,
    ) -> Result<()> {
        let pipeline = self.connect_pipeline(quiesced, id, def, resolve)?;
        if self.coordinator.failure(id).is_none() {
            pipeline.run();
        }
        Ok(())
    }

    /// Builds pipeline `id`, restores its state, and connects it to its
    /// inputs and the coordinator; it runs once [`ConnectedPipeline::run`].
    fn connect_pipeline(
        &self,
        _quiesced: &Quiesced<'_>,
        id: u32,
        mut def: PipelineDef,
        resolve: &dyn Fn(&str) -> Option<ReadTarget>,
    ) -> Result<ConnectedPipeline> {
        let terminal = def.sink.as_ref().map(|(spec, status)| {
            Box::new(SinkWriter::new(
                spec.clone(),
                self.coordinator.durable_epoch(),
                status.clone(),
            )) as Box<dyn Operator>
        });
        let inputs = std::cell::RefCell::new(Vec::<(u32, String)>::new());
        let resolve_source = |name: &str| -> Result<Upstream> {
            match resolve(name) {
                Some(ReadTarget::Relation(id)) => {
                    let mut inputs = inputs.borrow_mut();
                    if inputs.iter().all(|(i, _)| *i != id) {
                        inputs.push((id, name.to_string()));
                    }
                    let traits = crate::sync::lock(&self.traits)
                        .get(&id)
                        .cloned()
                        .unwrap_or_default();
                    let subscribers = self.subscribers_of(id).ok_or_else(|| {
                        ExecutorError::Internal(format!("relation {name} has no changelog"))
                    })?;
                    Ok(Upstream::Changelog {
                        id,
                        subscribers,
                        traits,
                    })
                }
                Some(ReadTarget::Source(spec)) => Ok(Upstream::Stream(spec)),
                None => Err(ExecutorError::Unsupported(format!(
                    "{name} cannot be read by a materialized view"
                ))),
            }
        };
        let layout = self.restored_layout(id, &def.plan)?;
        let restore = layout.is_some();
        let replay = if restore {
            self.replay_for(id)?
        } else {
            HashMap::new()
        };
        self.progress.restart_late(id);
        if restore {
            // The checkpoint says what was counted: what came after is
            // counted again as it is replayed.
            self.errors.forget(id);
        }
        let incarnation = self.incarnations.fetch_add(1, Ordering::Relaxed) + 1;
        let halted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let late_changelog = def
            .options
            .keep_late_rows
            .then(|| self.subscribers_of(crate::late_rows::late_rows_id(id)))
            .flatten();
        let mut builder = PipelineBuilder {
            relation: id,
            incarnation,
            halted: halted.clone(),
            parallelism: self.parallelism,
            coordinator: self.coordinator.clone(),
            evaluator: Evaluator::new(id, self.errors.clone()),
            ticks: self.ticks.clone(),
            resolve: &resolve_source,
            gate: self.source_gate.clone(),
            running: self.running.subscribe(),
            clocks: self.clocks.clone(),
            progress: self.progress.clone(),
            options: def.options,
            late_changelog,
            backfill: !restore,
            layout: layout.unwrap_or(STATE_LAYOUT),
            replay,
            fragments: Vec::new(),
            subscriptions: Vec::new(),
            reader_outputs: HashMap::new(),
            alignment_groups: HashMap::new(),
            readers: Vec::new(),
            windowed_aggregates: 0,
            shared: SharedPlans::default(),
            scopes: FragmentScopes::default(),
        };
        // A restarted pipeline writes to the subscribers it had.
        let output = self.subscribers_of(id).unwrap_or_default();
        let traits = builder.build_root(&def.plan, output.clone(), terminal)?;
        if let Some(store) = self.coordinator.store() {
            let durable = self.coordinator.durable_epoch();
            let entries = |scope: u32, operator: u16| -> Result<StateEntries> {
                let stored = store.state(id, &state_prefix(scope, operator))?;
                Ok(stored
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect())
            };
            for f in &mut builder.fragments {
                for (i, op) in f.ops.iter_mut().enumerate() {
                    let (scope, operator) = (f.scope, i as u16);
                    op.attach_store(StoreTable::new(
                        store.clone(),
                        id,
                        scope,
                        operator,
                        durable.clone(),
                    ));
                    if restore {
                        let mut entries = entries(scope, operator)?;
                        if let Some(late) = op.late_rows() {
                            late.restore(&mut entries)?;
                        }
                        op.restore(entries)?;
                    }
                }
            }
            if restore {
                for f in &mut builder.fragments {
                    f.errors
                        .restore(entries(f.scope, OWN_STATE)?, id, &self.errors)?;
                }
                for reader in &mut builder.readers {
                    reader.restore(entries(reader.scope, 0)?)?;
                    reader.restore_split(entries(reader.scope, 1)?)?;
                    reader
                        .errors
                        .restore(entries(reader.scope, OWN_STATE)?, id, &self.errors)?;
                }
            }
        }
        let schema = crate::build::batch_schema(def.plan.schema());
        let inputs = Feed::Pipeline {
            inputs: inputs.take(),
            incarnation,
            halted,
        };
        self.coordinator.add_relation(id, schema, restore, inputs)?;
        def.sources = builder.reader_outputs.keys().copied().collect();
        crate::sync::lock(&self.traits).insert(id, traits);
        crate::sync::lock(&self.pipelines).insert(id, def);
        for (subs, tx) in builder.subscriptions {
            subs.add(id, tx);
        }
        crate::sync::lock(&self.subscribers).insert(id, output);
        Ok(ConnectedPipeline {
            fragments: builder.fragments,
            readers: builder.readers,
        })
    }

    /// What pipeline `id` is replayed, per table, when it goes on from a
    /// failure: the table changes its checkpoint lacks, up to the last one
    /// published (later ones reach it as they are published).
    fn replay_for(&self, id: u32) -> Result<HashMap<u32, Vec<Message>>> {
        let mut replay: HashMap<u32, Vec<Message>> = HashMap::new();
        if let Some(after) = self.coordinator.replays_after(id) {
            let until = self.published.load(Ordering::SeqCst);
            for (table, _, chunk) in self.logged_after(after, until)? {
                replay.entry(table).or_default().push(Message::Chunk(chunk));
            }
        }
        Ok(replay)
    }

    /// The state layout of the checkpoint pipeline `id`, of `plan`,
    /// recovers from, if it does; an error if its checkpoint's state is
    /// laid out as this version would not find it.
    fn restored_layout(&self, id: u32, plan: &StreamNode) -> Result<Option<u32>> {
        let Some(store) = self.coordinator.store() else {
            return Ok(None);
        };
        if let Some(failure) = store.failure(id)?
            && !failure.restartable
        {
            return Err(ExecutorError::Failed(failure.reason));
        }
        match store.checkpoint_layout(id)? {
            None => Ok(None),
            Some(found) if (oldest_layout_for(plan)..=STATE_LAYOUT).contains(&found) => {
                Ok(Some(found))
            }
            Some(found) => Err(ExecutorError::StateLayout { found }),
        }
    }
}
