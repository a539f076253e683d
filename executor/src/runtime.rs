//! The streaming runtime as the server sees it.
//!
//! Concurrency contract:
//! - Every write into a table's changelog ([`Runtime::publish`]) and every
//!   barrier injection happens under the write lock, so an epoch holds a
//!   prefix of all DML, in statement order.
//! - Creating or dropping a pipeline happens *quiesced*: under the write
//!   lock, after a flush. Then nothing is in flight, every relation's
//!   committed rows are its latest rows, and a new pipeline can start from
//!   them (backfill) and subscribe to what comes next with no gap and no
//!   duplicate. Source readers take no write lock, so quiescing also closes
//!   the source gate they produce under (see [`crate::source`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::{MutexGuard, RwLock, RwLockWriteGuard, mpsc};

use eddy_planner::StreamNode;

use crate::build::{PipelineBuilder, Upstream};
use crate::coordinator::Coordinator;
use crate::dispatch::{CHANNEL_CAPACITY, Output, Subscribers};
use crate::error::{ExecutorError, Result};
use crate::eval::{ErrorLog, ErrorStats, Evaluator};
use crate::fragment::Fragment;
use crate::input::{AlignedInput, InputChannel};
use crate::materialize::Materialize;
use crate::message::{Barrier, Message, StreamChunk};
use crate::progress::{Progress, RelationProgress};
use crate::source::SourceSpec;

/// Proof that the caller holds the write lock.
pub type WriteGuard<'a> = MutexGuard<'a, ()>;

/// Proof that sources are paused and nothing is in flight.
pub type Quiesced<'a> = RwLockWriteGuard<'a, ()>;

/// What a materialized view's plan reads under a relation name.
#[derive(Debug, Clone)]
pub enum ReadTarget {
    /// A table or materialized view, by id.
    Relation(u32),
    /// A source.
    Source(Arc<SourceSpec>),
}

/// Owns every running pipeline.
#[derive(Debug)]
pub struct Runtime {
    coordinator: Arc<Coordinator>,
    errors: Arc<ErrorLog>,
    /// Changelog subscribers of each table and view.
    subscribers: Mutex<HashMap<u32, Arc<Subscribers>>>,
    /// Tables: the relations barriers are injected into.
    sources: Mutex<HashSet<u32>>,
    /// Pipelines with constant inputs only need barriers.
    ticks: Arc<Subscribers>,
    write_lock: tokio::sync::Mutex<()>,
    /// Source readers produce under its read side; DDL takes the write side.
    source_gate: Arc<RwLock<()>>,
    progress: Arc<Progress>,
    parallelism: usize,
}

