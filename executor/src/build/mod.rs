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
//!
//! Alongside the fragments, the builder tracks which columns of every node
//! can carry a watermark (see [`crate::watermark`]): an aggregate grouping by
//! such a column is windowed, and `EMIT ON WINDOW CLOSE` requires one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Expr, physical_planning_context::PhysicalPlanningContext};
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use tokio::sync::{RwLock, mpsc};

use eddy_planner::StreamNode;

use crate::checkpoint::{MAX_SCANS, SPLIT_SCOPE};
use crate::coordinator::Coordinator;
use crate::dispatch::{CHANNEL_CAPACITY, Dispatch, Output, Subscribers};
use crate::error::{ExecutorError, Result};
use crate::eval::Evaluator;
use crate::fragment::Fragment;
use crate::input::{AlignedInput, InputChannel};
use crate::late_rows::{LateOutput, LateRows, late_rows_id};
use crate::materialize::Materialize;
use crate::message::{Message, StreamChunk};
use crate::operator::{Filter, Operator};
use crate::progress::Progress;
use crate::runtime::PipelineOptions;
use crate::source::{Reader, SourceSpec, SplitAlignment, SplitClocks};
use crate::temporal_filter::TemporalFilter;

mod aggregate;
mod join;
mod project;
mod scan;
mod shared;
mod window_functions;

pub(crate) use shared::SharedPlans;
use window_functions::WindowCalls;

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

/// Why a query cannot `EMIT ON WINDOW CLOSE`.
const EOWC_NEEDS_A_WINDOW: &str = "EMIT ON WINDOW CLOSE needs a GROUP BY on a window column with a watermark (window_start or window_end of TUMBLE / HOP, window_end of SESSION, or date_bin / date_trunc of a column with one: a source's WATERMARK FOR, passed on by windows, joins on time and views)";

/// What a view's output carries, for the views that read it: the columns
/// with a watermark (its changelog passes them on) and whether it only
/// inserts (emitted on window close, say).
#[derive(Debug, Clone, Default)]
pub struct OutputTraits {
    /// Output columns that carry a watermark.
    pub watermarks: BTreeSet<usize>,
    /// Whether it never emits a deletion.
    pub append_only: bool,
}

/// A relation a plan reads.
#[derive(Debug)]
pub enum Upstream {
    /// A table or view: its committed rows, then its changelog.
    Changelog {
        /// Relation id.
        id: u32,
        /// Its changelog.
        subscribers: Arc<Subscribers>,
        /// What its output carries (nothing for a table).
        traits: OutputTraits,
    },
    /// A source: read from its beginning by readers of this pipeline's own.
    Stream(Arc<SourceSpec>),
}

#[derive(Debug, Default)]
struct Instance {
    inputs: Vec<InputChannel>,
    ports: Vec<usize>,
    ops: Vec<Box<dyn Operator>>,
    /// For an instance of a source's rows before their first shuffle, the
    /// split it runs on: (the scan's number << 16) | the split's index.
    split: Option<u32>,
}

/// A node built into instances, with the output columns that carry
/// watermarks and whether its output is append-only.
#[derive(Debug, Default)]
struct Built {
    instances: Vec<Instance>,
    watermarks: BTreeSet<usize>,
    /// Whether the node's output never holds a deletion, whatever its
    /// inputs do (so an operator over it may forget what can no longer
    /// matter: a top-N, the rows past its N).
    append_only: bool,
}

impl Built {
    /// Instances of a node whose output carries no watermark and may hold
    /// deletions.
    fn plain(instances: Vec<Instance>) -> Self {
        Self {
            instances,
            watermarks: BTreeSet::new(),
            append_only: false,
        }
    }
}

