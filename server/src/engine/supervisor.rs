//! The supervisor: restarts failed pipelines under the restart strategy.
//!
//! A pipeline fails when one of its operators or split readers errs; the
//! coordinator records why and stops waiting for it, and every other
//! pipeline goes on. The supervisor sees the failure, counts it, and asks
//! its strategy (the view's or sink's `WITH (restart_strategy = ...)`,
//! else the server's `SET restart_strategy`) for a delay; after it, the
//! pipeline restarts from its last checkpoint (`Runtime::restart_pipelines`),
//! with the views and sinks that failed with it (they read it).
//!
//! A failed pipeline's checkpoint stays where its last good epoch left it,
//! so a restart is exact only when what it read since can be read again:
//! its readers go back to their checkpointed positions, and the table
//! changes its checkpoint lacks are kept in the log and replayed to it.
//! A view's changes are not logged: what reads a failed view fails with
//! it, and they restart together, from the same epoch, so it is emitted
//! again; a pipeline reading a view that did not fail with it cannot
//! restart exactly (see the coordinator's `Failure`). Those failures are
//! final, and say so. Failures count "in a row": a
//! pipeline that ran for [`STABLE`] since its last restart starts its
//! count again.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use eddy_storage::RelationKind;

use super::Engine;
use crate::catalog::RelationInfo;
use crate::jobs::JobState;

/// How often the supervisor looks at the jobs.
const TICK: Duration = Duration::from_millis(100);

/// How long a restarted pipeline must run for its failures to be forgotten.
const STABLE: Duration = Duration::from_secs(600);

/// Watches every job for as long as the engine lives.
pub(super) async fn supervise(engine: Weak<Engine>) {
    loop {
        tokio::time::sleep(TICK).await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        engine.check_jobs().await;
    }
}

impl Engine {
    async fn check_jobs(&self) {
        let relations = self.catalog.all();
        let live: HashSet<u32> = relations.iter().map(|r| r.id).collect();
        self.jobs.retain(|id| live.contains(&id));
        let default = self.parameters.restart_strategy();
        let now = Instant::now();
        let mut due = Vec::new();
        let mut given_up = Vec::new();
        let mut failed = Vec::new();
        for info in relations
            .iter()
            .filter(|r| matches!(r.kind, RelationKind::MaterializedView | RelationKind::Sink))
        {
            let coordinator = self.runtime.coordinator();
            let failure = coordinator.failure(info.id);
            let restartable = failure.as_ref().map(|_| self.restartable(info));
            let follows = coordinator
                .failure_cause(info.id)
                .filter(|_| matches!(restartable, Some(Ok(()))));
            self.jobs
                .with(info.id, |job| match (job.state, failure, follows) {
                    (JobState::Running, Some(reason), Some(root)) => {
                        failed.push(info.id);
                        let state = JobState::RestartsWith { root };
                        warn!(job = %info.name, error = %reason, state = ?state, "pipeline failed");
                        job.state = state;
                        job.last_error = Some((SystemTime::now(), reason));
                    }
                    (JobState::Running, Some(reason), None) => {
                        failed.push(info.id);
                        let strategy = job.restart_strategy.as_ref().unwrap_or(&default);
                        if job.restarted_at.is_some_and(|t| now - t > STABLE) {
                            job.failures.clear();
                        }
                        job.failures.push(now);
                        let spread = rand::random_range(-1.0..=1.0);
                        let (state, reason) = match restartable.unwrap_or(Ok(())) {
                            Err(why) => (JobState::Failed, format!("{reason} ({why})")),
                            Ok(()) => match strategy.delay(&job.failures, spread) {
                                Some(delay) => (JobState::Restarting { at: now + delay }, reason),
                                None => {
                                    let why = format!("restart strategy {strategy} gave up");
                                    given_up.push((info.id, why.clone()));
                                    (JobState::Failed, format!("{reason} ({why})"))
                                }
                            },
                        };
                        warn!(job = %info.name, error = %reason, state = ?state, "pipeline failed");
                        job.state = state;
                        job.last_error = Some((SystemTime::now(), reason));
                    }
                    (JobState::Restarting { at }, _, _) if at <= now => due.push(info.clone()),
                    _ => {}
                });
        }
        // Halted, they would go on reading their sources for nothing.
        for id in failed {
            self.runtime.stop_failed(id);
        }
        for (root, why) in given_up {
            let coordinator = self.runtime.coordinator();
            for member in coordinator.failed_with(root) {
                let why = format!("{why} for the view it reads");
                self.jobs.with(member, |job| {
                    job.state = JobState::Failed;
                    if let Some((_, reason)) = job.last_error.as_mut() {
                        *reason = format!("{reason} ({why})");
                    }
                });
                coordinator.give_up(member, why);
            }
            coordinator.give_up(root, why);
        }
        for info in due {
            self.restart_job(&info).await;
        }
    }

    /// Why `info`'s pipeline cannot restart exactly, if it cannot.
    fn restartable(&self, info: &RelationInfo) -> Result<(), String> {
        self.runtime
            .coordinator()
            .restartable(info.id)
            .map_err(|why| format!("not restarted: {why}; drop it and create it again"))
    }

    /// Restarts `info`'s pipeline with those that failed with it.
    async fn restart_job(&self, info: &Arc<RelationInfo>) {
        let guard = self.runtime.write_lock().await;
        let quiesced = self.runtime.quiesce(&guard).await;
        // Dropped meanwhile: nothing to restart.
        if self.catalog.get(&info.name).is_none_or(|r| r.id != info.id) {
            return;
        }
        let mut group = vec![info.id];
        group.extend(self.runtime.coordinator().failed_with(info.id));
        let restarted = self
            .runtime
            .restart_pipelines(&quiesced, &group, &|n| self.catalog.read_target(n));
        let now = Instant::now();
        for &id in &group {
            self.jobs.with(id, |job| {
                job.state = JobState::Running;
                if restarted.is_ok() {
                    job.restarts += 1;
                    job.restarted_at = Some(now);
                }
            });
        }
        match restarted {
            Ok(()) => {
                info!(job = %info.name, with = group.len() - 1, "restarted from the last checkpoint")
            }
            // Seen as a new failure at the next look.
            Err(e) => self
                .runtime
                .coordinator()
                .fail(info.id, format!("restarting failed: {e}")),
        }
    }
}
