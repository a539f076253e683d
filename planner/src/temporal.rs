//! Temporal filters: `WHERE ts > NOW() - INTERVAL '1 hour'` in a
//! materialized view keeps the rows that satisfy the condition *as time
//! goes on*: a row leaves the view when it gets too old, and a row dated
//! in the future (`ts <= NOW()`) enters it when its time comes.
//!
//! A batch query folds `NOW()` to the statement's start time. A view's
//! query instead has its `NOW()` calls replaced by [`ProcessingTime`]
//! before optimization ([`defer_now`]), which nothing folds. When lowered,
//! each conjunct of a filter comparing an expression of the row with
//! `NOW() [± c]` becomes a [`TemporalBound`]: the condition rewritten as
//! `NOW() op bound(row)`. The runtime evaluates the bounds against each
//! barrier's time. `NOW()` anywhere else in a view is rejected.

use std::sync::Arc;
use std::time::SystemTime;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{
    BinaryExpr, Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::error::{PlanError, Result};
use crate::time::system_time_nanos;

/// `NOW()` in a view's query: the time of the barrier the runtime is at,
/// not a constant. Volatile, so the optimizer neither folds nor moves it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ProcessingTime {
    signature: Signature,
}

impl Default for ProcessingTime {
    fn default() -> Self {
        Self {
            signature: Signature::nullary(Volatility::Volatile),
        }
    }
}

/// What `NOW()` returns (DataFusion's, without a session time zone).
const NOW_TYPE: DataType = DataType::Timestamp(TimeUnit::Nanosecond, None);

impl ScalarUDFImpl for ProcessingTime {
    fn name(&self) -> &str {
        "now"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(NOW_TYPE)
    }

    /// Only a plan that was not lowered evaluates it (an `EXPLAIN` of the
    /// logical plan, say): the wall clock.
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(
            Some(system_time_nanos(SystemTime::now())),
            None,
        )))
    }
}

fn is_processing_time(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(f) if f.func.inner().is::<ProcessingTime>())
}

fn mentions_now(expr: &Expr) -> bool {
    expr.exists(|e| Ok(is_processing_time(e))).unwrap_or(true)
}

/// Functions of the current time other than `NOW()`: DataFusion folds
/// them to the statement's time, which a view would keep forever.
const CLOCK_FUNCTIONS: &[&str] = &["current_date", "current_time", "today"];

/// Replaces every `NOW()` (and `CURRENT_TIMESTAMP`) of a view's bound but
/// unoptimized query by [`ProcessingTime`]; rejects the other clock
/// functions.
pub fn defer_now(plan: LogicalPlan) -> Result<LogicalPlan> {
    let mut clock = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && CLOCK_FUNCTIONS.contains(&f.func.name())
                {
                    clock = Some(f.func.name().to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    if let Some(name) = clock {
        return Err(PlanError::Unsupported(format!(
            "{name}() in a materialized view (it would stay the time the view was \
             created); compare with NOW() instead, e.g. ts > NOW() - INTERVAL '1 day'"
        )));
    }
    let now = Arc::new(ScalarUDF::from(ProcessingTime::default()));
    let rewritten = plan.transform_up_with_subqueries(|node| {
        node.map_expressions(|e| {
            e.transform_up(|e| match &e {
                Expr::ScalarFunction(f) if f.func.name() == "now" && f.args.is_empty() => {
                    Ok(Transformed::yes(Expr::ScalarFunction(
                        ScalarFunction::new_udf(now.clone(), vec![]),
                    )))
                }
                _ => Ok(Transformed::no(e)),
            })
        })
    })?;
    Ok(rewritten.data)
}

/// How a row's bound compares with the barrier's time `now` (nanoseconds
/// since the Unix epoch, UTC) for the row to be in the view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NowIs {
    /// `now < bound`: the row leaves when `now` reaches it.
    Before,
    /// `now <= bound`.
    AtOrBefore,
    /// `now > bound`: the row enters once `now` passes it.
    After,
    /// `now >= bound`.
    AtOrAfter,
}

impl NowIs {
    fn from_operator(op: Operator) -> Option<Self> {
        Some(match op {
            Operator::Lt => Self::Before,
            Operator::LtEq => Self::AtOrBefore,
            Operator::Gt => Self::After,
            Operator::GtEq => Self::AtOrAfter,
            _ => return None,
        })
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Before => "<",
            Self::AtOrBefore => "<=",
            Self::After => ">",
            Self::AtOrAfter => ">=",
        }
    }
}

/// One conjunct of a temporal filter: `NOW() <is> bound`, where `bound`
/// is an expression of the row giving nanoseconds since the Unix epoch
/// (`Int64`; NULL: the condition is never true).
#[derive(Debug, Clone, PartialEq)]
pub struct TemporalBound {
    /// How `NOW()` compares with the bound.
    pub is: NowIs,
    /// The row's bound.
    pub bound: Expr,
}