/// Builds one relation's pipeline.
pub(crate) struct PipelineBuilder<'a> {
    pub relation: u32,
    /// Which run of the relation's pipeline this is.
    pub incarnation: u64,
    /// Set when the relation fails (see [`Fragment::halted`]).
    pub halted: Arc<std::sync::atomic::AtomicBool>,
    pub parallelism: usize,
    pub coordinator: Arc<Coordinator>,
    pub evaluator: Evaluator,
    pub ticks: Arc<Subscribers>,
    pub resolve: &'a dyn Fn(&str) -> Result<Upstream>,
    pub gate: Arc<RwLock<()>>,
    pub running: tokio::sync::watch::Receiver<bool>,
    pub clocks: Arc<SplitClocks>,
    pub progress: Arc<Progress>,
    pub options: PipelineOptions,
    /// Its late-rows relation's changelog, when it keeps late rows.
    pub late_changelog: Option<Arc<Subscribers>>,
    /// Whether inputs start with what they hold now (a new view), or the
    /// pipeline's state comes from a checkpoint (recovery).
    pub backfill: bool,
    /// The state layout its checkpoints are in: the one it restores
    /// from, or [`crate::checkpoint::STATE_LAYOUT`] when it starts anew.
    pub layout: u32,
    /// Without backfill: what each table input replays first, per table
    /// id (the changes a failed pipeline's checkpoint lacks). A view input
    /// replays what it changed since the checkpoint
    /// (`Coordinator::view_changes_since`).
    pub replay: HashMap<u32, Vec<Message>>,
    pub fragments: Vec<Fragment>,
    pub subscriptions: Vec<(Arc<Subscribers>, mpsc::Sender<Message>)>,
    /// Outputs of this pipeline's readers, per source id.
    pub reader_outputs: HashMap<u32, Vec<Arc<Subscribers>>>,
    /// Its readers' watermark alignment, per alignment group.
    pub alignment_groups: HashMap<String, Arc<SplitAlignment>>,
    pub readers: Vec<Reader>,
    pub windowed_aggregates: usize,
    /// Repeated subplans, run once (see [`shared`]).
    pub shared: SharedPlans,
    pub scopes: FragmentScopes,
}

/// Gives fragments their checkpoint scopes (see [`crate::checkpoint`]), so
/// that a fragment's scope does not depend on how many splits a source
/// has: a per-split fragment is named by its scan (each read of a
/// source's splits, or of a shared subplan's per-split outputs, numbered
/// in plan order) and split; the others are counted in plan order.
#[derive(Debug, Default)]
pub(crate) struct FragmentScopes {
    /// Fragments not per split, so far.
    fixed: u32,
    /// Scans, so far.
    scans: u32,
}

impl FragmentScopes {
    /// The number of a new scan.
    fn scan(&mut self) -> Result<u32> {
        if self.scans == MAX_SCANS {
            return Err(ExecutorError::Unsupported(format!(
                "a view with more than {MAX_SCANS} scans of sources"
            )));
        }
        self.scans += 1;
        Ok(self.scans - 1)
    }

    /// The scope of a fragment running on `split`, if it runs on one.
    fn scope(&mut self, split: Option<u32>) -> u32 {
        match split {
            Some(split) => SPLIT_SCOPE + split,
            None => {
                self.fixed += 1;
                self.fixed - 1
            }
        }
    }
}

fn physical(expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
    let expr = create_physical_expr(
        expr,
        schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )?;
    shift_timestamps(expr, &batch_schema(schema))
}

