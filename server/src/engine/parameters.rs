//! System parameters: server-wide settings that persist, changed with
//! `SET name = value` (or `ALTER SYSTEM SET`) and read with `SHOW name`:
//! `checkpoint_interval`, how often epochs end, and `restart_strategy`,
//! how failed pipelines restart (see `eddy_executor::RestartStrategy`).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use eddy_storage::Store;

use crate::error::{EddyError, Result};
use eddy_executor::RestartStrategy;
use eddy_planner::duration_setting;

/// Name of the checkpoint interval parameter.
pub const CHECKPOINT_INTERVAL: &str = "checkpoint_interval";

/// Name of the restart strategy parameter.
pub const RESTART_STRATEGY: &str = "restart_strategy";

const SHORTEST: Duration = Duration::from_millis(10);
const LONGEST: Duration = Duration::from_secs(3600);

/// The server's system parameters.
#[derive(Debug)]
pub struct SystemParameters {
    checkpoint_interval: watch::Sender<Duration>,
    /// Whether a stored value overrides the server's flag.
    stored: bool,
    restart_strategy: Mutex<RestartStrategy>,
}

/// `1s`, `500ms`, `2 seconds`, `1 minute`, or a number of milliseconds.
fn parse_interval(value: &str) -> Result<Duration> {
    let interval = eddy_planner::duration_text(value).map_err(|e| invalid(value, &e))?;
    if !(SHORTEST..=LONGEST).contains(&interval) {
        return Err(invalid(value, "it must be between 10ms and 1 hour"));
    }
    Ok(interval)
}

fn invalid(value: &str, why: &str) -> EddyError {
    EddyError::Coded {
        code: "22023",
        message: format!("invalid value for {CHECKPOINT_INTERVAL}: \"{value}\": {why}"),
    }
}

impl SystemParameters {
    /// The parameters `store` holds, defaults for the rest.
    pub fn load(store: &Store) -> Result<Self> {
        let mut interval = Duration::from_secs(1);
        let mut stored = false;
        let mut restart_strategy = RestartStrategy::default();
        for (name, value) in store.parameters()? {
            match name.as_str() {
                CHECKPOINT_INTERVAL => {
                    interval = parse_interval(&value)?;
                    stored = true;
                }
                RESTART_STRATEGY => restart_strategy = RestartStrategy::parse(&value)?,
                _ => {}
            }
        }
        Ok(Self {
            checkpoint_interval: watch::channel(interval).0,
            stored,
            restart_strategy: Mutex::new(restart_strategy),
        })
    }

    /// Uses `interval` (the server's flag) unless a value was set with SQL.
    pub fn default_checkpoint_interval(&self, interval: Duration) {
        if !self.stored {
            self.checkpoint_interval
                .send_replace(interval.clamp(SHORTEST, LONGEST));
        }
    }

    /// Follows the checkpoint interval.
    pub fn checkpoint_interval(&self) -> watch::Receiver<Duration> {
        self.checkpoint_interval.subscribe()
    }

    /// How failed pipelines restart.
    pub fn restart_strategy(&self) -> RestartStrategy {
        self.restart_strategy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets parameter `name` if it is one; false if it is not.
    pub fn set(&self, store: &Store, name: &str, value: &str) -> Result<bool> {
        match name {
            CHECKPOINT_INTERVAL => {
                let interval = parse_interval(value)?;
                store.put_parameter(name, &duration_setting(interval))?;
                self.checkpoint_interval.send_replace(interval);
            }
            RESTART_STRATEGY => {
                let strategy = RestartStrategy::parse(value)?;
                store.put_parameter(name, &strategy.to_string())?;
                *self
                    .restart_strategy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = strategy;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The value of parameter `name`, if it is one.
    pub fn show(&self, name: &str) -> Option<String> {
        match name {
            CHECKPOINT_INTERVAL => Some(duration_setting(*self.checkpoint_interval.borrow())),
            RESTART_STRATEGY => Some(self.restart_strategy().to_string()),
            _ => None,
        }
    }
}
