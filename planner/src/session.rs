//! Session windows: the window functions `SESSION(...)` is rewritten into.
//!
//! A session is a maximal run of rows of one partition whose consecutive
//! times are less than `gap` apart ([`same_session`]); it spans from its
//! first row's time to its last row's time plus `gap`. So a row at `t`
//! belongs to the session `[first, last + gap)` of its partition.
//!
//! `SESSION(rel, time_col, gap [, key ...])` becomes
//!
//! ```sql
//! SELECT *, session_window_start(time_col, gap_ns) OVER (PARTITION BY key ...) AS window_start,
//!           session_window_end(time_col, gap_ns) OVER (PARTITION BY key ...) AS window_end
//! FROM rel
//! ```
//!
//! Batch queries evaluate these two window functions over whole partitions
//! (here); the stream planner recognizes them and maintains the sessions
//! incrementally. Rows with a NULL time belong to no session: both bounds
//! are NULL.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array};
use datafusion::arrow::compute::{SortOptions, sort_to_indices};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};

use datafusion::physical_expr::expressions::Literal;

use crate::error::PlanError;
use crate::time::{nanos_to_time, time_nanos};
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    PartitionEvaluator, Signature, TypeSignature, Volatility, WindowUDF, WindowUDFImpl,
};

/// Name of the window function giving a row's session start.
pub const SESSION_START: &str = "session_window_start";
/// Name of the window function giving a row's session end.
pub const SESSION_END: &str = "session_window_end";

/// Whether a row at `next` joins the session whose latest row is at `last`
/// (`next >= last`): the defining rule of a session window.
pub fn same_session(last: i64, next: i64, gap: i64) -> bool {
    next.saturating_sub(last) < gap
}

/// The gap argument of a session window function: a positive constant
/// number of nanoseconds (`value` is None when the argument is no constant).
pub fn session_gap(value: Option<&ScalarValue>) -> std::result::Result<i64, PlanError> {
    match value.map(|v| v.cast_to(&DataType::Int64)) {
        Some(Ok(ScalarValue::Int64(Some(gap)))) if gap > 0 => Ok(gap),
        _ => Err(PlanError::InvalidParameter(format!(
            "the gap of a session window function must be a positive constant number of nanoseconds, got {}",
            value.map_or("an expression that is not a constant".to_string(), |v| v
                .to_string())
        ))),
    }
}

/// Which bound of its session a window function gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionBound {
    /// The time of the session's first row.
    Start,
    /// The time of the session's last row plus the gap.
    End,
}

impl SessionBound {
    /// The bound a window function name stands for.
    pub fn of_function(name: &str) -> Option<Self> {
        match name {
            SESSION_START => Some(Self::Start),
            SESSION_END => Some(Self::End),
            _ => None,
        }
    }
}

/// The window functions for both bounds, to register with a session context.
pub fn session_window_functions() -> Vec<WindowUDF> {
    [SessionBound::Start, SessionBound::End]
        .into_iter()
        .map(|bound| WindowUDF::new_from_impl(SessionWindowFunction::new(bound)))
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionWindowFunction {
    bound: SessionBound,
    signature: Signature,
}

impl SessionWindowFunction {
    fn new(bound: SessionBound) -> Self {
        Self {
            bound,
            signature: Signature::new(TypeSignature::Any(2), Volatility::Immutable),
        }
    }
}

impl WindowUDFImpl for SessionWindowFunction {
    fn name(&self) -> &str {
        match self.bound {
            SessionBound::Start => SESSION_START,
            SessionBound::End => SESSION_END,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let gap = args
            .input_exprs()
            .get(1)
            .and_then(|e| e.as_ref().downcast_ref::<Literal>())
            .map(|l| l.value());
        let gap = session_gap(gap).map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Box::new(SessionEvaluator {
            bound: self.bound,
            gap,
        }))
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let time = args.get_input_field(0).map(|f| f.data_type().clone());
        match time {
            Some(t @ DataType::Timestamp(..)) => Ok(Arc::new(Field::new(args.name(), t, true))),
            other => plan_err!(
                "{}: the time column must be of a timestamp type, got {}",
                self.name(),
                other.map_or("nothing".into(), |t| t.to_string())
            ),
        }
    }
}

#[derive(Debug)]
struct SessionEvaluator {
    bound: SessionBound,
    gap: i64,
}

impl PartitionEvaluator for SessionEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let Some(time) = values.first() else {
            return exec_err!("session window functions take (time, gap_nanoseconds)");
        };
        let gap = self.gap;
        let nanos = time_nanos(time)?;
        let order = sort_to_indices(
            &nanos,
            Some(SortOptions {
                descending: false,
                nulls_first: false,
            }),
            None,
        )?;
        let mut out: Vec<Option<i64>> = vec![None; num_rows];
        // Walk rows in time order, closing a run whenever the gap is reached.
        let mut run: Vec<usize> = Vec::new();
        let flush = |run: &mut Vec<usize>, out: &mut Vec<Option<i64>>| {
            if let (Some(&first), Some(&last)) = (run.first(), run.last()) {
                let value = match self.bound {
                    SessionBound::Start => nanos.value(first),
                    SessionBound::End => nanos.value(last).saturating_add(gap),
                };
                for &i in run.iter() {
                    out[i] = Some(value);
                }
            }
            run.clear();
        };
        for i in order.values().iter().map(|&i| i as usize) {
            if nanos.is_null(i) {
                break;
            }
            if let Some(&prev) = run.last()
                && !same_session(nanos.value(prev), nanos.value(i), gap)
            {
                flush(&mut run, &mut out);
            }
            run.push(i);
        }
        flush(&mut run, &mut out);
        nanos_to_time(Int64Array::from(out), time.data_type())
    }
}