/// Rewrites `ts ± INTERVAL` of whole time units (no months or days, as HOP
/// windows and watermark delays are) into checked integer arithmetic on the
/// timestamp's value: the same result, and an overflow is an error as
/// before (the row gets NULL and the error is counted), without arrow's
/// month-day-nano interval arithmetic, which cost a tenth of Nexmark q5
/// (its five HOP windows are `date_bin(..) - k * slide`). Casts and `±`
/// keep the expression monotone, so watermarks still flow.
fn shift_timestamps(
    expr: Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
) -> Result<Arc<dyn PhysicalExpr>> {
    use datafusion::arrow::datatypes::TimeUnit;
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{BinaryExpr, Literal, cast};
    use datafusion::scalar::ScalarValue;
    Ok(expr
        .transform_up(|e| {
            let Some(binary) = e.as_ref().downcast_ref::<BinaryExpr>() else {
                return Ok(Transformed::no(e));
            };
            let op = *binary.op();
            let Some(literal) = binary.right().as_ref().downcast_ref::<Literal>() else {
                return Ok(Transformed::no(e));
            };
            let (
                Operator::Plus | Operator::Minus,
                ScalarValue::IntervalMonthDayNano(Some(interval)),
            ) = (op, literal.value())
            else {
                return Ok(Transformed::no(e));
            };
            let timestamp = binary.left().data_type(schema)?;
            let DataType::Timestamp(unit, _) = &timestamp else {
                return Ok(Transformed::no(e));
            };
            let per_unit = match unit {
                TimeUnit::Second => 1_000_000_000,
                TimeUnit::Millisecond => 1_000_000,
                TimeUnit::Microsecond => 1_000,
                TimeUnit::Nanosecond => 1,
            };
            if interval.months != 0 || interval.days != 0 || interval.nanoseconds % per_unit != 0 {
                return Ok(Transformed::no(e));
            }
            let raw = cast(binary.left().clone(), schema, DataType::Int64)?;
            let shift = Arc::new(Literal::new(ScalarValue::Int64(Some(
                interval.nanoseconds / per_unit,
            ))));
            let shifted = Arc::new(BinaryExpr::new(raw, op, shift).with_fail_on_overflow(true));
            Ok(Transformed::yes(cast(shifted, schema, timestamp)?))
        })?
        .data)
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
    /// fragment (or `terminal`, for a sink), whose output goes to `output`.
    pub fn build_root(
        &mut self,
        root: &StreamNode,
        output: Arc<Subscribers>,
        terminal: Option<Box<dyn Operator>>,
    ) -> Result<OutputTraits> {
        let schema = batch_schema(root.schema());
        self.find_shared(root);
        let built = self.build(root)?;
        let traits = OutputTraits {
            watermarks: built.watermarks,
            append_only: built.append_only,
        };
        let pending = built.instances;
        if self.options.emit_on_window_close && self.windowed_aggregates == 0 {
            return Err(ExecutorError::Windowing(EOWC_NEEDS_A_WINDOW.into()));
        }
        let inputs = self
            .connect(pending, 1, Dispatch::Broadcast)
            .pop()
            .unwrap_or_default();
        let terminal = match terminal {
            Some(terminal) => terminal,
            None => Box::new(Materialize::new(
                self.relation,
                schema,
                self.progress.clone(),
            )?),
        };
        self.spawnable(
            Instance {
                ports: vec![0; inputs.len()],
                inputs,
                ops: vec![terminal],
                split: None,
            },
            Output::Subscribers(output),
        );
        if let Some(late) = self.fragments.last_mut().and_then(|f| f.late.as_mut()) {
            late.ends_epochs = true;
        }
        Ok(traits)
    }

    /// Where an operator that drops late rows puts them.
    fn late_rows(&self, operator: &'static str) -> Result<LateRows> {
        let keep_in = self
            .options
            .keep_late_rows
            .then(|| late_rows_id(self.relation));
        LateRows::new(self.relation, self.progress.clone(), keep_in, operator)
    }

    /// Makes `instance` a fragment writing to `output`.
    fn spawnable(&mut self, instance: Instance, output: Output) {
        let scope = self.scopes.scope(instance.split);
        self.fragments.push(Fragment {
            relation: self.relation,
            input: AlignedInput::with_ports(instance.inputs, instance.ports),
            ops: instance.ops,
            output,
            coordinator: self.coordinator.clone(),
            incarnation: self.incarnation,
            halted: self.halted.clone(),
            index: self.fragments.len(),
            scope,
            progress: self.progress.clone(),
            errors: Default::default(),
            late: self.late_changelog.clone().map(|changelog| LateOutput {
                changelog,
                ends_epochs: false,
            }),
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
                // The operators downstream evaluate the keys again.
                evaluator: self.evaluator.quiet(),
            };
            self.spawnable(instance, output);
        }
        downstream
    }

    /// How many instances an operator keyed by a hash of its input runs:
    /// one without a key (a global aggregate, a cross join, a window over
    /// the whole stream), else the pipeline's parallelism.
    fn instances_for(&self, keyed: bool) -> usize {
        if keyed { self.parallelism } else { 1 }
    }

    fn single(inputs: Vec<InputChannel>, op: Box<dyn Operator>) -> Instance {
        Instance {
            ports: vec![0; inputs.len()],
            inputs,
            ops: vec![op],
            split: None,
        }
    }

    fn build(&mut self, node: &StreamNode) -> Result<Built> {
        match self.build_shared(node)? {
            Some(built) => Ok(built),
            None => self.build_node(node),
        }
    }

    fn build_node(&mut self, node: &StreamNode) -> Result<Built> {
        match node {
            StreamNode::Source { relation, .. } => self.build_scan(relation),
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
                let prefix = if batches.is_empty() || !self.backfill {
                    vec![]
                } else {
                    vec![Message::Chunk(StreamChunk::inserts(
                        datafusion::arrow::compute::concat_batches(&arrow, &batches)?,
                    ))]
                };
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                self.subscriptions.push((self.ticks.clone(), tx));
                Ok(Built {
                    append_only: true,
                    ..Built::plain(vec![Instance {
                        inputs: vec![InputChannel::with_prefix(prefix, rx)],
                        ports: vec![0],
                        ops: vec![],
                        split: None,
                    }])
                })
            }
            StreamNode::Project {
                input,
                exprs,
                schema,
            } => self.build_project(input, exprs, schema),
            StreamNode::Filter { input, predicate } => {
                let predicate = physical(predicate, input.schema())?;
                let mut built = self.build(input)?;
                for i in &mut built.instances {
                    i.ops.push(Box::new(Filter::new(
                        predicate.clone(),
                        self.evaluator.clone(),
                    )));
                }
                Ok(built)
            }
            StreamNode::TemporalFilter { input, bounds } => {
                let bounds = bounds
                    .iter()
                    .map(|b| Ok((b.is, physical(&b.bound, input.schema())?)))
                    .collect::<Result<Vec<_>>>()?;
                let schema = batch_schema(input.schema());
                let now = eddy_planner::system_time_nanos(std::time::SystemTime::now());
                let mut built = self.build(input)?;
                for i in &mut built.instances {
                    i.ops.push(Box::new(
                        TemporalFilter::new(
                            bounds.clone(),
                            schema.clone(),
                            self.evaluator.clone(),
                            now,
                        )?
                        .with_state_config(self.options.state),
                    ));
                }
                // Rows leave (or enter) as time passes, whatever their
                // event time: no watermark holds past it.
                built.watermarks.clear();
                built.append_only = false;
                Ok(built)
            }
            StreamNode::TopN {
                input,
                partition_by,
                order_by,
                limit,
                schema,
            } => self.build_window(
                input,
                partition_by,
                order_by,
                WindowCalls::RowNumber { limit: *limit },
                schema,
            ),
            StreamNode::OverWindow {
                input,
                partition_by,
                order_by,
                functions,
                schema,
            } => self.build_window(
                input,
                partition_by,
                order_by,
                WindowCalls::Exprs(functions),
                schema,
            ),
            StreamNode::Union { inputs, schema } => self.build_union(inputs, schema),
            StreamNode::Aggregate {
                input,
                group,
                calls,
                schema,
            } => self.build_aggregate(input, group, calls, schema),
            StreamNode::Join {
                left,
                right,
                on,
                filter,
                kind,
                nulls_equal,
                schema,
            } => self.build_join(
                left,
                right,
                on,
                filter.as_ref(),
                *kind,
                *nulls_equal,
                schema,
            ),
            StreamNode::SessionWindow {
                input,
                partition_by,
                time,
                gap,
                bounds,
                schema,
            } => self.build_session(input, partition_by, time, *gap, bounds, schema),
        }
    }
}
