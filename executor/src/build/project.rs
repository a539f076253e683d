//! Building projections and `UNION ALL`: both stateless, fused into the
//! fragments that produce their input.
//!
//! A union whose branches all project one input (HOP windows: a branch per
//! window a row falls in) is one [`ProjectUnion`] over that input, built
//! once; any other union keeps its inputs' instances side by side.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;

use eddy_planner::StreamNode;

use super::{Built, PipelineBuilder, batch_schema, physical};
use crate::error::Result;
use crate::eval::Evaluator;
use crate::operator::{Project, ProjectUnion};
use crate::watermark::is_monotone_in;

/// A projection of one node's rows, planned.
struct Projection {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    input: SchemaRef,
    output: SchemaRef,
}

impl Projection {
    fn new(input: &StreamNode, exprs: &[Expr], schema: &DFSchema) -> Result<Self> {
        Ok(Self {
            exprs: exprs
                .iter()
                .map(|e| physical(e, input.schema()))
                .collect::<Result<_>>()?,
            input: batch_schema(input.schema()),
            output: batch_schema(schema),
        })
    }

    fn operator(&self, evaluator: &Evaluator) -> Project {
        Project::new(
            self.exprs.clone(),
            self.input.clone(),
            self.output.clone(),
            evaluator.clone(),
        )
    }

    /// The output columns carrying watermarks, given the input's.
    fn watermarks(&self, input: &BTreeSet<usize>) -> BTreeSet<usize> {
        (0..self.exprs.len())
            .filter(|&j| input.iter().any(|&c| is_monotone_in(&self.exprs[j], c)))
            .collect()
    }
}

impl PipelineBuilder<'_> {
    pub(super) fn build_project(
        &mut self,
        input: &StreamNode,
        exprs: &[Expr],
        schema: &DFSchema,
    ) -> Result<Built> {
        let projection = Projection::new(input, exprs, schema)?;
        let mut built = self.build(input)?;
        for i in &mut built.instances {
            i.ops.push(Box::new(projection.operator(&self.evaluator)));
        }
        built.watermarks = projection.watermarks(&built.watermarks);
        Ok(built)
    }

    pub(super) fn build_union(
        &mut self,
        inputs: &[StreamNode],
        schema: &DFSchema,
    ) -> Result<Built> {
        if let Some((input, branches)) = projections_of_one_input(inputs) {
            let projections = branches
                .into_iter()
                .map(|exprs| Projection::new(input, exprs, schema))
                .collect::<Result<Vec<_>>>()?;
            let mut built = self.build(input)?;
            let output = batch_schema(schema);
            for i in &mut built.instances {
                let branches = projections
                    .iter()
                    .map(|p| p.operator(&self.evaluator))
                    .collect();
                i.ops
                    .push(Box::new(ProjectUnion::new(branches, output.clone())));
            }
            let input_watermarks = std::mem::take(&mut built.watermarks);
            built.watermarks =
                carried_by_all(projections.iter().map(|p| p.watermarks(&input_watermarks)));
            return Ok(built);
        }
        let mut instances = Vec::new();
        let mut watermarks = Vec::with_capacity(inputs.len());
        let mut append_only = true;
        for input in inputs {
            let built = self.build(input)?;
            instances.extend(built.instances);
            watermarks.push(built.watermarks);
            append_only &= built.append_only;
        }
        Ok(Built {
            instances,
            watermarks: carried_by_all(watermarks),
            append_only,
        })
    }
}

/// The columns with a watermark in every branch of a union: the union's
/// watermark is the least of its branches', so a branch without one holds
/// the column back.
fn carried_by_all(branches: impl IntoIterator<Item = BTreeSet<usize>>) -> BTreeSet<usize> {
    branches
        .into_iter()
        .reduce(|a, b| a.intersection(&b).copied().collect())
        .unwrap_or_default()
}

/// When every branch of a union (two or more) projects the same input:
/// that input and each branch's expressions.
fn projections_of_one_input(inputs: &[StreamNode]) -> Option<(&StreamNode, Vec<&[Expr]>)> {
    let mut common: Option<&StreamNode> = None;
    let mut branches = Vec::with_capacity(inputs.len());
    for branch in inputs {
        let StreamNode::Project { input, exprs, .. } = branch else {
            return None;
        };
        match common {
            Some(c) if c != input.as_ref() => return None,
            _ => common = Some(input),
        }
        branches.push(exprs.as_slice());
    }
    common.filter(|_| inputs.len() > 1).map(|c| (c, branches))
}
