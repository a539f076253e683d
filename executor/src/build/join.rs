//! Building joins: one instance per hash partition of the join key (one for
//! a join without keys), each fed by both sides.

use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};

use eddy_planner::{JoinKind, StreamNode};

use super::{Built, Instance, PipelineBuilder, batch_schema, cast_to, physical};
use crate::codec::RowCodec;
use crate::dispatch::Dispatch;
use crate::error::Result;
use crate::join::{HashJoin, JoinSide};

impl PipelineBuilder<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build_join(
        &mut self,
        left: &StreamNode,
        right: &StreamNode,
        on: &[(Expr, Expr)],
        filter: Option<&Expr>,
        kind: JoinKind,
        nulls_equal: bool,
        schema: &DFSchema,
    ) -> Result<Built> {
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
        let filter = filter.map(|f| physical(f, &joined)).transpose()?;
        let n = if on.is_empty() { 1 } else { self.parallelism };
        let left_pending = self.build(left)?.instances;
        let right_pending = self.build(right)?.instances;
        let left_inputs = self.connect(left_pending, n, Dispatch::Hash(left_keys.clone()));
        let right_inputs = self.connect(right_pending, n, Dispatch::Hash(right_keys.clone()));
        let (lb, rb) = (batch_schema(&ls), batch_schema(&rs));
        let instances = left_inputs
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
                    kind,
                    nulls_equal,
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
            .collect::<Result<Vec<_>>>()?;
        Ok(Built::plain(instances))
    }
}
