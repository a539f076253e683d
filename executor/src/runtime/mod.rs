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
//!
//! Restart ([`Runtime::restart_pipelines`], `pipeline.rs`): a view's or
//! sink's pipeline is stopped and built again from its checkpoint, into
//! the same subscribers. A source that gains splits (new Kafka partitions)
//! restarts the pipelines reading it this way, quiesced, so the checkpoint
//! is their current state: what reads them sees no gap and no repeat. A
//! failed pipeline goes back to its last good epoch, with the pipelines
//! that failed with it (they read it; their checkpoints are at that epoch
//! too), all connected before any runs, and the table changes since
//! replayed to each (see the coordinator's `Failure`).
//!
//! Recovery (a durable runtime, [`Runtime::durable`]): tables and views
//! are created again in catalog order; each one a checkpoint holds starts
//! from its checkpointed rows and state (its readers at their positions),
//! any other view backfills as when it was created. Sources are not read
//! meanwhile. Then [`Runtime::recovered`] publishes the table changes the
//! checkpoint does not hold yet, in their original order, and lets sources
//! be read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::{MutexGuard, RwLock, RwLockWriteGuard, mpsc};

use eddy_planner::StreamNode;
use eddy_storage::Store;

use crate::build::OutputTraits;
use crate::codec::{RowCodec, decode_change};
use crate::coordinator::{Coordinator, Feed};
use crate::dispatch::{CHANNEL_CAPACITY, Output, Subscribers};
use crate::error::Result;
use crate::eval::{ErrorLog, ErrorStats};
use crate::fragment::Fragment;
use crate::input::{AlignedInput, InputChannel};
use crate::keyed_state::StateConfig;
use crate::materialize::Materialize;
use crate::message::{Barrier, Message, StreamChunk};
use crate::progress::{Progress, RelationProgress};
use crate::sink::{DeliveryStatus, SinkSpec};
use crate::source::{SourceSpec, SplitClocks};

mod pipeline;

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

/// A view's or sink's own settings for its pipeline.
#[derive(Debug, Clone, Copy, Default)]
pub struct PipelineOptions {
    /// `EMIT ON WINDOW CLOSE` (views only).
    pub emit_on_window_close: bool,
    /// `state_ttl`: unwindowed aggregates and joins forget what no change
    /// touched for this long (see `state_ttl`).
    pub state_ttl: Option<Duration>,
    /// `late_rows`: keep the rows windowed operators drop as late in the
    /// view's late-rows relation (see `late_rows`).
    pub keep_late_rows: bool,
    /// Where keyed state lives (see `keyed_state`).
    pub state: StateConfig,
}

/// What it takes to build a view's or sink's pipeline again.
#[derive(Debug, Clone)]
struct PipelineDef {
    plan: StreamNode,
    options: PipelineOptions,
    /// A sink's spec and delivery status: its pipeline ends in a [`SinkWriter`].
    sink: Option<(Arc<SinkSpec>, Arc<DeliveryStatus>)>,
    /// The sources its readers read.
    sources: Vec<u32>,
}

/// Owns every running pipeline.
#[derive(Debug)]
pub struct Runtime {
    coordinator: Arc<Coordinator>,
    errors: Arc<ErrorLog>,
    /// The last pipeline run started (see [`Feed::Pipeline`]).
    incarnations: AtomicU64,
    /// What each view's output carries, for the views that read it.
    traits: Mutex<HashMap<u32, OutputTraits>>,
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
    /// The last table change published (its position in the store's log).
    published: AtomicU64,
    /// The last barrier's time (see [`Barrier::now`]).
    barrier_time: AtomicI64,
    /// False while recovering: readers forward barriers but read no rows,
    /// so no pipeline moves past the checkpoint before all are rebuilt.
    running: tokio::sync::watch::Sender<bool>,
    /// Where barriers cut each split being read.
    clocks: Arc<SplitClocks>,
    /// Views' and sinks' pipelines, to build them again.
    pipelines: Mutex<HashMap<u32, PipelineDef>>,
    /// Whether scheduled epochs wait for the disk (see
    /// [`Runtime::scheduled_barrier`]).
    paused: AtomicBool,
}

impl Runtime {
    /// A runtime running keyed operators as `parallelism` partitions, in memory only.
    pub fn new(parallelism: usize) -> Arc<Self> {
        let runtime = Self::with_coordinator(parallelism, Coordinator::default(), 0);
        runtime.running.send_replace(true);
        runtime
    }

    /// A runtime checkpointing every epoch into `store`, recovering from
    /// its last checkpoint: no source is read until [`Runtime::recovered`].
    pub fn durable(parallelism: usize, store: Arc<Store>) -> Result<Arc<Self>> {
        let meta = store.meta()?;
        let coordinator = Coordinator::durable(store, parallelism)?;
        Ok(Self::with_coordinator(
            parallelism,
            coordinator,
            meta.log_position,
        ))
    }

