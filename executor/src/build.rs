//! Turning a [`StreamNode`] tree into running fragments.
//!
//! Stateless operators (project, filter) are fused into the fragment that
//! produces their input. Aggregates and joins run as `parallelism` fragments,
//! each fed by hash-partitioning its input on the group / join key; a global
//! aggregate or a join without keys runs as one. Everything ends in one
//! [`Materialize`] fragment.
//!
//! Nothing is subscribed or spawned until the whole plan has been built, so
//! a plan that fails to build leaves no trace.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{
    Expr, ExprSchemable, physical_planning_context::PhysicalPlanningContext,
};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use tokio::sync::mpsc;

use eddy_planner::StreamNode;

use crate::aggregate::{AggregateSpec, CallShape, HashAggregate, ValueKind};
use crate::codec::RowCodec;
use crate::coordinator::Coordinator;
use crate::dispatch::{CHANNEL_CAPACITY, Dispatch, Output, Subscribers};
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::fragment::Fragment;
use crate::input::{AlignedInput, InputChannel};
use crate::join::{HashJoin, JoinSide};
use crate::materialize::Materialize;
use crate::message::{Message, StreamChunk};
use crate::operator::{Filter, Operator, Project};

/// The schema of a node's batches: the node's columns, all nullable.
pub fn batch_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

/// A relation a plan reads: where to subscribe and what it holds now.
#[derive(Debug)]
pub struct SourceHandle {
    /// Relation id.
    pub id: u32,
    /// Its changelog.
    pub subscribers: Arc<Subscribers>,
}

#[derive(Debug, Default)]
struct Instance {
    inputs: Vec<InputChannel>,
    ports: Vec<usize>,
    ops: Vec<Box<dyn Operator>>,
}

/// Builds one relation's pipeline.
pub(crate) struct PipelineBuilder<'a> {
    pub relation: u32,
    pub parallelism: usize,
    pub coordinator: Arc<Coordinator>,
    pub evaluator: Evaluator,
    pub ticks: Arc<Subscribers>,
    pub resolve: &'a dyn Fn(&str) -> Result<SourceHandle>,
    pub fragments: Vec<Fragment>,
    pub subscriptions: Vec<(Arc<Subscribers>, mpsc::Sender<Message>)>,
}

fn physical(expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(create_physical_expr(
        expr,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )?)
}

fn cast_to(
    expr: Arc<dyn PhysicalExpr>,
    schema: &DFSchema,
    to: &DataType,
) -> Result<Arc<dyn PhysicalExpr>> {
    let arrow = batch_schema(schema);
    if &expr.data_type(&arrow)? == to {
        return Ok(expr);
    }
    Ok(datafusion::physical_expr::expressions::cast(
        expr,
        &arrow,
        to.clone(),
    )?)
}

