//! Building the operators DataFusion plans as window functions: top-N (row
//! numbers), other window functions, and session windows. Each runs one
//! instance per hash partition of its PARTITION BY (one without it).

use std::sync::Arc;

use datafusion::common::DFSchema;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, SortExpr};
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr, create_physical_sort_expr};
use datafusion::physical_planner::create_window_expr;

use eddy_planner::{SessionBound, StreamNode};

use super::{Built, PipelineBuilder, batch_schema, physical};
use crate::dispatch::Dispatch;
use crate::error::Result;
use crate::over_window::{OverWindow, WindowFunctions};
use crate::session::{SessionWindow, SessionWindowSpec};

/// What a window node computes, as the plan says it.
pub(super) enum WindowCalls<'a> {
    /// `ROW_NUMBER()` up to `limit`.
    RowNumber { limit: Option<usize> },
    /// Window function calls.
    Exprs(&'a [Expr]),
}

/// A window's PARTITION BY and ORDER BY, physical.
type Partitioning = (Vec<Arc<dyn PhysicalExpr>>, Vec<PhysicalSortExpr>);

/// The physical PARTITION BY and ORDER BY of a window over `input`.
fn partitioning(
    partition_by: &[Expr],
    order_by: &[SortExpr],
    input: &DFSchema,
) -> Result<Partitioning> {
    let partition = partition_by
        .iter()
        .map(|e| physical(e, input))
        .collect::<Result<Vec<_>>>()?;
    let order = order_by
        .iter()
        .map(|s| {
            Ok(create_physical_sort_expr(
                s,
                input,
                &ExecutionProps::new(),
                &PhysicalPlanningContext::default(),
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((partition, order))
}

impl PipelineBuilder<'_> {
    /// A window operator (a top-N with `WindowCalls::RowNumber`).
    pub(super) fn build_window(
        &mut self,
        input: &StreamNode,
        partition_by: &[Expr],
        order_by: &[SortExpr],
        calls: WindowCalls<'_>,
        schema: &DFSchema,
    ) -> Result<Built> {
        let in_schema = input.schema().clone();
        let (partition, order) = partitioning(partition_by, order_by, &in_schema)?;
        let functions = match calls {
            WindowCalls::RowNumber { limit } => WindowFunctions::RowNumber { limit },
            WindowCalls::Exprs(exprs) => WindowFunctions::Exprs(
                exprs
                    .iter()
                    .map(|f| {
                        Ok(create_window_expr(
                            f,
                            &in_schema,
                            &ExecutionProps::new(),
                            &PhysicalPlanningContext::default(),
                        )?)
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let (in_arrow, out) = (batch_schema(&in_schema), batch_schema(schema));
        let child = self.build(input)?;
        // A PARTITION BY column with a watermark closes partitions.
        let closing = partition_by.iter().find_map(|e| match e {
            Expr::Column(c) => in_schema
                .index_of_column(c)
                .ok()
                .filter(|i| child.watermarks.contains(i)),
            _ => None,
        });
        let n = self.instances_for(!partition.is_empty());
        let inputs = self.connect(child.instances, n, Dispatch::Hash(partition.clone()));
        let instances = inputs
            .into_iter()
            .map(|inputs| {
                let mut window = OverWindow::new(
                    partition.clone(),
                    order.clone(),
                    functions.clone(),
                    &in_arrow,
                    out.clone(),
                    self.evaluator.clone(),
                )?
                .with_state_config(self.options.state);
                if child.append_only {
                    window = window.over_append_only_input();
                }
                if let Some(column) = closing {
                    let late = self.late_rows(match functions {
                        WindowFunctions::RowNumber { .. } => "top-N",
                        WindowFunctions::Exprs(_) => "window function",
                    })?;
                    window = window.closed_by_watermark(column, late)?;
                }
                Ok(Self::single(inputs, Box::new(window)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Built {
            instances,
            watermarks: closing.into_iter().collect(),
            append_only: false,
        })
    }

    pub(super) fn build_session(
        &mut self,
        input: &StreamNode,
        partition_by: &[Expr],
        time: &Expr,
        gap: i64,
        bounds: &[SessionBound],
        schema: &DFSchema,
    ) -> Result<Built> {
        let in_schema = input.schema().clone();
        let partition: Vec<Arc<dyn PhysicalExpr>> = partition_by
            .iter()
            .map(|e| physical(e, &in_schema))
            .collect::<Result<_>>()?;
        let time_expr = physical(time, &in_schema)?;
        let time_column = match time {
            Expr::Column(c) => in_schema.index_of_column(c).ok(),
            _ => None,
        };
        let n = self.instances_for(!partition.is_empty());
        let child = self.build(input)?;
        let watermarked = time_column.is_some_and(|c| child.watermarks.contains(&c));
        let inputs = self.connect(child.instances, n, Dispatch::Hash(partition.clone()));
        let (in_arrow, out) = (batch_schema(&in_schema), batch_schema(schema));
        let instances = inputs
            .into_iter()
            .map(|inputs| {
                let spec = SessionWindowSpec {
                    partition_by: partition.clone(),
                    time: time_expr.clone(),
                    time_column,
                    gap,
                    bounds: bounds.to_vec(),
                };
                let op = SessionWindow::new(
                    spec,
                    &in_arrow,
                    out.clone(),
                    self.evaluator.clone(),
                    self.late_rows("session window")?,
                )?
                .with_state_config(self.options.state);
                Ok(Self::single(inputs, Box::new(op)))
            })
            .collect::<Result<Vec<_>>>()?;
        let inputs_width = in_schema.fields().len();
        let watermarks = bounds
            .iter()
            .enumerate()
            .filter(|(_, b)| watermarked && **b == SessionBound::End)
            .map(|(j, _)| inputs_width + j)
            .collect();
        Ok(Built {
            instances,
            watermarks,
            append_only: false,
        })
    }
}
