//! Makes epochs durable: one synced RocksDB write per epoch, in order.
//!
//! A write that fails (a full disk, say) leaves the store at the last good
//! checkpoint. Its batch is kept and written first next time, before any
//! later epoch's: each batch holds only what its epoch changed, so they must
//! land in order. Until then the server keeps running on what it has in
//! memory; a restart recovers the last good checkpoint.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use eddy_storage::{CheckpointBatch, Store};

/// Checkpoints remembered for `eddy_catalog.checkpoints`.
const HISTORY: usize = 64;

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
pub struct CheckpointWriter {
    store: Arc<Store>,
    parallelism: u64,
    /// Batches not yet written, oldest first.
    unsaved: VecDeque<CheckpointBatch>,
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
    pub fn new(store: Arc<Store>, durable: u64, parallelism: u64) -> Self {
        Self {
            store,
            parallelism,
            unsaved: VecDeque::new(),
            history: VecDeque::new(),
            durable,
            failures: 0,
            last_logged: None,
        }
    }

    /// The store written to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Writes `batch` as epoch `epoch` (holding table changes up to
    /// `log_position`, begun at `began`), after any earlier batch that failed.
    pub fn commit(
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

    /// The last epoch made durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Recent checkpoints, oldest first.
    pub fn history(&self) -> Vec<CheckpointStats> {
        self.history.iter().cloned().collect()
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