impl PipelineBuilder<'_> {
    /// Builds `root` ending in relation `self.relation`'s materialize
    /// fragment, whose output goes to `output`.
    pub fn build_root(&mut self, root: &StreamNode, output: Arc<Subscribers>) -> Result<()> {
        let schema = batch_schema(root.schema());
        let pending = self.build(root)?;
        let inputs = self
            .connect(pending, 1, Dispatch::Broadcast)
            .pop()
            .unwrap_or_default();
        let materialize = Materialize::new(self.relation, schema, self.coordinator.clone())?;
        self.spawnable(
            Instance {
                ports: vec![0; inputs.len()],
                inputs,
                ops: vec![Box::new(materialize)],
            },
            Output::Subscribers(output),
        );
        Ok(())
    }

    fn spawnable(&mut self, instance: Instance, output: Output) {
        self.fragments.push(Fragment {
            relation: self.relation,
            input: AlignedInput::new(instance.inputs),
            ports: instance.ports,
            ops: instance.ops,
            output,
            coordinator: self.coordinator.clone(),
        });
    }

    /// Wires every instance of `upstream` to `n` new downstream inputs.
    fn connect(
        &mut self,
        upstream: Vec<Instance>,
        n: usize,
        dispatch: Dispatch,
    ) -> Vec<Vec<InputChannel>> {
        let mut downstream: Vec<Vec<InputChannel>> = (0..n).map(|_| Vec::new()).collect();
        for instance in upstream {
            let mut targets = Vec::with_capacity(n);
            for inputs in downstream.iter_mut() {
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                targets.push(tx);
                inputs.push(InputChannel::new(rx));
            }
            let output = Output::Channels {
                dispatch: dispatch.clone(),
                targets,
                evaluator: self.evaluator.clone(),
            };
            self.spawnable(instance, output);
        }
        downstream
    }

    fn single(inputs: Vec<InputChannel>, op: Box<dyn Operator>) -> Instance {
        Instance {
            ports: vec![0; inputs.len()],
            inputs,
            ops: vec![op],
        }
    }

    fn build(&mut self, node: &StreamNode) -> Result<Vec<Instance>> {
        match node {
            StreamNode::Source { relation, .. } => {
                let source = (self.resolve)(relation)?;
                let backfill = self.coordinator.read(&[source.id])?;
                let prefix = backfill
                    .get(&source.id)
                    .map(|batches| {
                        batches
                            .iter()
                            .map(|b| Message::Chunk(StreamChunk::inserts(b.clone())))
                            .collect()
                    })
                    .unwrap_or_default();
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                self.subscriptions.push((source.subscribers, tx));
                Ok(vec![Instance {
                    inputs: vec![InputChannel::with_prefix(prefix, rx)],
                    ports: vec![0],
                    ops: vec![],
                }])
            }
            StreamNode::Values { rows, schema } => {
                let arrow = batch_schema(schema);
                let empty = DFSchema::empty();
                let one_row = datafusion::arrow::array::RecordBatch::try_new_with_options(
                    Arc::new(Schema::empty()),
                    vec![],
                    &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(1)),
                )?;
                let mut batches = Vec::new();
                for row in rows {
                    let columns = row
                        .iter()
                        .zip(arrow.fields())
                        .map(|(e, f)| {
                            let value = self.evaluator.eval(&physical(e, &empty)?, &one_row)?;
                            Ok(datafusion::arrow::compute::cast(&value, f.data_type())?)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    batches.push(datafusion::arrow::array::RecordBatch::try_new_with_options(
                        arrow.clone(),
                        columns,
                        &datafusion::arrow::array::RecordBatchOptions::new()
                            .with_row_count(Some(1)),
                    )?);
                }
                let prefix = if batches.is_empty() {
                    vec![]
                } else {
                    vec![Message::Chunk(StreamChunk::inserts(
                        datafusion::arrow::compute::concat_batches(&arrow, &batches)?,
                    ))]
                };
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                self.subscriptions.push((self.ticks.clone(), tx));
                Ok(vec![Instance {
                    inputs: vec![InputChannel::with_prefix(prefix, rx)],
                    ports: vec![0],
                    ops: vec![],
                }])
            }
            StreamNode::Project {
                input,
                exprs,
                schema,
            } => {
                let exprs = exprs
                    .iter()
                    .map(|e| physical(e, input.schema()))
                    .collect::<Result<Vec<_>>>()?;
                let out = batch_schema(schema);
                let mut instances = self.build(input)?;
                for i in &mut instances {
                    i.ops.push(Box::new(Project::new(
                        exprs.clone(),
                        out.clone(),
                        self.evaluator.clone(),
                    )));
                }
                Ok(instances)
            }
            StreamNode::Filter { input, predicate } => {
                let predicate = physical(predicate, input.schema())?;
                let mut instances = self.build(input)?;
                for i in &mut instances {
                    i.ops.push(Box::new(Filter::new(
                        predicate.clone(),
                        self.evaluator.clone(),
                    )));
                }
                Ok(instances)
            }
            StreamNode::Union { inputs, .. } => {
                let mut all = Vec::new();
                for input in inputs {
                    all.extend(self.build(input)?);
                }
                Ok(all)
            }
            StreamNode::Aggregate {
                input,
                group,
                calls,
                schema,
            } => {
                let in_schema = input.schema().clone();
                let group_exprs = group
                    .iter()
                    .map(|e| physical(e, &in_schema))
                    .collect::<Result<Vec<_>>>()?;
                let group_types = group
                    .iter()
                    .map(|e| e.get_type(&in_schema))
                    .collect::<Result<Vec<_>, _>>()?;
                let out = batch_schema(schema);
                let mut specs_per_instance = Vec::new();
                let n = if group.is_empty() {
                    1
                } else {
                    self.parallelism
                };
                for _ in 0..n {
                    let mut specs = Vec::new();
                    for (i, call) in calls.iter().enumerate() {
                        let arg_type = call.arg.get_type(&in_schema)?;
                        let (value_kind, value_type) =
                            ValueKind::for_call(call.kind, call.distinct, &arg_type)?;
                        let delimiter = match &call.delimiter {
                            None => String::new(),
                            Some(Expr::Literal(
                                ScalarValue::Utf8(s)
                                | ScalarValue::LargeUtf8(s)
                                | ScalarValue::Utf8View(s),
                                _,
                            )) => s.clone().unwrap_or_default(),
                            Some(other) => {
                                return Err(ExecutorError::Unsupported(format!(
                                    "string_agg delimiter must be a constant string, got {other}"
                                )));
                            }
                        };
                        specs.push(AggregateSpec {
                            arg: physical(&call.arg, &in_schema)?,
                            filter: call
                                .filter
                                .as_ref()
                                .map(|f| physical(f, &in_schema))
                                .transpose()?,
                            value_kind,
                            value_type,
                            shape: CallShape {
                                kind: call.kind,
                                distinct: call.distinct,
                                scale: match arg_type {
                                    DataType::Decimal128(_, s) | DataType::Decimal256(_, s) => s,
                                    _ => 0,
                                },
                                output: out.field(group.len() + i).data_type().clone(),
                                delimiter,
                                descending: call.descending,
                            },
                        });
                    }
                    specs_per_instance.push(specs);
                }
                let child = self.build(input)?;
                let inputs = self.connect(child, n, Dispatch::Hash(group_exprs.clone()));
                inputs
                    .into_iter()
                    .zip(specs_per_instance)
                    .map(|(inputs, specs)| {
                        let op = HashAggregate::new(
                            group_exprs.clone(),
                            group_types.clone(),
                            specs,
                            out.clone(),
                            self.evaluator.clone(),
                        )?;
                        Ok(Self::single(inputs, Box::new(op)))
                    })
                    .collect()
            }
            StreamNode::Join {
                left,
                right,
                on,
                filter,
                kind,
                nulls_equal,
                schema,
            } => {
                let (ls, rs) = (left.schema().clone(), right.schema().clone());
                let key_types = on
                    .iter()
                    .map(|(l, _)| l.get_type(&ls))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut left_keys = Vec::new();
                let mut right_keys = Vec::new();
                for ((l, r), t) in on.iter().zip(&key_types) {
                    left_keys.push(cast_to(physical(l, &ls)?, &ls, t)?);
                    right_keys.push(cast_to(physical(r, &rs)?, &rs, t)?);
                }
                let joined = ls.join(&rs)?;
                let filter = filter.as_ref().map(|f| physical(f, &joined)).transpose()?;
                let n = if on.is_empty() { 1 } else { self.parallelism };
                let left_pending = self.build(left)?;
                let right_pending = self.build(right)?;
                let left_inputs = self.connect(left_pending, n, Dispatch::Hash(left_keys.clone()));
                let right_inputs =
                    self.connect(right_pending, n, Dispatch::Hash(right_keys.clone()));
                let (lb, rb) = (batch_schema(&ls), batch_schema(&rs));
                left_inputs
                    .into_iter()
                    .zip(right_inputs)
                    .map(|(l, r)| {
                        let sides = [
                            JoinSide {
                                keys: left_keys.clone(),
                                codec: RowCodec::for_schema(&lb)?,
                            },
                            JoinSide {
                                keys: right_keys.clone(),
                                codec: RowCodec::for_schema(&rb)?,
                            },
                        ];
                        let op = HashJoin::new(
                            *kind,
                            *nulls_equal,
                            sides,
                            key_types.clone(),
                            filter.clone(),
                            batch_schema(&joined),
                            batch_schema(schema),
                            self.evaluator.clone(),
                        )?;
                        let ports = [vec![0; l.len()], vec![1; r.len()]].concat();
                        Ok(Instance {
                            inputs: l.into_iter().chain(r).collect(),
                            ports,
                            ops: vec![Box::new(op)],
                        })
                    })
                    .collect()
            }
        }
    }
}
