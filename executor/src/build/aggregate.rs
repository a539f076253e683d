//! Building grouped aggregates: one instance per hash partition of the group
//! key (one for a global aggregate), windowed when a group column carries a
//! watermark.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{Expr, ExprSchemable};

use eddy_planner::AggregateCall;

use super::{Built, PipelineBuilder, batch_schema, physical};
use crate::aggregate::{AggregateSpec, CallShape, HashAggregate, ValueKind, WindowKey};
use crate::dispatch::Dispatch;
use crate::error::{ExecutorError, Result};
use crate::watermark::is_monotone_in;
use eddy_planner::StreamNode;

impl PipelineBuilder<'_> {
    pub(super) fn build_aggregate(
        &mut self,
        input: &StreamNode,
        group: &[Expr],
        calls: &[AggregateCall],
        schema: &DFSchema,
    ) -> Result<Built> {
        let in_schema = input.schema().clone();
        let group_exprs_logical = group;
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
        let n = self.instances_for(!group.is_empty());
        for _ in 0..n {
            let mut specs = Vec::new();
            for (i, call) in calls.iter().enumerate() {
                let arg_type = call.arg.get_type(&in_schema)?;
                let (value_kind, value_type) =
                    ValueKind::for_call(call.kind, call.distinct, &arg_type)?;
                let delimiter = match &call.delimiter {
                    None => String::new(),
                    Some(Expr::Literal(
                        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
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
        // The first group expression that is an input column with a
        // watermark, or non-decreasing in one alone (`date_bin(.., ts)`).
        let window = group_exprs.iter().enumerate().find_map(|(g, e)| {
            child
                .watermarks
                .iter()
                .find(|&&i| is_monotone_in(e, i))
                .map(|&i| (g, i))
        });
        if self.options.emit_on_window_close && window.is_none() {
            return Err(ExecutorError::Windowing(super::EOWC_NEEDS_A_WINDOW.into()));
        }
        if window.is_some() {
            self.windowed_aggregates += 1;
        }
        let inputs = self.connect(child.instances, n, Dispatch::Hash(group_exprs.clone()));
        let instances = inputs
            .into_iter()
            .zip(specs_per_instance)
            .map(|(inputs, specs)| {
                let key = match window {
                    Some((group, input_column)) => Some(WindowKey {
                        group,
                        input_column,
                        input: (!matches!(group_exprs_logical[group], Expr::Column(_)))
                            .then(|| batch_schema(&in_schema)),
                        emit_on_close: self.options.emit_on_window_close,
                        late: self.late_rows("window aggregate")?,
                        leads_key: self.layout >= 3,
                    }),
                    None => None,
                };
                let op = HashAggregate::new(
                    group_exprs.clone(),
                    group_types.clone(),
                    specs,
                    out.clone(),
                    self.evaluator.clone(),
                    key,
                )?
                .with_state_ttl(self.options.state_ttl)
                .with_state_config(self.options.state);
                Ok(Self::single(inputs, Box::new(op)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Built {
            instances,
            watermarks: window.map(|(g, _)| g).into_iter().collect(),
            // Each window's row goes out once, final, when it closes.
            append_only: window.is_some() && self.options.emit_on_window_close,
        })
    }
}
