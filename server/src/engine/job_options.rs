//! Options of a materialized view's or sink's pipeline, in its `WITH
//! (...)`: `restart_strategy`, how it restarts when it fails (the server's
//! `restart_strategy` parameter when absent).
//!
//! They live in the stored statement, so a restarted server applies them
//! again when it replays the catalog.

use datafusion::sql::sqlparser::ast::{CreateTableOptions, Expr, SqlOption};

use eddy_executor::{ExecutorError, RestartStrategy};

use super::parameters::RESTART_STRATEGY;
use crate::error::{EddyError, Result};
use crate::jobs::Jobs;

/// A pipeline's own settings.
#[derive(Debug, Default)]
pub(super) struct JobOptions {
    restart_strategy: Option<RestartStrategy>,
}

impl JobOptions {
    /// Takes the job's options out of `options`, leaving the others (a
    /// sink's connector options) in their order.
    pub fn take(options: &mut Vec<(String, String)>) -> Result<Self> {
        let mut this = Self::default();
        let mut error = None;
        options.retain(|(key, value)| {
            if key != RESTART_STRATEGY {
                return true;
            }
            match RestartStrategy::parse(value) {
                Ok(strategy) => this.restart_strategy = Some(strategy),
                Err(e) => error = Some(e),
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
        let this = Self::take(&mut pairs)?;
        match pairs.first() {
            Some((key, _)) => Err(ExecutorError::InvalidOption(format!(
                "unknown option '{key}' for a materialized view ({RESTART_STRATEGY})"
            ))
            .into()),
            None => Ok(this),
        }
    }

    /// Records them for job `id`.
    pub fn apply(self, jobs: &Jobs, id: u32) {
        jobs.with(id, |job| job.restart_strategy = self.restart_strategy);
    }
}
