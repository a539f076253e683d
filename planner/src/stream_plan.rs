//! The stream plan: what an incremental pipeline computes.
//!
//! A [`StreamNode`] tree mirrors the DataFusion `LogicalPlan` it was lowered
//! from, keeping only what the runtime needs: expressions stay DataFusion
//! `Expr`s (the executor turns them into `PhysicalExpr`s evaluated over
//! whole batches), and every node keeps its output schema.
//!
//! Every stream is a changelog of inserts and deletes with bag semantics: a
//! delete retracts one copy of an identical row. Stateful operators key their
//! state by value, so no node needs a declared stream key.

use std::fmt;

use datafusion::common::{DFSchemaRef, JoinType, NullEquality};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Distinct, Expr, LogicalPlan, SortExpr};

use crate::error::{PlanError, Result};
use crate::session::{SessionBound, session_gap};
use crate::temporal::{TemporalBound, check_bound_types, check_now_placement, split_temporal};

/// Aggregate functions the runtime maintains under inserts and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    /// `count(x)` (and `count(*)`, which DataFusion plans as `count(1)`).
    Count,
    /// `sum(x)`.
    Sum,
    /// `avg(x)`.
    Avg,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `bool_and(x)`.
    BoolAnd,
    /// `bool_or(x)`.
    BoolOr,
    /// `string_agg(x, delimiter)`; values are concatenated in ascending
    /// (or, with `ORDER BY x DESC`, descending) order of `x`.
    StringAgg,
}

/// One aggregate call of an [`StreamNode::Aggregate`].
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateCall {
    /// Which function.
    pub kind: AggregateKind,
    /// The aggregated expression.
    pub arg: Expr,
    /// `DISTINCT`: each value counts once.
    pub distinct: bool,
    /// `FILTER (WHERE ...)`.
    pub filter: Option<Expr>,
    /// `string_agg`'s delimiter (a constant).
    pub delimiter: Option<Expr>,
    /// `string_agg ... ORDER BY x DESC`.
    pub descending: bool,
}

/// Join kinds the runtime maintains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Inner join.
    Inner,
    /// Left outer join.
    Left,
    /// Right outer join.
    Right,
    /// Full outer join.
    Full,
    /// Left rows with at least one match (`IN` / `EXISTS`).
    LeftSemi,
    /// Left rows without a match (`NOT EXISTS`).
    LeftAnti,
    /// Right rows with at least one match.
    RightSemi,
    /// Right rows without a match.
    RightAnti,
}

impl JoinKind {
    /// Whether unmatched left rows appear in the output, padded with NULLs.
    pub fn pads_left(self) -> bool {
        matches!(self, Self::Left | Self::Full)
    }
    /// Whether unmatched right rows appear in the output, padded with NULLs.
    pub fn pads_right(self) -> bool {
        matches!(self, Self::Right | Self::Full)
    }
}

