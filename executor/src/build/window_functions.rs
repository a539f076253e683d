//! Building the operators DataFusion plans as window functions: top-N (row
//! numbers) and session windows. Both run one instance per hash partition
//! of their PARTITION BY (one without it).

use std::sync::Arc;

use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_expr::PhysicalExpr;

use eddy_planner::{SessionBound, StreamNode};

use super::{Built, PipelineBuilder, batch_schema, physical};
use crate::dispatch::Dispatch;
use crate::error::Result;
use crate::session::{SessionWindow, SessionWindowSpec};
use crate::top_n::TopN;

impl PipelineBuilder<'_> {
    pub(super) fn build_top_n(
        &mut self,
        input: &StreamNode,
        partition_by: &[Expr],
        order_by: &[datafusion::logical_expr::SortExpr],
        limit: Option<usize>,
        schema: &DFSchema,
    ) -> Result<Built> {
        let in_schema = input.schema().clone();
        let partition = partition_by
            .iter()
            .map(|e| physical(e, &in_schema))
            .collect::<Result<Vec<_>>>()?;
        let order = order_by
            .iter()
            .map(|s| {
                Ok(datafusion::physical_expr::create_physical_sort_expr(
                    s,
                    &in_schema,
                    &ExecutionProps::new(),
                    &PhysicalPlanningContext::default(),
                )?)
            })
            .collect::<Result<Vec<_>>>()?;
        let n = if partition.is_empty() {
            1
        } else {
            self.parallelism
        };
        let child = self.build(input)?;
        let inputs = self.connect(child.instances, n, Dispatch::Hash(partition.clone()));
        let (in_arrow, out) = (batch_schema(&in_schema), batch_schema(schema));
        let instances = inputs
            .into_iter()
            .map(|inputs| {
                let op = TopN::new(
                    partition.clone(),
                    order.clone(),
                    limit,
                    &in_arrow,
                    out.clone(),
                    self.evaluator.clone(),
                )?;
                Ok(Self::single(inputs, Box::new(op)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Built::plain(instances))
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
        let n = if partition.is_empty() {
            1
        } else {
            self.parallelism
        };
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
                )?;
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
        })
    }
}