impl Runtime {
    /// A runtime running keyed operators as `parallelism` partitions.
    pub fn new(parallelism: usize) -> Arc<Self> {
        Arc::new(Self {
            coordinator: Arc::new(Coordinator::default()),
            errors: Arc::new(ErrorLog::default()),
            subscribers: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashSet::new()),
            ticks: Arc::new(Subscribers::default()),
            write_lock: tokio::sync::Mutex::new(()),
            source_gate: Arc::new(RwLock::new(())),
            progress: Arc::new(Progress::default()),
            parallelism: parallelism.max(1),
        })
    }

    /// The coordinator (committed reads, epochs).
    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Expression errors per relation.
    pub fn errors(&self) -> Vec<(u32, ErrorStats)> {
        self.errors.snapshot()
    }

    /// Watermarks and late rows per relation.
    pub fn progress(&self) -> Vec<(u32, RelationProgress)> {
        self.progress.snapshot()
    }

    /// Partitions of keyed operators (and default splits of sources).
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }

    /// Takes the write lock.
    pub async fn write_lock(&self) -> WriteGuard<'_> {
        self.write_lock.lock().await
    }

    fn subscribers_of(&self, id: u32) -> Option<Arc<Subscribers>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Spawns fragments. A fragment that panics (a bug) fails its relation
    /// instead of leaving every later epoch waiting for its ack.
    fn spawn(fragments: Vec<Fragment>) {
        for f in fragments {
            let (relation, coordinator) = (f.relation, f.coordinator.clone());
            let task = tokio::spawn(f.run());
            tokio::spawn(async move {
                if let Err(e) = task.await
                    && e.is_panic()
                {
                    let panic = e.into_panic();
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    coordinator.fail(
                        relation,
                        format!("internal error (this is a bug in Eddy): {message}"),
                    );
                }
            });
        }
    }

    /// Starts table `id` holding `rows` (its stored rows, on start).
    pub fn create_table(
        &self,
        _guard: &WriteGuard<'_>,
        id: u32,
        schema: SchemaRef,
        rows: Vec<RecordBatch>,
    ) -> Result<()> {
        self.coordinator.add_relation(id, schema.clone())?;
        let subscribers = Arc::new(Subscribers::default());
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        subscribers.add(id, tx);
        let prefix = rows
            .into_iter()
            .map(|b| Message::Chunk(StreamChunk::inserts(b)))
            .collect();
        let fragment = Fragment {
            relation: id,
            input: AlignedInput::new(vec![InputChannel::with_prefix(prefix, rx)]),
            ops: vec![Box::new(Materialize::new(
                id,
                schema,
                self.coordinator.clone(),
                self.progress.clone(),
            )?)],
            output: Output::Subscribers(Arc::new(Subscribers::default())),
            coordinator: self.coordinator.clone(),
            index: 0,
            progress: self.progress.clone(),
        };
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, subscribers);
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        Self::spawn(vec![fragment]);
        Ok(())
    }

    /// Sends table `id`'s changes to everything that reads it.
    pub async fn publish(&self, _guard: &WriteGuard<'_>, id: u32, chunk: StreamChunk) {
        if let Some(subs) = self.subscribers_of(id) {
            subs.send(Message::Chunk(chunk)).await;
        }
    }

    /// Ends the current epoch: a barrier into every source. Returns the epoch.
    pub async fn inject_barrier(&self, _guard: &WriteGuard<'_>) -> u64 {
        let epoch = self.coordinator.begin_epoch();
        let barrier = Message::Barrier(Barrier { epoch });
        // Table changelogs are the sources; views forward barriers themselves.
        let tables: Vec<Arc<Subscribers>> = {
            let subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            let mut ids: Vec<_> = subs.keys().copied().collect();
            ids.sort();
            ids.into_iter()
                .filter(|id| self.is_source(*id))
                .filter_map(|id| subs.get(&id).cloned())
                .collect()
        };
        for subs in tables {
            subs.send(barrier.clone()).await;
        }
        self.ticks.send(barrier).await;
        epoch
    }

    fn is_source(&self, id: u32) -> bool {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Waits until every change made before this call is committed.
    pub async fn flush(&self) {
        let epoch = {
            let guard = self.write_lock().await;
            self.inject_barrier(&guard).await
        };
        self.coordinator.wait_committed(epoch).await;
    }

    /// Flushes while holding the write lock, with sources paused: while the
    /// returned guard lives, nothing is in flight.
    pub async fn quiesce(&self, guard: &WriteGuard<'_>) -> Quiesced<'_> {
        let paused = self.source_gate.write().await;
        let epoch = self.inject_barrier(guard).await;
        self.coordinator.wait_committed(epoch).await;
        paused
    }

    /// Starts view `id` maintaining `plan`. Must be called quiesced.
    pub fn create_view(
        &self,
        _quiesced: &Quiesced<'_>,
        id: u32,
        plan: &StreamNode,
        emit_on_window_close: bool,
        resolve: &dyn Fn(&str) -> Option<ReadTarget>,
    ) -> Result<()> {
        let resolve_source = |name: &str| -> Result<Upstream> {
            match resolve(name) {
                Some(ReadTarget::Relation(id)) => {
                    let subscribers = self.subscribers_of(id).ok_or_else(|| {
                        ExecutorError::Internal(format!("relation {name} has no changelog"))
                    })?;
                    Ok(Upstream::Changelog { id, subscribers })
                }
                Some(ReadTarget::Source(spec)) => Ok(Upstream::Stream(spec)),
                None => Err(ExecutorError::Unsupported(format!(
                    "{name} cannot be read by a materialized view"
                ))),
            }
        };
        let mut builder = PipelineBuilder {
            relation: id,
            parallelism: self.parallelism,
            coordinator: self.coordinator.clone(),
            evaluator: Evaluator::new(id, self.errors.clone()),
            ticks: self.ticks.clone(),
            resolve: &resolve_source,
            gate: self.source_gate.clone(),
            progress: self.progress.clone(),
            emit_on_window_close,
            fragments: Vec::new(),
            subscriptions: Vec::new(),
            reader_outputs: HashMap::new(),
            readers: Vec::new(),
            windowed_aggregates: 0,
        };
        let output = Arc::new(Subscribers::default());
        builder.build_root(plan, output.clone())?;
        let schema = crate::build::batch_schema(plan.schema());
        self.coordinator.add_relation(id, schema)?;
        for (subs, tx) in builder.subscriptions {
            subs.add(id, tx);
        }
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, output);
        Self::spawn(builder.fragments);
        for reader in builder.readers {
            tokio::spawn(reader.run());
        }
        Ok(())
    }

    /// Stops relation `id` (table, view or source) and forgets its rows.
    /// Must be called quiesced, after every view reading it was dropped.
    pub fn drop_relation(&self, _quiesced: &Quiesced<'_>, id: u32) {
        let removed = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            for s in subs.values() {
                s.remove_owner(id);
            }
            subs.remove(&id)
        };
        drop(removed);
        self.ticks.remove_owner(id);
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.coordinator.remove_relation(id);
        self.errors.forget(id);
        self.progress.forget(id);
    }
}
