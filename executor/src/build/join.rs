//! Building joins: one instance per hash partition of the join key (one for
//! a join without keys), each fed by both sides. Time bounds in the filter
//! between watermarked columns make it an interval join that cleans its
//! state by watermark.

use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, ExprSchemable};

use eddy_planner::{JoinKind, StreamNode};

use super::{Built, Instance, PipelineBuilder, batch_schema, cast_to, physical};
use crate::codec::RowCodec;
use crate::dispatch::Dispatch;
use crate::error::Result;
use crate::join::{
    Expiry, HashJoin, JoinSide, expiry_rules, key_rules, time_columns, watermark_columns,
};

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
        let mut rules = key_rules(on, &ls, &rs);
        if let Some(f) = filter {
            rules.extend(expiry_rules(f, &joined, ls.fields().len()));
        }
        let filter = filter.map(|f| physical(f, &joined)).transpose()?;
        let n = self.instances_for(!on.is_empty());
        let left_built = self.build(left)?;
        let right_built = self.build(right)?;
        // Only rules on columns with watermarks on both sides can ever fire.
        let watermarked = [&left_built.watermarks, &right_built.watermarks];
        let rules: Vec<_> = rules
            .into_iter()
            .filter(|r| {
                watermarked[r.side].contains(&r.column)
                    && watermarked[1 - r.side].contains(&r.other_column)
            })
            .collect();
        // Without deletions on either side, only a padded row (outer) or a
        // lost match (anti) is retracted, and a TTL retracts what expires.
        let append_only = left_built.append_only
            && right_built.append_only
            && self.options.state_ttl.is_none()
            && matches!(
                kind,
                JoinKind::Inner | JoinKind::LeftSemi | JoinKind::RightSemi
            );
        let (left_pending, right_pending) = (left_built.instances, right_built.instances);
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
                    Expiry::new(rules.clone(), self.late_rows("interval join")?),
                )?
                .with_state_ttl(self.options.state_ttl)
                .with_state_config(self.options.state);
                let ports = [vec![0; l.len()], vec![1; r.len()]].concat();
                Ok(Instance {
                    inputs: l.into_iter().chain(r).collect(),
                    ports,
                    ops: vec![Box::new(op)],
                    split: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // The time columns whose rows expire carry a watermark, but a TTL
        // retracts rows of any time.
        let watermarks = match self.options.state_ttl {
            None => watermark_columns(kind, ls.fields().len(), time_columns(&rules)),
            Some(_) => Vec::new(),
        };
        Ok(Built {
            instances,
            watermarks: watermarks.into_iter().map(|(column, _)| column).collect(),
            append_only,
        })
    }
}
