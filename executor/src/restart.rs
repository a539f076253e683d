//! Restart strategies: whether, and after how long, a failed pipeline
//! starts again from its last checkpoint (as Flink's are spelled):
//!
//! - `none`: a failure is final;
//! - `fixed-delay(attempts = 3, delay = 1s)`: up to `attempts` restarts in
//!   a row, `delay` apart;
//! - `failure-rate(max_failures = 3, interval = 1 minute, delay = 1s)`:
//!   restarts after `delay` while at most `max_failures` failures fall in
//!   the last `interval`;
//! - `exponential-delay(initial = 1s, max = 1 minute, multiplier = 2,
//!   jitter = 0.1)`: restarts forever, the delay growing from `initial` by
//!   `multiplier` per failure up to `max`, each spread by ±`jitter` of it.
//!
//! Omitted settings take the defaults above; durations are at most a day.

use std::fmt;
use std::time::{Duration, Instant};

use eddy_planner::duration_setting;

use crate::error::{ExecutorError, Result};

/// The longest delay or interval a strategy may name.
const LONGEST: Duration = Duration::from_secs(86_400);

/// A restart strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartStrategy {
    /// Never restart.
    None,
    /// Up to `attempts` restarts, `delay` after each failure.
    FixedDelay {
        /// Restarts allowed.
        attempts: u32,
        /// Wait before each.
        delay: Duration,
    },
    /// Restart after `delay` unless more than `max_failures` failures fall
    /// within `interval`.
    FailureRate {
        /// Failures tolerated per interval.
        max_failures: u32,
        /// The sliding window failures are counted in.
        interval: Duration,
        /// Wait before each restart.
        delay: Duration,
    },
    /// Restart forever, waiting `initial * multiplier^(failures - 1)` (at
    /// most `max`), spread by ±`jitter` of it.
    ExponentialDelay {
        /// The first wait.
        initial: Duration,
        /// The longest wait.
        max: Duration,
        /// Growth per failure.
        multiplier: f64,
        /// Spread, as a fraction of the wait.
        jitter: f64,
    },
}

/// The default strategy's settings (`exponential-delay`).
const INITIAL: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(60);
const MULTIPLIER: f64 = 2.0;
const JITTER: f64 = 0.1;

impl Default for RestartStrategy {
    fn default() -> Self {
        RestartStrategy::ExponentialDelay {
            initial: INITIAL,
            max: MAX,
            multiplier: MULTIPLIER,
            jitter: JITTER,
        }
    }
}

impl RestartStrategy {
    /// The wait before restarting a pipeline whose failures (consecutive,
    /// oldest first; the last one just now) are `failures`, or `None` if it
    /// must stay failed. `spread` in [-1, 1] places the jitter.
    pub fn delay(&self, failures: &[Instant], spread: f64) -> Option<Duration> {
        let count = failures.len() as u32;
        match self {
            RestartStrategy::None => None,
            RestartStrategy::FixedDelay { attempts, delay } => {
                (count <= *attempts).then_some(*delay)
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => {
                let last = *failures.last()?;
                let recent = failures
                    .iter()
                    .filter(|t| last.duration_since(**t) < *interval)
                    .count() as u32;
                (recent <= *max_failures).then_some(*delay)
            }
            RestartStrategy::ExponentialDelay {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                let exponent = count.saturating_sub(1).min(1000) as i32;
                let wait =
                    (initial.as_secs_f64() * multiplier.powi(exponent)).min(max.as_secs_f64());
                let wait = wait * (1.0 + jitter * spread.clamp(-1.0, 1.0));
                Some(Duration::try_from_secs_f64(wait.max(0.0)).unwrap_or(*max))
            }
        }
    }

    /// Parses `none`, `fixed-delay(...)`, `failure-rate(...)` or
    /// `exponential-delay(...)` (see the module docs).
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |why: String| {
            ExecutorError::InvalidOption(format!("invalid restart strategy \"{text}\": {why}"))
        };
        let trimmed = text.trim();
        let (name, settings) = match trimmed.split_once('(') {
            Some((name, rest)) => {
                let inner = rest
                    .trim_end()
                    .strip_suffix(')')
                    .ok_or_else(|| invalid("settings must end with ')'".into()))?;
                (name.trim(), inner)
            }
            None => (trimmed, ""),
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in settings.split(',').filter(|p| !p.trim().is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| invalid(format!("'{}' is not key = value", part.trim())))?;
            pairs.push((key.trim().to_lowercase(), value.trim().to_string()));
        }
        let mut take = |key: &str| {
            pairs
                .iter()
                .position(|(k, _)| k == key)
                .map(|i| pairs.remove(i).1)
        };
        let duration = |value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(v) => match eddy_planner::duration_text(&v).map_err(&invalid)? {
                d if d > LONGEST => Err(invalid(format!("'{v}' is longer than a day"))),
                d => Ok(d),
            },
        };
        let number = |key: &str, value: Option<String>, default: f64| match value {
            None => Ok(default),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| invalid(format!("{key} must be a number of zero or more"))),
        };
        let strategy = match name.to_lowercase().as_str() {
            "none" | "no-restart" => RestartStrategy::None,
            "fixed-delay" => RestartStrategy::FixedDelay {
                attempts: number("attempts", take("attempts"), 3.0)? as u32,
                delay: duration(take("delay"), Duration::from_secs(1))?,
            },
            "failure-rate" => RestartStrategy::FailureRate {
                max_failures: number("max_failures", take("max_failures"), 3.0)? as u32,
                interval: duration(take("interval"), Duration::from_secs(60))?,
                delay: duration(take("delay"), Duration::from_secs(1))?,
            },
            "exponential-delay" => {
                let multiplier = number("multiplier", take("multiplier"), MULTIPLIER)?;
                let jitter = number("jitter", take("jitter"), JITTER)?;
                if multiplier < 1.0 || jitter > 1.0 {
                    return Err(invalid(
                        "multiplier must be at least 1 and jitter at most 1".into(),
                    ));
                }
                RestartStrategy::ExponentialDelay {
                    initial: duration(take("initial"), INITIAL)?,
                    max: duration(take("max"), MAX)?,
                    multiplier,
                    jitter,
                }
            }
            other => {
                return Err(invalid(format!(
                    "unknown strategy '{other}' (none, fixed-delay, failure-rate, exponential-delay)"
                )));
            }
        };
        if let Some((key, _)) = pairs.first() {
            return Err(invalid(format!("unknown setting '{key}'")));
        }
        Ok(strategy)
    }
}

impl fmt::Display for RestartStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartStrategy::None => write!(f, "none"),
            RestartStrategy::FixedDelay { attempts, delay } => {
                write!(
                    f,
                    "fixed-delay(attempts = {attempts}, delay = {})",
                    duration_setting(*delay)
                )
            }
            RestartStrategy::FailureRate {
                max_failures,
                interval,
                delay,
            } => write!(
                f,
                "failure-rate(max_failures = {max_failures}, interval = {}, delay = {})",
                duration_setting(*interval),
                duration_setting(*delay)
            ),
            RestartStrategy::ExponentialDelay {
                initial,
                max,
                multiplier,
                jitter,
            } => write!(
                f,
                "exponential-delay(initial = {}, max = {}, multiplier = {multiplier}, jitter = {jitter})",
                duration_setting(*initial),
                duration_setting(*max)
            ),
        }
    }
}
