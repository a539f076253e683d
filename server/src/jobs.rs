//! Jobs: the pipeline of every materialized view and sink, as `SHOW JOBS`
//! and `eddy_catalog.jobs` show it — running, restarting or failed, how
//! often it restarted, why it last failed, and the connection problem of a
//! source it reads.
//!
//! The registry only records; the engine's supervisor decides restarts.
//! With a data directory, restarts and the last failure are stored as they
//! change, so they survive restarts of the server; the state and the
//! failures counted by a strategy start afresh (a pipeline recovered
//! failed is seen failing again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eddy_executor::{RestartStrategy, Runtime};
use eddy_storage::{RelationKind, Store, StoredJob};

use crate::catalog::Catalog;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum JobState {
    /// Maintained.
    Running,
    /// Failed; starts again from its last checkpoint at `at`.
    Restarting {
        /// When.
        at: Instant,
    },
    /// Failed with a relation it reads (`root`), and restarts with it,
    /// under its strategy.
    RestartsWith {
        /// The relation whose failure came first.
        root: u32,
    },
    /// Failed for good (the strategy gave up, or it cannot restart).
    Failed,
}

/// A job's history.
#[derive(Debug)]
pub struct Job {
    /// Where it is.
    pub state: JobState,
    /// Restarts since the job was created.
    pub restarts: u64,
    /// Its failures in a row (see the supervisor), oldest first.
    pub failures: Vec<Instant>,
    /// When it last restarted.
    pub restarted_at: Option<Instant>,
    /// Why it last failed, and when.
    pub last_error: Option<(SystemTime, String)>,
    /// Its own restart strategy (`WITH (restart_strategy = ...)`); the
    /// server's when `None`.
    pub restart_strategy: Option<RestartStrategy>,
    /// What the store holds of it.
    saved: StoredJob,
}

impl Default for Job {
    fn default() -> Self {
        Self {
            state: JobState::Running,
            restarts: 0,
            failures: Vec::new(),
            restarted_at: None,
            last_error: None,
            restart_strategy: None,
            saved: StoredJob::default(),
        }
    }
}

/// One row of `SHOW JOBS`.
#[derive(Debug)]
pub struct JobRow {
    /// The view's or sink's name.
    pub name: String,
    /// `materialized view` or `sink`.
    pub kind: &'static str,
    /// `running`, `restarting` or `failed`.
    pub state: &'static str,
    /// Restarts since the job was created.
    pub restarts: u64,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// When it last failed.
    pub failed_at: Option<SystemTime>,
    /// The current connection problem of a source it reads.
    pub connection_problem: Option<String>,
    /// The restart strategy it fails under.
    pub restart_strategy: String,
}

impl Job {
    /// What is stored of it.
    fn stored(&self) -> StoredJob {
        StoredJob {
            restarts: self.restarts,
            last_error: self
                .last_error
                .as_ref()
                .map(|(at, reason)| (millis(*at), reason.clone())),
        }
    }

    /// Whether it changed since it was stored (compared in place: the
    /// supervisor looks at every job ten times a second).
    fn unsaved(&self) -> bool {
        let saved = self.saved.last_error.as_ref();
        self.restarts != self.saved.restarts
            || self
                .last_error
                .as_ref()
                .map(|(at, r)| (millis(*at), r.as_str()))
                != saved.map(|(at, r)| (*at, r.as_str()))
    }
}

/// `at` in milliseconds since the Unix epoch (0 before it).
fn millis(at: SystemTime) -> u64 {
    u64::try_from(crate::system_tables::millis(at)).unwrap_or(0)
}

/// Every job's history, by relation id.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<u32, Job>>,
    /// Where histories are kept, if anywhere.
    store: Option<Arc<Store>>,
}

impl Jobs {
    /// The histories `store` holds, kept there as they change.
    pub fn durable(store: Arc<Store>) -> eddy_storage::Result<Self> {
        let jobs = store
            .jobs()?
            .into_iter()
            .map(|(id, stored)| {
                let job = Job {
                    restarts: stored.restarts,
                    last_error: stored
                        .last_error
                        .clone()
                        .map(|(ms, reason)| (UNIX_EPOCH + Duration::from_millis(ms), reason)),
                    saved: stored,
                    ..Job::default()
                };
                (id, job)
            })
            .collect();
        Ok(Self {
            jobs: Mutex::new(jobs),
            store: Some(store),
        })
    }

    /// Runs `f` on the history of job `id` (created running), and stores
    /// what it changed of it.
    pub fn with<T>(&self, id: u32, f: impl FnOnce(&mut Job) -> T) -> T {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let job = jobs.entry(id).or_default();
        let out = f(job);
        if job.unsaved()
            && let Some(store) = &self.store
        {
            // Tried once per change: a history is worth less than the
            // failure it records (a full disk, say), and the next change
            // stores it whole.
            job.saved = job.stored();
            if let Err(e) = store.put_job(id, &job.saved) {
                tracing::warn!(job = id, error = %e, "storing a job's history failed");
            }
        }
        out
    }

    /// Forgets the jobs of relations that no longer exist.
    pub fn retain(&self, live: impl Fn(u32) -> bool) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id, _| live(*id));
    }

    /// Every view's and sink's job, by name; jobs without a strategy of
    /// their own restart under `default`.
    pub fn rows(
        &self,
        catalog: &Catalog,
        runtime: &Runtime,
        default: &RestartStrategy,
    ) -> Vec<JobRow> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        catalog
            .all()
            .into_iter()
            .filter(|r| matches!(r.kind, RelationKind::MaterializedView | RelationKind::Sink))
            .map(|r| {
                let job = jobs.get(&r.id);
                let failure = runtime.coordinator().failure(r.id);
                let state = match (job.map(|j| j.state), &failure) {
                    (Some(JobState::Restarting { .. } | JobState::RestartsWith { .. }), _) => {
                        "restarting"
                    }
                    (Some(JobState::Failed), _) => "failed",
                    // Failed a moment ago; the supervisor has yet to see it.
                    (_, Some(_)) => "failed",
                    _ => "running",
                };
                let last = job.and_then(|j| j.last_error.clone());
                let connection_problem = r.depends_on.iter().find_map(|d| {
                    catalog
                        .get(d)?
                        .source
                        .as_ref()?
                        .connection()?
                        .problem()
                        .map(|(_, message)| message)
                });
                JobRow {
                    name: r.name.clone(),
                    kind: r.kind_name(),
                    state,
                    restarts: job.map_or(0, |j| j.restarts),
                    failed_at: last.as_ref().map(|(at, _)| *at),
                    last_error: last.map(|(_, e)| e).or(failure),
                    connection_problem,
                    restart_strategy: job
                        .and_then(|j| j.restart_strategy.as_ref())
                        .unwrap_or(default)
                        .to_string(),
                }
            })
            .collect()
    }
}