impl TemporalBound {
    /// The bound as written, without the casts to nanoseconds.
    fn written(&self) -> &Expr {
        match &self.bound {
            Expr::Cast(outer) => match outer.expr.as_ref() {
                Expr::Cast(inner) => &inner.expr,
                _ => &self.bound,
            },
            _ => &self.bound,
        }
    }
}

impl std::fmt::Display for TemporalBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "now() {} {}", self.is.symbol(), self.written())
    }
}

const MISPLACED: &str = "NOW() in a materialized view must be in a WHERE condition \
    comparing a timestamp of the row with NOW() [+|- interval], joined by AND \
    (a temporal filter)";

/// Splits a filter's predicate into its temporal bounds and the rest.
pub(crate) fn split_temporal(predicate: &Expr) -> Result<(Vec<TemporalBound>, Option<Expr>)> {
    let mut bounds = Vec::new();
    let mut rest = Vec::new();
    for conjunct in split_conjunction(predicate) {
        if mentions_now(conjunct) {
            bounds.push(temporal_bound(conjunct)?);
        } else {
            rest.push(conjunct.clone());
        }
    }
    Ok((bounds, conjunction(rest)))
}

/// `a op b` with `NOW() [± c]` on one side, as `NOW() is bound`.
fn temporal_bound(conjunct: &Expr) -> Result<TemporalBound> {
    let misplaced = || PlanError::Unsupported(format!("{MISPLACED}: {conjunct}"));
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
        return Err(misplaced());
    };
    // Put NOW() on the left: `x < NOW()` is `NOW() > x`.
    let (now_side, row_side, op) = match (mentions_now(left), mentions_now(right)) {
        (true, false) => (left.as_ref(), right.as_ref(), *op),
        (false, true) => (
            right.as_ref(),
            left.as_ref(),
            op.swap().ok_or_else(misplaced)?,
        ),
        _ => return Err(misplaced()),
    };
    let is = NowIs::from_operator(op).ok_or_else(misplaced)?;
    // `NOW() + c op x` is `NOW() op x - c`.
    let mut bound = row_side.clone();
    let mut now = strip_timestamp_casts(now_side);
    while !is_processing_time(now) {
        match now {
            Expr::BinaryExpr(BinaryExpr { left, op, right })
                if matches!(op, Operator::Plus | Operator::Minus) && !mentions_now(right) =>
            {
                let inverse = if *op == Operator::Plus {
                    Operator::Minus
                } else {
                    Operator::Plus
                };
                bound = Expr::BinaryExpr(BinaryExpr::new(Box::new(bound), inverse, right.clone()));
                now = strip_timestamp_casts(left);
            }
            _ => return Err(misplaced()),
        }
    }
    // Nanoseconds since the epoch, whatever the timestamp's unit.
    let nanos = Expr::Cast(Cast::new(
        Box::new(Expr::Cast(Cast::new(Box::new(bound), NOW_TYPE))),
        DataType::Int64,
    ));
    Ok(TemporalBound { is, bound: nanos })
}

/// Casts to a timestamp, duration or interval type lose nothing of
/// `NOW() [± c]` or `NOW() - ts` (a cast to a date would: it is not
/// stripped, and the conjunct is rejected).
fn strip_timestamp_casts(expr: &Expr) -> &Expr {
    let exact = |t: &DataType| {
        matches!(
            t,
            DataType::Timestamp(..) | DataType::Duration(_) | DataType::Interval(_)
        )
    };
    match expr {
        Expr::Cast(c) if exact(c.field.data_type()) => strip_timestamp_casts(&c.expr),
        Expr::TryCast(c) if exact(c.field.data_type()) => strip_timestamp_casts(&c.expr),
        other => other,
    }
}

/// Rejects `NOW()` anywhere but in a filter's conjuncts (which
/// [`split_temporal`] checks when lowering).
pub(crate) fn check_now_placement(plan: &LogicalPlan) -> Result<()> {
    let mut misplaced = None;
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Filter(_)) {
            return Ok(TreeNodeRecursion::Continue);
        }
        node.apply_expressions(|e| {
            if mentions_now(e) {
                misplaced = Some(e.to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })
    })?;
    match misplaced {
        Some(e) => Err(PlanError::Unsupported(format!("{MISPLACED}: {e}"))),
        None => Ok(()),
    }
}

/// A bound must be a point in time: a timestamp or a date.
pub(crate) fn check_bound_types(
    bounds: &[TemporalBound],
    schema: &datafusion::common::DFSchema,
) -> Result<()> {
    for b in bounds {
        let data_type = b.written().get_type(schema)?;
        if !matches!(
            data_type,
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
        ) {
            return Err(PlanError::Unsupported(format!(
                "{MISPLACED}: {} is {data_type}, not a timestamp",
                b.written()
            )));
        }
    }
    Ok(())
}