/// A node of the stream plan.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamNode {
    /// The changelog of a table or materialized view.
    Source {
        /// Relation name.
        relation: String,
        /// Output schema.
        schema: DFSchemaRef,
    },
    /// Constant rows, emitted once.
    Values {
        /// Rows of constant expressions.
        rows: Vec<Vec<Expr>>,
        /// Output schema.
        schema: DFSchemaRef,
    },
    /// Computes `exprs` for every row.
    Project {
        /// Input.
        input: Box<StreamNode>,
        /// One expression per output column.
        exprs: Vec<Expr>,
        /// Output schema.
        schema: DFSchemaRef,
    },
    /// Keeps rows where `predicate` is true.
    Filter {
        /// Input.
        input: Box<StreamNode>,
        /// Predicate.
        predicate: Expr,
    },
    /// Keeps rows while every bound holds at the barrier's time, emitting
    /// a row when it starts to hold and retracting it when it stops (see
    /// [`crate::temporal`]).
    TemporalFilter {
        /// Input.
        input: Box<StreamNode>,
        /// Conditions on `NOW()`, all of which must hold.
        bounds: Vec<TemporalBound>,
    },
    /// Grouped (or global, when `group` is empty) aggregation.
    Aggregate {
        /// Input.
        input: Box<StreamNode>,
        /// Group-by expressions.
        group: Vec<Expr>,
        /// Aggregate calls.
        calls: Vec<AggregateCall>,
        /// Output schema: group columns, then one column per call.
        schema: DFSchemaRef,
    },
    /// Equi-join (possibly with no keys: a cross join) with a residual filter.
    Join {
        /// Left input.
        left: Box<StreamNode>,
        /// Right input.
        right: Box<StreamNode>,
        /// Key pairs, left expression then right expression.
        on: Vec<(Expr, Expr)>,
        /// Residual condition over the joined row.
        filter: Option<Expr>,
        /// Join kind.
        kind: JoinKind,
        /// Whether NULL keys match each other (`IS NOT DISTINCT FROM`).
        nulls_equal: bool,
        /// Output schema.
        schema: DFSchemaRef,
    },
    /// `UNION ALL`.
    Union {
        /// Inputs, all of the output schema's types.
        inputs: Vec<StreamNode>,
        /// Output schema.
        schema: DFSchemaRef,
    },
    /// `ROW_NUMBER() OVER (PARTITION BY .. ORDER BY ..)`: the input's columns
    /// plus the row number; with `limit`, only rows numbered up to it (top-N).
    /// Ties in the order are broken by the whole row, so the result is
    /// deterministic.
    TopN {
        /// Input.
        input: Box<StreamNode>,
        /// Partitioning expressions.
        partition_by: Vec<Expr>,
        /// Ordering within a partition.
        order_by: Vec<SortExpr>,
        /// Highest row number kept.
        limit: Option<usize>,
        /// Output schema: input columns, then the row number.
        schema: DFSchemaRef,
    },
    /// Window functions sharing one PARTITION BY and ORDER BY: the input's
    /// columns plus one per function. Ties in the order are broken by the
    /// whole row, so the result is deterministic.
    OverWindow {
        /// Input.
        input: Box<StreamNode>,
        /// Partitioning expressions.
        partition_by: Vec<Expr>,
        /// Ordering within a partition.
        order_by: Vec<SortExpr>,
        /// The window function calls (`Expr::WindowFunction`, maybe aliased), in
        /// output order.
        functions: Vec<Expr>,
        /// Output schema: input columns, then one per function.
        schema: DFSchemaRef,
    },
    /// Session windows: the input's columns plus, per entry of `bounds`, the
    /// start or end of the row's session (see [`crate::session`]).
    SessionWindow {
        /// Input.
        input: Box<StreamNode>,
        /// Partitioning expressions: sessions are per partition.
        partition_by: Vec<Expr>,
        /// The time column.
        time: Expr,
        /// Session gap in nanoseconds (positive).
        gap: i64,
        /// The session bounds appended, in order.
        bounds: Vec<SessionBound>,
        /// Output schema.
        schema: DFSchemaRef,
    },
}

impl StreamNode {
    /// Output schema of this node.
    pub fn schema(&self) -> &DFSchemaRef {
        match self {
            Self::Source { schema, .. }
            | Self::Values { schema, .. }
            | Self::Project { schema, .. }
            | Self::Aggregate { schema, .. }
            | Self::Join { schema, .. }
            | Self::Union { schema, .. }
            | Self::TopN { schema, .. }
            | Self::OverWindow { schema, .. }
            | Self::SessionWindow { schema, .. } => schema,
            Self::Filter { input, .. } | Self::TemporalFilter { input, .. } => input.schema(),
        }
    }

