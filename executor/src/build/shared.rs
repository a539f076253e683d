//! Running a repeated subplan once (see [`eddy_planner::shared_subplans`]).
//!
//! The first occurrence is built as usual and its instances spawned with
//! subscribers for outputs; every use, the first occurrence included, then
//! reads those outputs through channels of its own, with a projection
//! putting the columns in the use's order where it differs. Barriers stay
//! aligned: an instance hands each message to all its subscribers before
//! the next, so every use sees the same epochs.
//!
//! Nodes are told apart by address: the plan is borrowed, unmoved, for the
//! whole build.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use tokio::sync::mpsc;

use eddy_planner::{StreamNode, shared_subplans};

use super::{Built, Instance, PipelineBuilder, batch_schema};
use crate::dispatch::{CHANNEL_CAPACITY, Output, Subscribers};
use crate::error::{ExecutorError, Result};
use crate::input::InputChannel;
use crate::operator::Project;

/// The repeated subplans of the plan being built.
#[derive(Debug, Default)]
pub(crate) struct SharedPlans {
    /// A repeat -> its first occurrence, and for each of its columns the
    /// first occurrence's column holding it.
    uses: HashMap<usize, (usize, Vec<usize>)>,
    /// A first occurrence -> its outputs, once built.
    outputs: HashMap<usize, Option<SharedOutputs>>,
}

#[derive(Debug)]
struct SharedOutputs {
    /// Per instance: whether it runs on a split, and its outputs.
    subscribers: Vec<(bool, Arc<Subscribers>)>,
    watermarks: BTreeSet<usize>,
    append_only: bool,
    schema: SchemaRef,
}

fn address(node: &StreamNode) -> usize {
    std::ptr::from_ref(node) as usize
}

impl PipelineBuilder<'_> {
    /// Finds the repeated subplans of `root`, before it is built.
    pub(super) fn find_shared(&mut self, root: &StreamNode) {
        for shared in shared_subplans(root) {
            let first = address(shared.computed_by);
            self.shared
                .uses
                .insert(address(shared.node), (first, shared.columns));
            self.shared.outputs.insert(first, None);
        }
    }

    /// `node` read from its shared outputs, if it is a repeated subplan
    /// (building them at its first occurrence); None if it is not.
    pub(super) fn build_shared(&mut self, node: &StreamNode) -> Result<Option<Built>> {
        let at = address(node);
        let (first, columns) = match self.shared.uses.get(&at) {
            Some((first, columns)) => (*first, columns.clone()),
            None if self.shared.outputs.get(&at).is_some_and(Option::is_none) => {
                let built = self.build_node(node)?;
                let subscribers = built
                    .instances
                    .into_iter()
                    .map(|instance| {
                        let output = Arc::new(Subscribers::default());
                        let per_split = instance.split.is_some();
                        self.spawnable(instance, Output::Subscribers(output.clone()));
                        (per_split, output)
                    })
                    .collect();
                let outputs = SharedOutputs {
                    subscribers,
                    watermarks: built.watermarks,
                    append_only: built.append_only,
                    schema: batch_schema(node.schema()),
                };
                self.shared.outputs.insert(at, Some(outputs));
                (at, (0..node.schema().fields().len()).collect())
            }
            None => return Ok(None),
        };
        let Some(Some(outputs)) = self.shared.outputs.get(&first) else {
            return Err(ExecutorError::Internal(
                "a repeated subplan was reached before its first occurrence".into(),
            ));
        };
        let schema = batch_schema(node.schema());
        let permute = (columns.iter().enumerate().any(|(i, &j)| i != j)
            || schema != outputs.schema)
            .then(|| {
                let exprs: Vec<Arc<dyn PhysicalExpr>> = columns
                    .iter()
                    .map(|&j| {
                        Arc::new(Column::new(outputs.schema.field(j).name(), j))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                (exprs, outputs.schema.clone())
            });
        let watermarks = (0..columns.len())
            .filter(|&i| outputs.watermarks.contains(&columns[i]))
            .collect();
        let mut instances = Vec::with_capacity(outputs.subscribers.len());
        // Each use reads per-split outputs as a scan of its own.
        let scan = self.scopes.scan()?;
        for (index, (per_split, subscribers)) in outputs.subscribers.clone().into_iter().enumerate()
        {
            let split = per_split.then_some((scan << 16) + index as u32);
            let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
            self.subscriptions.push((subscribers, tx));
            let ops = permute
                .iter()
                .map(|(exprs, input)| {
                    Box::new(Project::new(
                        exprs.clone(),
                        input.clone(),
                        schema.clone(),
                        self.evaluator.clone(),
                    )) as Box<_>
                })
                .collect();
            instances.push(Instance {
                inputs: vec![InputChannel::new(rx)],
                ports: vec![0],
                ops,
                split,
            });
        }
        Ok(Some(Built {
            instances,
            watermarks,
            append_only: outputs.append_only,
        }))
    }
}
