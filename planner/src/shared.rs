//! Subplans a stream plan computes more than once.
//!
//! A query may repeat a stateful subquery: Nexmark q5 counts bids per
//! (auction, window) on both sides of its join, grouping once by
//! `window_start, auction` and once by `auction, window_start`. Such a
//! subplan is better run once, feeding every use. Two subplans compute
//! the same rows when they are equal, or when they are aggregates over
//! equal inputs with equal calls whose groups differ only in order; then
//! one's columns are the other's, permuted.
//!
//! Invariants of [`shared_subplans`]:
//! - Only subplans holding state are shared: projections and filters of a
//!   scan cost less to repeat than to pass through another channel.
//! - A repeat is found in pre-order and its own inputs are not searched
//!   again (the whole repeat is computed by its first occurrence); the
//!   first occurrence's inputs are, so a part repeated elsewhere too is
//!   shared on its own.
//! - Every use names a first occurrence that is visited before it in
//!   pre-order, and never inside another repeat.

use crate::StreamNode;

/// A use of a subplan that an earlier node of the same plan computes.
#[derive(Debug, Clone)]
pub struct SharedSubplan<'a> {
    /// The repeated subplan.
    pub node: &'a StreamNode,
    /// Its first occurrence, which computes it for every use.
    pub computed_by: &'a StreamNode,
    /// For each column of the repeat, the column of the first occurrence
    /// holding it.
    pub columns: Vec<usize>,
}

/// The repeats in `root`, in pre-order (see the module docs).
pub fn shared_subplans(root: &StreamNode) -> Vec<SharedSubplan<'_>> {
    let mut first = Vec::new();
    let mut repeats = Vec::new();
    visit(root, &mut first, &mut repeats);
    repeats
}

fn visit<'a>(
    node: &'a StreamNode,
    first: &mut Vec<&'a StreamNode>,
    repeats: &mut Vec<SharedSubplan<'a>>,
) {
    if holds_state(node) {
        let earlier = first
            .iter()
            .find_map(|f| same_rows(node, f).map(|columns| (*f, columns)));
        if let Some((computed_by, columns)) = earlier {
            repeats.push(SharedSubplan {
                node,
                computed_by,
                columns,
            });
            return;
        }
        first.push(node);
    }
    for input in node.inputs() {
        visit(input, first, repeats);
    }
}

/// Whether `node` or anything it reads keeps state.
fn holds_state(node: &StreamNode) -> bool {
    node.is_stateful() || node.inputs().into_iter().any(holds_state)
}

/// If `a` computes the rows `b` does, for each column of `a` the column of
/// `b` holding it.
fn same_rows(a: &StreamNode, b: &StreamNode) -> Option<Vec<usize>> {
    if a == b {
        return Some((0..a.schema().fields().len()).collect());
    }
    let (
        StreamNode::Aggregate {
            input: a_input,
            group: a_group,
            calls: a_calls,
            schema: a_schema,
        },
        StreamNode::Aggregate {
            input: b_input,
            group: b_group,
            calls: b_calls,
            schema: b_schema,
        },
    ) = (a, b)
    else {
        return None;
    };
    if a_input != b_input || a_calls != b_calls || a_group.len() != b_group.len() {
        return None;
    }
    let mut taken = vec![false; b_group.len()];
    let mut columns = Vec::with_capacity(a_schema.fields().len());
    for expr in a_group {
        let j = (0..b_group.len()).find(|&j| !taken[j] && &b_group[j] == expr)?;
        taken[j] = true;
        columns.push(j);
    }
    columns.extend(a_group.len()..a_schema.fields().len());
    let types_match = columns
        .iter()
        .enumerate()
        .all(|(i, &j)| a_schema.field(i).data_type() == b_schema.field(j).data_type());
    types_match.then_some(columns)
}