    /// Names of the relations this plan reads.
    pub fn sources(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.visit_sources(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn visit_sources(&self, out: &mut Vec<String>) {
        match self {
            Self::Source { relation, .. } => out.push(relation.clone()),
            _ => self.inputs().into_iter().for_each(|i| i.visit_sources(out)),
        }
    }

    /// The nodes this one reads, in order.
    pub fn inputs(&self) -> Vec<&StreamNode> {
        match self {
            Self::Source { .. } | Self::Values { .. } => vec![],
            Self::Project { input, .. }
            | Self::Filter { input, .. }
            | Self::TemporalFilter { input, .. }
            | Self::TopN { input, .. }
            | Self::OverWindow { input, .. }
            | Self::SessionWindow { input, .. }
            | Self::Aggregate { input, .. } => vec![input],
            Self::Join { left, right, .. } => vec![left, right],
            Self::Union { inputs, .. } => inputs.iter().collect(),
        }
    }

    /// Whether this node itself keeps state between rows.
    pub fn is_stateful(&self) -> bool {
        !matches!(
            self,
            Self::Source { .. }
                | Self::Values { .. }
                | Self::Project { .. }
                | Self::Filter { .. }
                | Self::Union { .. }
        )
    }

    /// Writes the plan under this node; a use of a subplan computed
    /// earlier (one of `repeats`) as a line of its own.
    fn fmt_indent(
        &self,
        f: &mut fmt::Formatter<'_>,
        depth: usize,
        repeats: &[&StreamNode],
    ) -> fmt::Result {
        let pad = "  ".repeat(depth);
        if repeats.iter().any(|r| std::ptr::eq(*r, self)) {
            return writeln!(
                f,
                "{pad}StreamShared: the rows of an equal subplan above, computed once"
            );
        }
        let list = |es: &[Expr]| {
            es.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Self::Source { relation, .. } => writeln!(f, "{pad}StreamScan: {relation}"),
            Self::Values { rows, .. } => writeln!(f, "{pad}StreamValues: {} rows", rows.len()),
            Self::Project { input, exprs, .. } => {
                writeln!(f, "{pad}StreamProject: {}", list(exprs))?;
                input.fmt_indent(f, depth + 1, repeats)
            }
            Self::Filter { input, predicate } => {
                writeln!(f, "{pad}StreamFilter: {predicate}")?;
                input.fmt_indent(f, depth + 1, repeats)
            }
            Self::TemporalFilter { input, bounds } => {
                let bounds: Vec<String> = bounds.iter().map(|b| b.to_string()).collect();
                writeln!(f, "{pad}StreamTemporalFilter: {}", bounds.join(" AND "))?;
                input.fmt_indent(f, depth + 1, repeats)
            }
            Self::Aggregate {
                input,
                group,
                calls,
                ..
            } => {
                let calls = calls
                    .iter()
                    .map(|c| {
                        format!(
                            "{:?}({}{})",
                            c.kind,
                            if c.distinct { "DISTINCT " } else { "" },
                            c.arg
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                writeln!(
                    f,
                    "{pad}StreamHashAggregate: group=[{}], aggs=[{calls}]",
                    list(group)
                )?;
                input.fmt_indent(f, depth + 1, repeats)
            }
            Self::Join {
                left,
                right,
                on,
                filter,
                kind,
                ..
            } => {
                let on = on
                    .iter()
                    .map(|(l, r)| format!("{l} = {r}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(f, "{pad}StreamHashJoin: {kind:?}, on=[{on}]")?;
                if let Some(filter) = filter {
                    write!(f, ", filter={filter}")?;
                }
                writeln!(f)?;
                left.fmt_indent(f, depth + 1, repeats)?;
                right.fmt_indent(f, depth + 1, repeats)
            }
            Self::Union { inputs, .. } => {
                writeln!(f, "{pad}StreamUnionAll")?;
                inputs
                    .iter()
                    .try_for_each(|i| i.fmt_indent(f, depth + 1, repeats))
            }
            Self::TopN {
                input,
                partition_by,
                order_by,
                limit,
                ..
            } => {
                let order = order_by
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let limit = limit.map_or("all".to_string(), |n| n.to_string());
                writeln!(
                    f,
                    "{pad}StreamTopN: partition=[{}], order=[{order}], limit={limit}",
                    list(partition_by)
                )?;
                input.fmt_indent(f, depth + 1, repeats)
            }
            Self::OverWindow {
                input,
                partition_by,
                order_by,
                functions,
                ..
            } => {
                writeln!(
                    f,
                    "{pad}StreamOverWindow: partition=[{}], order=[{}], functions=[{}]",
                    list(partition_by),
                    order_by
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    list(functions)
                )?;
                input.fmt_indent(f, depth + 1, repeats)
            }
            Self::SessionWindow {
                input,
                partition_by,
                time,
                gap,
                ..
            } => {
                writeln!(
                    f,
                    "{pad}StreamSessionWindow: partition=[{}], time={time}, gap={gap}ns",
                    list(partition_by)
                )?;
                input.fmt_indent(f, depth + 1, repeats)
            }
        }
    }
}

impl fmt::Display for StreamNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let repeats: Vec<&StreamNode> = crate::shared_subplans(self)
            .into_iter()
            .map(|s| s.node)
            .collect();
        self.fmt_indent(f, 0, &repeats)
    }
}

fn unsupported<T>(what: impl Into<String>) -> Result<T> {
    Err(PlanError::Unsupported(what.into()))
}

/// Lowers an optimized DataFusion plan into a stream plan.
pub fn lower(plan: &LogicalPlan) -> Result<StreamNode> {
    check_now_placement(plan)?;
    lower_node(plan)
}

fn lower_node(plan: &LogicalPlan) -> Result<StreamNode> {
    Ok(match plan {
        LogicalPlan::TableScan(scan) => {
            if scan.fetch.is_some() || !scan.filters.is_empty() {
                return unsupported(
                    "a table scan with pushed-down limit or filters in a materialized view",
                );
            }
            let relation = scan.table_name.table().to_string();
            let full = StreamNode::Source {
                relation,
                schema: std::sync::Arc::new(
                    datafusion::common::DFSchema::try_from_qualified_schema(
                        scan.table_name.clone(),
                        &scan.source.schema(),
                    )?,
                ),
            };
            match &scan.projection {
                None => full,
                Some(indices) => {
                    let full_schema = full.schema().clone();
                    let exprs = indices
                        .iter()
                        .map(|&i| {
                            let (q, f) = full_schema.qualified_field(i);
                            Expr::Column(datafusion::common::Column::from((q, f)))
                        })
                        .collect();
                    StreamNode::Project {
                        input: Box::new(full),
                        exprs,
                        schema: scan.projected_schema.clone(),
                    }
                }
            }
        }
        LogicalPlan::Projection(p) => StreamNode::Project {
            input: Box::new(lower_node(&p.input)?),
            exprs: p.expr.clone(),
            schema: p.schema.clone(),
        },
        LogicalPlan::Filter(f) => {
            let (bounds, rest) = split_temporal(&f.predicate)?;
            check_bound_types(&bounds, f.input.schema())?;
            let input = match rest.as_ref().and_then(row_number_limit) {
                Some((column, limit)) => lower_limited(&f.input, &column, limit)?,
                None => lower_node(&f.input)?,
            };
            // The plain conditions first: fewer rows for the temporal filter to keep.
            let filtered = match rest {
                Some(predicate) => StreamNode::Filter {
                    input: Box::new(input),
                    predicate,
                },
                None => input,
            };
            if bounds.is_empty() {
                filtered
            } else {
                StreamNode::TemporalFilter {
                    input: Box::new(filtered),
                    bounds,
                }
            }
        }
        LogicalPlan::Window(w) if is_session_window(w) => lower_session(w)?,
        LogicalPlan::Window(w) if is_row_number(w) => lower_row_number(w, None)?,
        LogicalPlan::Window(w) => lower_over_window(w)?,
        LogicalPlan::SubqueryAlias(a) => {
            // Same columns, new qualifier: a projection keeps the schema honest.
            let input = lower_node(&a.input)?;
            let exprs = input
                .schema()
                .iter()
                .map(|(q, f)| Expr::Column(datafusion::common::Column::from((q, f))))
                .collect();
            StreamNode::Project {
                input: Box::new(input),
                exprs,
                schema: a.schema.clone(),
            }
        }
        LogicalPlan::Sort(s) if s.fetch.is_some() => {
            // ORDER BY ... LIMIT n: one partition's top n, row number dropped.
            let input = lower_node(&s.input)?;
            let columns: Vec<Expr> = input
                .schema()
                .iter()
                .map(|(q, f)| Expr::Column(datafusion::common::Column::from((q, f))))
                .collect();
            let schema = s.input.schema().clone();
            let top = top_n(input, vec![], s.expr.clone(), s.fetch)?;
            StreamNode::Project {
                input: Box::new(top),
                exprs: columns,
                schema,
            }
        }
        LogicalPlan::Sort(s) => {
            if s.fetch.is_some() {
                return unsupported("ORDER BY ... LIMIT (top-N) in a materialized view");
            }
            // A materialized view is a set; ORDER BY belongs to the query that reads it.
            lower_node(&s.input)?
        }
        LogicalPlan::Limit(_) => return unsupported("LIMIT / OFFSET in a materialized view"),
        LogicalPlan::Aggregate(a) => {
            if a.group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_)))
            {
                return unsupported("GROUPING SETS / ROLLUP / CUBE in a materialized view");
            }
            let calls = a
                .aggr_expr
                .iter()
                .map(aggregate_call)
                .collect::<Result<_>>()?;
            StreamNode::Aggregate {
                input: Box::new(lower_node(&a.input)?),
                group: a.group_expr.clone(),
                calls,
                schema: a.schema.clone(),
            }
        }
        LogicalPlan::Distinct(Distinct::All(input)) => {
            let group = input
                .schema()
                .iter()
                .map(|(q, f)| Expr::Column(datafusion::common::Column::from((q, f))))
                .collect();
            StreamNode::Aggregate {
                input: Box::new(lower_node(input)?),
                group,
                calls: vec![],
                schema: input.schema().clone(),
            }
        }
        LogicalPlan::Join(j) => {
            if j.null_aware {
                return unsupported(
                    "NOT IN with a subquery in a materialized view (use NOT EXISTS)",
                );
            }
            let kind = match j.join_type {
                JoinType::Inner => JoinKind::Inner,
                JoinType::Left => JoinKind::Left,
                JoinType::Right => JoinKind::Right,
                JoinType::Full => JoinKind::Full,
                JoinType::LeftSemi => JoinKind::LeftSemi,
                JoinType::LeftAnti => JoinKind::LeftAnti,
                JoinType::RightSemi => JoinKind::RightSemi,
                JoinType::RightAnti => JoinKind::RightAnti,
                other => return unsupported(format!("{other} join in a materialized view")),
            };
            StreamNode::Join {
                left: Box::new(lower_node(&j.left)?),
                right: Box::new(lower_node(&j.right)?),
                on: j.on.clone(),
                filter: j.filter.clone(),
                kind,
                nulls_equal: j.null_equality == NullEquality::NullEqualsNull,
                schema: j.schema.clone(),
            }
        }
        LogicalPlan::Union(u) => StreamNode::Union {
            inputs: u
                .inputs
                .iter()
                .map(|i| lower_node(i))
                .collect::<Result<_>>()?,
            schema: u.schema.clone(),
        },
        LogicalPlan::Values(v) => StreamNode::Values {
            rows: v.values.clone(),
            schema: v.schema.clone(),
        },
        LogicalPlan::EmptyRelation(e) => StreamNode::Values {
            rows: if e.produce_one_row {
                vec![vec![]]
            } else {
                vec![]
            },
            schema: e.schema.clone(),
        },
        other => {
            let name = other.display().to_string();
            let name = name
                .split(':')
                .next()
                .unwrap_or("this construct")
                .to_string();
            return unsupported(format!("{name} in a materialized view"));
        }
    })
}

/// `rn <= n`, `rn < n` or `rn = 1` on a column: (column name, highest rn kept).
fn row_number_limit(predicate: &Expr) -> Option<(String, usize)> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = predicate else {
        return None;
    };
    let (Expr::Column(c), Expr::Literal(value, _)) = (left.as_ref(), right.as_ref()) else {
        return None;
    };
    let n = value
        .cast_to(&datafusion::arrow::datatypes::DataType::Int64)
        .ok()?;
    let datafusion::common::ScalarValue::Int64(Some(n)) = n else {
        return None;
    };
    let limit = match op {
        Operator::LtEq => n,
        Operator::Lt => n - 1,
        Operator::Eq if n == 1 => 1,
        _ => return None,
    };
    (limit >= 0).then(|| (c.name.clone(), limit as usize))
}

/// Lowers `plan`, giving the row-number window that produces `column` (seen
/// through projections and aliases that keep it) the limit `limit`.
fn lower_limited(plan: &LogicalPlan, column: &str, limit: usize) -> Result<StreamNode> {
    match plan {
        LogicalPlan::Window(w)
            if is_row_number(w) && w.schema.fields().last().is_some_and(|f| f.name() == column) =>
        {
            lower_row_number(w, Some(limit))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let mut node = lower_node(plan)?;
            if let StreamNode::Project { input, .. } = &mut node {
                **input = lower_limited(&a.input, column, limit)?;
            }
            Ok(node)
        }
        LogicalPlan::Projection(p) => {
            let passes = p.expr.iter().find_map(|e| match e {
                Expr::Column(c) if c.name == column => Some(c.name.clone()),
                Expr::Alias(a) if a.name == column => match a.expr.as_ref() {
                    Expr::Column(c) => Some(c.name.clone()),
                    _ => None,
                },
                _ => None,
            });
            let input = match passes {
                Some(inner) => lower_limited(&p.input, &inner, limit)?,
                None => lower_node(&p.input)?,
            };
            Ok(StreamNode::Project {
                input: Box::new(input),
                exprs: p.expr.clone(),
                schema: p.schema.clone(),
            })
        }
        other => lower_node(other),
    }
}

/// The session window functions of a window node, if it has only those.
fn session_functions(
    w: &datafusion::logical_expr::Window,
) -> Option<
    Vec<(
        SessionBound,
        &datafusion::logical_expr::expr::WindowFunction,
    )>,
> {
    w.window_expr
        .iter()
        .map(|e| {
            let e = match e {
                Expr::Alias(a) => a.expr.as_ref(),
                e => e,
            };
            match e {
                Expr::WindowFunction(f) => {
                    SessionBound::of_function(f.fun.name()).map(|b| (b, f.as_ref()))
                }
                _ => None,
            }
        })
        .collect()
}

fn is_session_window(w: &datafusion::logical_expr::Window) -> bool {
    session_functions(w).is_some()
}

fn lower_session(w: &datafusion::logical_expr::Window) -> Result<StreamNode> {
    let functions = session_functions(w).unwrap_or_default();
    let mut shape = None;
    let mut bounds = Vec::with_capacity(functions.len());
    for (bound, f) in functions {
        let params = &f.params;
        let (time, gap) = match params.args.as_slice() {
            [time, gap] => {
                let gap = match gap {
                    Expr::Literal(value, _) => Some(value),
                    _ => None,
                };
                (time.clone(), session_gap(gap)?)
            }
            _ => return unsupported("session window functions take (time, gap)"),
        };
        if !params.order_by.is_empty() || params.filter.is_some() {
            return unsupported("ORDER BY or FILTER on a session window function");
        }
        let this = (params.partition_by.clone(), time, gap);
        match &shape {
            None => shape = Some(this),
            Some(s) if *s == this => {}
            Some(_) => {
                return unsupported(
                    "session windows of different partitions, times or gaps in one query",
                );
            }
        }
        bounds.push(bound);
    }
    let Some((partition_by, time, gap)) = shape else {
        return Err(PlanError::Internal(
            "a session window without functions".into(),
        ));
    };
    Ok(StreamNode::SessionWindow {
        input: Box::new(lower_node(&w.input)?),
        partition_by,
        time,
        gap,
        bounds,
        schema: w.schema.clone(),
    })
}

/// The window function calls of `w`, aliases removed.
fn window_functions(
    w: &datafusion::logical_expr::Window,
) -> Vec<Option<&datafusion::logical_expr::expr::WindowFunction>> {
    w.window_expr
        .iter()
        .map(|e| match e {
            Expr::Alias(a) => a.expr.as_ref(),
            e => e,
        })
        .map(|e| match e {
            Expr::WindowFunction(f) => Some(f.as_ref()),
            _ => None,
        })
        .collect()
}

/// Whether `w` is one plain `ROW_NUMBER()` (a top-N, maybe cut at N).
fn is_row_number(w: &datafusion::logical_expr::Window) -> bool {
    matches!(window_functions(w).as_slice(), [Some(f)]
        if f.fun.name() == "row_number" && f.params.args.is_empty() && f.params.filter.is_none())
}

/// Window functions of one partitioning and order, maintained by
/// recomputing the partitions a change touches.
fn lower_over_window(w: &datafusion::logical_expr::Window) -> Result<StreamNode> {
    let mut shape: Option<(&Vec<Expr>, &Vec<SortExpr>)> = None;
    for f in window_functions(w) {
        let Some(f) = f else {
            return unsupported("a window expression that is not a window function call");
        };
        if f.params.filter.is_some() {
            return unsupported("FILTER on a window function in a materialized view");
        }
        let this = (&f.params.partition_by, &f.params.order_by);
        match shape {
            None => shape = Some(this),
            Some(s) if s == this => {}
            Some(_) => {
                return unsupported(
                    "window functions of different PARTITION BY or ORDER BY in one query level",
                );
            }
        }
    }
    let Some((partition_by, order_by)) = shape else {
        return Err(PlanError::Internal(
            "a window node without functions".into(),
        ));
    };
    Ok(StreamNode::OverWindow {
        input: Box::new(lower_node(&w.input)?),
        partition_by: partition_by.clone(),
        order_by: order_by.clone(),
        functions: w.window_expr.clone(),
        schema: w.schema.clone(),
    })
}

/// Lowers a window node [`is_row_number`] accepts to a top-N.
fn lower_row_number(
    w: &datafusion::logical_expr::Window,
    limit: Option<usize>,
) -> Result<StreamNode> {
    let functions = window_functions(w);
    let [Some(f)] = functions.as_slice() else {
        return Err(PlanError::Internal(
            "a row number node of several functions".into(),
        ));
    };
    let (partition_by, order_by) = (&f.params.partition_by, &f.params.order_by);
    let input = lower_node(&w.input)?;
    let node = top_n(input, partition_by.clone(), order_by.clone(), limit)?;
    match node {
        StreamNode::TopN {
            input,
            partition_by,
            order_by,
            limit,
            ..
        } => Ok(StreamNode::TopN {
            input,
            partition_by,
            order_by,
            limit,
            schema: w.schema.clone(),
        }),
        other => Ok(other),
    }
}

/// A top-N node over `input` with a `row_number` column appended.
fn top_n(
    input: StreamNode,
    partition_by: Vec<Expr>,
    order_by: Vec<SortExpr>,
    limit: Option<usize>,
) -> Result<StreamNode> {
    use datafusion::arrow::datatypes::{DataType, Field};
    let mut fields: Vec<(
        Option<datafusion::common::TableReference>,
        std::sync::Arc<Field>,
    )> = input
        .schema()
        .iter()
        .map(|(q, f)| (q.cloned(), f.clone()))
        .collect();
    fields.push((
        None,
        std::sync::Arc::new(Field::new("row_number", DataType::UInt64, false)),
    ));
    let schema = std::sync::Arc::new(datafusion::common::DFSchema::new_with_metadata(
        fields,
        Default::default(),
    )?);
    Ok(StreamNode::TopN {
        input: Box::new(input),
        partition_by,
        order_by,
        limit,
        schema,
    })
}

fn aggregate_call(expr: &Expr) -> Result<AggregateCall> {
    let expr = match expr {
        Expr::Alias(a) => a.expr.as_ref(),
        e => e,
    };
    let Expr::AggregateFunction(AggregateFunction { func, params }) = expr else {
        return unsupported(format!("aggregate expression {expr}"));
    };
    let kind = match func.name() {
        "count" => AggregateKind::Count,
        "sum" => AggregateKind::Sum,
        "avg" | "mean" => AggregateKind::Avg,
        "min" => AggregateKind::Min,
        "max" => AggregateKind::Max,
        "bool_and" => AggregateKind::BoolAnd,
        "bool_or" => AggregateKind::BoolOr,
        "string_agg" => AggregateKind::StringAgg,
        other => return unsupported(format!("aggregate function {other} in a materialized view")),
    };
    let (arg, delimiter) = match (kind, params.args.as_slice()) {
        (AggregateKind::StringAgg, [arg, delim]) => (arg.clone(), Some(delim.clone())),
        (AggregateKind::Count, []) => (datafusion::prelude::lit(1i64), None),
        (_, [arg]) => (arg.clone(), None),
        _ => {
            return unsupported(format!(
                "{} with {} arguments",
                func.name(),
                params.args.len()
            ));
        }
    };
    let descending = match params.order_by.as_slice() {
        [] => false,
        [SortExpr { expr, asc, .. }] if kind == AggregateKind::StringAgg && *expr == arg => !asc,
        _ => {
            return unsupported(format!(
                "ORDER BY inside {} (only string_agg(x, d ORDER BY x) is maintained)",
                func.name()
            ));
        }
    };
    if params.null_treatment.is_some() {
        return unsupported("IGNORE / RESPECT NULLS in a materialized view");
    }
    Ok(AggregateCall {
        kind,
        arg,
        distinct: params.distinct,
        filter: params.filter.as_deref().cloned(),
        delimiter,
        descending,
    })
}