    fn with_coordinator(parallelism: usize, coordinator: Coordinator, published: u64) -> Arc<Self> {
        Arc::new(Self {
            published: AtomicU64::new(published),
            incarnations: AtomicU64::new(0),
            traits: Mutex::new(HashMap::new()),
            barrier_time: AtomicI64::new(0),
            running: tokio::sync::watch::channel(false).0,
            clocks: Arc::new(SplitClocks::default()),
            pipelines: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            coordinator: Arc::new(coordinator),
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
        crate::sync::lock(&self.subscribers).get(&id).cloned()
    }

    /// Spawns fragments. A fragment that panics (a bug) fails its relation
    /// instead of leaving every later epoch waiting for its ack.
    fn spawn(fragments: Vec<Fragment>) {
        for f in fragments {
            let (relation, incarnation) = (f.relation, f.incarnation);
            let coordinator = f.coordinator.clone();
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
                    coordinator.fail_pipeline(
                        relation,
                        incarnation,
                        format!("internal error (this is a bug in Eddy): {message}"),
                    );
                }
            });
        }
    }

    /// Whether a checkpoint holds relation `id` (so it recovers from it).
    fn is_checkpointed(&self, id: u32) -> Result<bool> {
        match self.coordinator.store() {
            Some(store) => Ok(store.is_checkpointed(id)?),
            None => Ok(false),
        }
    }

    /// Starts table `id`: empty, or, when a checkpoint holds it, with its
    /// checkpointed rows. Its later changes come through [`Runtime::publish`]
    /// (and, on recovery, [`Runtime::recovered`]).
    pub fn create_table(&self, _guard: &WriteGuard<'_>, id: u32, schema: SchemaRef) -> Result<()> {
        let restore = self.is_checkpointed(id)?;
        self.coordinator
            .add_relation(id, schema.clone(), restore, Feed::Statements)?;
        let subscribers = Arc::new(Subscribers::default());
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        subscribers.add(id, tx);
        let fragment = Fragment {
            relation: id,
            input: AlignedInput::new(vec![InputChannel::new(rx)]),
            ops: vec![Box::new(Materialize::new(
                id,
                schema,
                self.progress.clone(),
            )?)],
            output: Output::Subscribers(Arc::new(Subscribers::default())),
            coordinator: self.coordinator.clone(),
            incarnation: 0,
            halted: Default::default(),
            index: 0,
            scope: 0,
            progress: self.progress.clone(),
            errors: Default::default(),
            late: None,
        };
        crate::sync::lock(&self.subscribers).insert(id, subscribers);
        crate::sync::lock(&self.sources).insert(id);
        Self::spawn(vec![fragment]);
        Ok(())
    }

    /// Sends table `id`'s changes to everything that reads it; `seq` is
    /// the change's position in the store's log (0 when not logged).
    pub async fn publish(&self, _guard: &WriteGuard<'_>, id: u32, chunk: StreamChunk, seq: u64) {
        if let Some(subs) = self.subscribers_of(id) {
            subs.send(Message::Chunk(chunk)).await;
        }
        self.published.fetch_max(seq, Ordering::SeqCst);
    }

    /// Ends recovery: publishes the logged table changes no checkpoint
    /// holds yet, then lets sources be read. Returns the changes replayed.
    pub async fn recovered(&self, guard: &WriteGuard<'_>) -> Result<usize> {
        let replayed = self.replay_log(guard).await?;
        self.running.send_replace(true);
        Ok(replayed)
    }

    async fn replay_log(&self, guard: &WriteGuard<'_>) -> Result<usize> {
        let changes = self.logged_after(self.published.load(Ordering::SeqCst), u64::MAX)?;
        let count = changes.len();
        for (table, seq, chunk) in changes {
            self.publish(guard, table, chunk, seq).await;
        }
        Ok(count)
    }

    /// The logged table changes after position `after`, up to `until`, in
    /// order: (table, position, change). Changes to tables dropped since
    /// are left out.
    fn logged_after(&self, after: u64, until: u64) -> Result<Vec<(u32, u64, StreamChunk)>> {
        let Some(store) = self.coordinator.store() else {
            return Ok(vec![]);
        };
        let mut codecs: HashMap<u32, Option<(SchemaRef, RowCodec)>> = HashMap::new();
        let mut out = Vec::new();
        for logged in store.logged_after(after)? {
            if logged.seq > until {
                break;
            }
            let codec = match codecs.entry(logged.table) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let codec = match self.coordinator.schema(logged.table) {
                        Some(schema) => Some((schema.clone(), RowCodec::for_schema(&schema)?)),
                        None => None,
                    };
                    e.insert(codec)
                }
            };
            if let Some((schema, codec)) = codec {
                let chunk = decode_change(schema, codec, &logged.change)?;
                out.push((logged.table, logged.seq, chunk));
            }
        }
        Ok(out)
    }

    /// Ends the current epoch: a barrier into every source. Returns the epoch.
    pub async fn inject_barrier(&self, _guard: &WriteGuard<'_>) -> u64 {
        let epoch = self
            .coordinator
            .begin_epoch(self.published.load(Ordering::SeqCst));
        let wall = eddy_planner::system_time_nanos(std::time::SystemTime::now());
        // A clock stepped back does not take barriers back in time.
        let now = self
            .barrier_time
            .fetch_max(wall, Ordering::SeqCst)
            .max(wall);
        let barrier = Message::Barrier(Barrier { epoch, now });
        // Table changelogs are the sources; views forward barriers themselves.
        let tables: Vec<Arc<Subscribers>> = {
            let subs = crate::sync::lock(&self.subscribers);
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
        crate::sync::lock(&self.sources).contains(&id)
    }

    /// Ends the current epoch, as the checkpoint interval does; but while
    /// more than `max_backlog` bytes of checkpoints wait in memory for the
    /// disk (a full disk), none: views stay at their last epoch and sinks
    /// wait until the writer's retries land them, instead of memory filling
    /// with epochs the disk cannot take. Returns the epoch ended.
    pub async fn scheduled_barrier(&self, guard: &WriteGuard<'_>, max_backlog: u64) -> Option<u64> {
        let backlog = self.coordinator.checkpoint_backlog();
        let pause = backlog > max_backlog;
        if self.paused.swap(pause, Ordering::Relaxed) != pause {
            if pause {
                tracing::warn!(
                    backlog,
                    max_backlog,
                    "epochs pause: checkpoints the disk could not take fill the backlog"
                );
            } else {
                tracing::info!(backlog, "epochs resume: the backlog was written");
            }
        }
        if pause {
            return None;
        }
        Some(self.inject_barrier(guard).await)
    }

    /// Whether scheduled epochs pause, waiting for the disk (see
    /// [`Runtime::scheduled_barrier`]).
    pub fn epochs_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
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
        // DDL reads and writes the store itself: the checkpoints first.
        self.coordinator.wait_written(epoch).await;
        paused
    }

    /// Starts tracking view `view`'s late-rows relation, with the rows the
    /// last checkpoint holds, and its changelog (which the view's pipeline
    /// writes). Call before creating the view.
    pub fn create_late_rows(&self, _quiesced: &Quiesced<'_>, view: u32) -> Result<()> {
        self.coordinator.add_late_rows(view)?;
        crate::sync::lock(&self.subscribers)
            .entry(crate::late_rows::late_rows_id(view))
            .or_default();
        Ok(())
    }

    /// Starts view `id` maintaining `plan`: from a checkpoint when one
    /// holds it, else backfilled from its inputs. Must be called quiesced.
    pub fn create_view(
        &self,
        quiesced: &Quiesced<'_>,
        id: u32,
        plan: &StreamNode,
        options: PipelineOptions,
        resolve: &dyn Fn(&str) -> Option<ReadTarget>,
    ) -> Result<()> {
        let def = PipelineDef {
            plan: plan.clone(),
            options,
            sink: None,
            sources: vec![],
        };
        self.start_pipeline(quiesced, id, def, resolve)
    }

    /// Starts sink `spec` writing `plan`'s changes: from a checkpoint when
    /// one holds it (delivering what it holds undelivered), else from the
    /// inputs' current rows. Must be called quiesced.
    pub fn create_sink(
        &self,
        quiesced: &Quiesced<'_>,
        spec: Arc<SinkSpec>,
        plan: &StreamNode,
        options: PipelineOptions,
        resolve: &dyn Fn(&str) -> Option<ReadTarget>,
    ) -> Result<Arc<DeliveryStatus>> {
        let status = Arc::new(DeliveryStatus::default());
        let def = PipelineDef {
            plan: plan.clone(),
            options,
            sink: Some((spec.clone(), status.clone())),
            sources: vec![],
        };
        self.start_pipeline(quiesced, spec.id, def, resolve)?;
        Ok(status)
    }

    /// The views and sinks whose pipelines read source `source`.
    pub fn pipelines_reading(&self, source: u32) -> Vec<u32> {
        let pipelines = crate::sync::lock(&self.pipelines);
        let mut ids: Vec<u32> = pipelines
            .iter()
            .filter(|(_, def)| def.sources.contains(&source))
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        ids
    }

    /// Stops relation `id` (table, view or source) and forgets its rows.
    /// Must be called quiesced, after every view reading it was dropped.
    pub fn drop_relation(&self, _quiesced: &Quiesced<'_>, id: u32) {
        self.stop_pipeline(id);
        let removed = crate::sync::lock(&self.subscribers).remove(&id);
        drop(removed);
        crate::sync::lock(&self.pipelines).remove(&id);
        crate::sync::lock(&self.traits).remove(&id);
        crate::sync::lock(&self.sources).remove(&id);
        self.coordinator.remove_relation(id);
        self.errors.forget(id);
        self.progress.forget(id);
    }
}
