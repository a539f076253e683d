//! Makes epochs durable: one synced RocksDB write per epoch, in order, on
//! a thread of its own ([`BackgroundWriter`]): the coordinator hands an
//! epoch's batch over and goes on, so neither pipelines nor the
//! coordinator's lock wait for the disk to sync. A bounded queue of
//! batches keeps a slow disk from piling them up: the coordinator waits
//! once it is full.
//!
//! A write that fails (a full disk, say) leaves the store at the last good
//! checkpoint. Its batch is kept and written first next time, before any
//! later epoch's: each batch holds only what its epoch changed, so they must
//! land in order. Until then the server keeps running on what it has in
//! memory; a restart recovers the last good checkpoint. The kept batches
//! are tried again every [`RETRY_UNSAVED`] even when no epoch comes (the
//! server stops starting epochs once they exceed its backlog limit, see
//! [`BackgroundWriter::backlog`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use eddy_storage::{CheckpointBatch, Store};

use crate::sync::lock;

/// Batches handed over and not yet written, at most.
const QUEUED_BATCHES: usize = 2;

/// Checkpoints remembered for `eddy_catalog.checkpoints`.
const HISTORY: usize = 64;

/// How often batches that failed are written again while no epoch comes.
const RETRY_UNSAVED: Duration = Duration::from_secs(1);

/// While checkpoints keep failing, the log repeats the error this often
/// (every failure is in `eddy_catalog.checkpoints` and the metrics).
const REPEAT_ERROR_LOG: Duration = Duration::from_secs(60);

/// One checkpoint, as the system table shows it.
#[derive(Debug, Clone)]
pub struct CheckpointStats {
    /// The epoch it holds.
    pub epoch: u64,
    /// When it was written (or failed).
    pub finished_at: SystemTime,
    /// From the barrier's injection to the end of the write.
    pub duration: Duration,
    /// The write alone.
    pub write: Duration,
    /// Bytes written.
    pub bytes: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Writes checkpoints and remembers how they went.
#[derive(Debug)]
struct CheckpointWriter {
    store: Arc<Store>,
    parallelism: u64,
    /// Batches not yet written, oldest first.
    unsaved: VecDeque<CheckpointBatch>,
    /// Their bytes, for whoever decides whether more epochs may come.
    backlog: Arc<AtomicU64>,
    history: VecDeque<CheckpointStats>,
    /// The last epoch made durable.
    durable: u64,
    /// Failures since the last good write, and when one was last logged.
    failures: u64,
    last_logged: Option<Instant>,
}

impl CheckpointWriter {
    /// A writer into `store` whose last durable epoch is `durable`; pipelines
    /// run `parallelism` partitions.
    fn new(store: Arc<Store>, durable: u64, parallelism: u64) -> Self {
        Self {
            store,
            parallelism,
            unsaved: VecDeque::new(),
            backlog: Arc::new(AtomicU64::new(0)),
            history: VecDeque::new(),
            durable,
            failures: 0,
            last_logged: None,
        }
    }

    /// Writes `batch` as epoch `epoch` (holding table changes up to
    /// `log_position`, begun at `began`), after any earlier batch that failed.
    fn commit(
        &mut self,
        mut batch: CheckpointBatch,
        epoch: u64,
        log_position: u64,
        began: Instant,
    ) {
        batch.finish(epoch, log_position, self.parallelism);
        let bytes = batch.size_in_bytes() as u64;
        self.unsaved.push_back(batch);
        let started = Instant::now();
        let error = self.write_unsaved(epoch);
        let stats = CheckpointStats {
            epoch,
            finished_at: SystemTime::now(),
            duration: began.elapsed(),
            write: started.elapsed(),
            bytes,
            error,
        };
        record_metrics(&stats, self.durable);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(stats);
    }

