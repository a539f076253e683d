//! Options of a materialized view's or sink's pipeline, in its `WITH
//! (...)`:
//! - `restart_strategy`: how it restarts when it fails (the server's
//!   `restart_strategy` parameter when absent);
//! - `state_ttl`: how long its unwindowed aggregates and joins keep state
//!   that stopped changing (forever when absent);
//! - `state_backend`: `memory` or `rocksdb`, where its keyed state lives
//!   (the server's `--state-backend` when absent);
//! - `late_rows` (views only): the name of a relation keeping the rows its
//!   windowed operators drop as late (they are only counted when absent).
//!
//! They live in the stored statement, so a restarted server applies them
//! again when it replays the catalog.

use datafusion::sql::sqlparser::ast::{CreateTableOptions, Expr, SqlOption};

use std::time::Duration;

use eddy_executor::{ExecutorError, PipelineOptions, RestartStrategy, StateBackend, StateConfig};

use super::parameters::RESTART_STRATEGY;
use crate::error::{EddyError, Result};
use crate::jobs::Jobs;

/// A pipeline's own settings.
#[derive(Debug, Default)]
pub(super) struct JobOptions {
    restart_strategy: Option<RestartStrategy>,
    state_ttl: Option<Duration>,
    state_backend: Option<StateBackend>,
    /// The name of the view's late-rows relation.
    pub late_rows: Option<String>,
}

const STATE_TTL: &str = "state_ttl";
const STATE_BACKEND: &str = "state_backend";
const LATE_ROWS: &str = "late_rows";

fn state_ttl(value: &str) -> std::result::Result<Duration, ExecutorError> {
    match eddy_planner::duration_text(value) {
        Ok(ttl) if !ttl.is_zero() => Ok(ttl),
        Ok(_) => Err(ExecutorError::InvalidOption(format!(
            "{STATE_TTL} must be longer than zero, got '{value}'"
        ))),
        Err(e) => Err(ExecutorError::InvalidOption(format!("{STATE_TTL}: {e}"))),
    }
}

impl JobOptions {
    /// Takes the job's options out of `options`, leaving the others (a
    /// sink's connector options) in their order.
    pub fn take(options: &mut Vec<(String, String)>) -> Result<Self> {
        let mut this = Self::default();
        let mut error = None;
        options.retain(|(key, value)| {
            let parsed = match key.as_str() {
                RESTART_STRATEGY => {
                    RestartStrategy::parse(value).map(|s| this.restart_strategy = Some(s))
                }
                STATE_TTL => state_ttl(value).map(|ttl| this.state_ttl = Some(ttl)),
                STATE_BACKEND => match StateBackend::named(value) {
                    Some(backend) => {
                        this.state_backend = Some(backend);
                        Ok(())
                    }
                    None => Err(ExecutorError::InvalidOption(format!(
                        "{STATE_BACKEND} is 'memory' or 'rocksdb', not '{value}'"
                    ))),
                },
                _ => return true,
            };
            if let Err(e) = parsed {
                error = Some(e);
            }
            false
        });
        match error {
            Some(e) => Err(e.into()),
            None => Ok(this),
        }
    }

    /// A materialized view's `WITH (...)`, which holds only job options.
    pub fn of_view(options: &CreateTableOptions) -> Result<Self> {
        let listed = match options {
            CreateTableOptions::None => return Ok(Self::default()),
            CreateTableOptions::With(list) => list,
            _ => return Err(EddyError::Unsupported(format!("{options} on a view"))),
        };
        let mut pairs = listed
            .iter()
            .map(|option| match option {
                SqlOption::KeyValue {
                    key,
                    value: Expr::Value(value),
                } => Ok((
                    key.value.to_lowercase(),
                    eddy_planner::option_value(&value.value),
                )),
                other => Err(EddyError::Unsupported(format!("view option {other}"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut this = Self::take(&mut pairs)?;
        if let Some(i) = pairs.iter().position(|(key, _)| key == LATE_ROWS) {
            let (_, name) = pairs.remove(i);
            let name = crate::functions::normalize_ident(name.trim());
            if name.is_empty() {
                return Err(ExecutorError::InvalidOption(format!(
                    "{LATE_ROWS} needs the name of the relation to keep them in"
                ))
                .into());
            }
            this.late_rows = Some(name);
        }
        match pairs.first() {
            Some((key, _)) => Err(ExecutorError::InvalidOption(format!(
                "unknown option '{key}' for a materialized view ({RESTART_STRATEGY}, {STATE_TTL}, {STATE_BACKEND}, {LATE_ROWS})"
            ))
            .into()),
            None => Ok(this),
        }
    }

    /// What the pipeline is built with; `state` is the server's.
    pub fn pipeline(&self, emit_on_window_close: bool, state: StateConfig) -> PipelineOptions {
        PipelineOptions {
            emit_on_window_close,
            state_ttl: self.state_ttl,
            keep_late_rows: self.late_rows.is_some(),
            state: StateConfig {
                backend: self.state_backend.unwrap_or(state.backend),
                ..state
            },
        }
    }

    /// Records them for job `id`.
    pub fn apply(self, jobs: &Jobs, id: u32) {
        jobs.with(id, |job| job.restart_strategy = self.restart_strategy);
    }
}