    /// Writes the batches not yet written, in order, up to the first that
    /// fails (for epoch `epoch`'s checkpoint); returns why it failed.
    fn write_unsaved(&mut self, epoch: u64) -> Option<String> {
        let mut error = None;
        while let Some(next) = self.unsaved.pop_front() {
            let next_epoch = next.epoch();
            if let Err(e) = self.store.commit_checkpoint(&next) {
                self.failures += 1;
                if self
                    .last_logged
                    .is_none_or(|at| at.elapsed() >= REPEAT_ERROR_LOG)
                {
                    self.last_logged = Some(Instant::now());
                    tracing::error!(
                        epoch,
                        durable = self.durable,
                        failures = self.failures,
                        error = %e,
                        "checkpoint failed; the last good one is kept"
                    );
                }
                error = Some(format!(
                    "writing checkpoint {next_epoch} failed: {e}; the store keeps checkpoint {}",
                    self.durable
                ));
                self.unsaved.push_front(next);
                break;
            }
            self.durable = next_epoch;
        }
        if error.is_none() && self.failures > 0 {
            tracing::info!(epoch, failures = self.failures, "checkpoints written again");
            self.failures = 0;
            self.last_logged = None;
        }
        let backlog: usize = self
            .unsaved
            .iter()
            .map(CheckpointBatch::size_in_bytes)
            .sum();
        self.backlog.store(backlog as u64, Ordering::Relaxed);
        metrics::gauge!("eddy_checkpoint_backlog_bytes").set(backlog as f64);
        error
    }
}

/// One epoch's batch, handed to the writer's thread.
struct Job {
    batch: CheckpointBatch,
    epoch: u64,
    log_position: u64,
    began: Instant,
}

/// Writes checkpoints on a thread of its own, in the order they come.
#[derive(Debug)]
pub struct BackgroundWriter {
    store: Arc<Store>,
    writer: Arc<Mutex<CheckpointWriter>>,
    jobs: Option<SyncSender<Job>>,
    /// The last epoch whose write was tried (it may have failed).
    tried: watch::Receiver<u64>,
    /// Bytes of the batches that failed and wait to be written again.
    backlog: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundWriter {
    /// A writer into `store`, whose last durable epoch is `durable`
    /// (pipelines run `parallelism` partitions); it tells `durable_tx` each
    /// epoch that becomes durable.
    pub fn spawn(
        store: Arc<Store>,
        durable: u64,
        parallelism: u64,
        durable_tx: Arc<watch::Sender<u64>>,
    ) -> std::io::Result<Self> {
        let writer = CheckpointWriter::new(store.clone(), durable, parallelism);
        let backlog = writer.backlog.clone();
        let writer = Arc::new(Mutex::new(writer));
        let (jobs, queue) = sync_channel(QUEUED_BATCHES);
        let (tried_tx, tried) = watch::channel(durable);
        let thread = std::thread::Builder::new()
            .name("eddy-checkpoints".into())
            .spawn({
                let writer = writer.clone();
                move || write_jobs(queue, &writer, &durable_tx, &tried_tx)
            })?;
        Ok(Self {
            store,
            writer,
            jobs: Some(jobs),
            tried,
            backlog,
            thread: Some(thread),
        })
    }

    /// The store written to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Hands `batch` over as epoch `epoch` (see [`CheckpointWriter::commit`]);
    /// waits only while the queue is full.
    pub fn submit(&self, batch: CheckpointBatch, epoch: u64, log_position: u64, began: Instant) {
        let job = Job {
            batch,
            epoch,
            log_position,
            began,
        };
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        if !sent {
            // Only a panic on the writer's thread ends it early.
            tracing::error!(
                epoch,
                "the checkpoint writer is gone; the epoch is not written"
            );
        }
    }

    /// Bytes of the checkpoints that could not be written yet (a full
    /// disk): they are in memory until they are.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Follows the last epoch whose write was tried (durable or failed).
    pub fn tried(&self) -> watch::Receiver<u64> {
        self.tried.clone()
    }

    /// Recent checkpoints, oldest first, and the last durable epoch.
    pub fn history(&self) -> (Vec<CheckpointStats>, u64) {
        let writer = lock(&self.writer);
        (writer.history.iter().cloned().collect(), writer.durable)
    }
}

impl Drop for BackgroundWriter {
    /// Writes what was handed over before going.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer's thread: writes each job, then tells who waits; between
/// jobs, writes again what failed.
fn write_jobs(
    queue: Receiver<Job>,
    writer: &Mutex<CheckpointWriter>,
    durable_tx: &watch::Sender<u64>,
    tried_tx: &watch::Sender<u64>,
) {
    loop {
        let (durable, tried) = match queue.recv_timeout(RETRY_UNSAVED) {
            Ok(job) => {
                let mut writer = lock(writer);
                writer.commit(job.batch, job.epoch, job.log_position, job.began);
                (writer.durable, Some(job.epoch))
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut writer = lock(writer);
                if let Some(last) = writer.unsaved.back().map(CheckpointBatch::epoch) {
                    writer.write_unsaved(last);
                }
                (writer.durable, None)
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        durable_tx.send_if_modified(|d| std::mem::replace(d, durable) != durable);
        if let Some(epoch) = tried {
            tried_tx.send_replace(epoch);
        }
    }
}

/// Checkpoint metrics, for the server's Prometheus endpoint (no-ops when
/// nothing collects them).
fn record_metrics(stats: &CheckpointStats, durable: u64) {
    metrics::counter!("eddy_checkpoints_total").increment(1);
    if stats.error.is_some() {
        metrics::counter!("eddy_checkpoint_failures_total").increment(1);
    }
    metrics::counter!("eddy_checkpoint_bytes_total").increment(stats.bytes);
    metrics::gauge!("eddy_checkpoint_durable_epoch").set(durable as f64);
    metrics::histogram!("eddy_checkpoint_duration_seconds").record(stats.duration.as_secs_f64());
    metrics::histogram!("eddy_checkpoint_write_seconds").record(stats.write.as_secs_f64());
}
