//! Interval joins: when a stored join row can leave state.
//!
//! A residual conjunct relating a time column of each side by a constant,
//! normalized to `A <= B + c` (from `<`, `<=`, `>`, `>=`, and so `BETWEEN`),
//! bounds which rows can still meet. A row of B's side at time `b` only
//! matches rows of A's side with `A <= b + c`, and every later row of A's
//! side has `A >= wm(A)` (its watermark). So once `b < wm(A) - c`, no later
//! row of the other side can match it; once also `b < wm(B)`, no later change
//! can retract it. Then it leaves state, and its output stays as it is —
//! which is what keeps an interval join's state bounded.
//!
//! Equal time keys (`l = r`, a window join) are the special case `c = 0`
//! both ways.
//!
//! Rows that arrive behind their own side's watermark on such a column are
//! late: the rows they would meet may already be gone, so they are dropped
//! and counted, as windowed operators do.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::late_rows::LateRows;

/// Rows of one side expire when `column < wm(other side, other_column) + offset`
/// and `column < wm(own side, column)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryRule {
    /// The side whose rows expire (0 = left, 1 = right).
    pub side: usize,
    /// Time column of that side.
    pub column: usize,
    /// Time column of the other side.
    pub other_column: usize,
    /// Nanoseconds added to the other side's watermark.
    pub offset: i64,
}

/// A column (index into the joined schema) plus a constant in nanoseconds.
fn shifted_column(expr: &Expr, joined: &DFSchema) -> Option<(usize, i64)> {
    match expr {
        Expr::Column(c) => {
            let i = joined.index_of_column(c).ok()?;
            matches!(
                joined.field(i).data_type(),
                datafusion::arrow::datatypes::DataType::Timestamp(..)
            )
            .then_some((i, 0))
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (i, base) = shifted_column(left, joined)?;
            let Expr::Literal(value, _) = right.as_ref() else {
                return None;
            };
            let n = interval_nanos(value)?;
            match op {
                Operator::Plus => base.checked_add(n).map(|o| (i, o)),
                Operator::Minus => base.checked_sub(n).map(|o| (i, o)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A constant interval's length in nanoseconds (months have none).
fn interval_nanos(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => i64::from(v.days)
            .checked_mul(86_400_000_000_000)?
            .checked_add(v.nanoseconds),
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days)
            .checked_mul(86_400_000_000_000)?
            .checked_add(i64::from(v.milliseconds).checked_mul(1_000_000)?),
        _ => None,
    }
}

/// The expiry rules a join filter over `joined` (left columns first,
/// `left_width` of them) implies.
pub fn expiry_rules(filter: &Expr, joined: &DFSchema, left_width: usize) -> Vec<ExpiryRule> {
    let mut rules = Vec::new();
    for conjunct in split_conjunction(filter) {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = conjunct else {
            continue;
        };
        // As `a + oa <= b + ob`.
        let (a, b) = match op {
            Operator::Lt | Operator::LtEq => (left, right),
            Operator::Gt | Operator::GtEq => (right, left),
            _ => continue,
        };
        let (Some((a, oa)), Some((b, ob))) = (shifted_column(a, joined), shifted_column(b, joined))
        else {
            continue;
        };
        let side = |i: usize| usize::from(i >= left_width);
        let local = |i: usize| if i >= left_width { i - left_width } else { i };
        if side(a) == side(b) {
            continue;
        }
        // a <= b + c: rows of b's side expire when b < wm(a) - c.
        let Some(offset) = oa.checked_sub(ob) else {
            continue;
        };
        rules.push(ExpiryRule {
            side: side(b),
            column: local(b),
            other_column: local(a),
            offset,
        });
    }
    rules
}

/// The expiry rules equal time keys imply: `l = r` is both `l <= r + 0`
/// and `r <= l + 0` (a window join on `window_start`, say).
pub fn key_rules(on: &[(Expr, Expr)], left: &DFSchema, right: &DFSchema) -> Vec<ExpiryRule> {
    let time_column = |e: &Expr, schema: &DFSchema| match e {
        Expr::Column(c) => schema.index_of_column(c).ok().filter(|&i| {
            matches!(
                schema.field(i).data_type(),
                datafusion::arrow::datatypes::DataType::Timestamp(..)
            )
        }),
        _ => None,
    };
    on.iter()
        .filter_map(|(l, r)| Some((time_column(l, left)?, time_column(r, right)?)))
        .flat_map(|(l, r)| {
            [(0, l, r), (1, r, l)].map(|(side, column, other_column)| ExpiryRule {
                side,
                column,
                other_column,
                offset: 0,
            })
        })
        .collect()
}

/// Per side, the rules on its time column: the first column ruled on.
fn rules_per_side(rules: Vec<ExpiryRule>) -> [Vec<ExpiryRule>; 2] {
    let mut per_side: [Vec<ExpiryRule>; 2] = [Vec::new(), Vec::new()];
    for rule in rules {
        let same_column = per_side[rule.side]
            .first()
            .is_none_or(|r| r.column == rule.column);
        if same_column {
            per_side[rule.side].push(rule);
        }
    }
    per_side
}

/// The time column of each side (left, right) whose rows expire under
/// `rules`, if any: the join's output carries a watermark on it (see
/// [`Expiry::output_watermark`]).
pub fn time_columns(rules: &[ExpiryRule]) -> [Option<usize>; 2] {
    let per_side = rules_per_side(rules.to_vec());
    [0, 1].map(|side| per_side[side].first().map(|r| r.column))
}

/// A stored row, by (join key, row), as the join's state shares them.
pub type StoredRow = (Arc<[u8]>, Arc<[u8]>);

/// Expiry state of an interval join: watermarks seen and stored rows by time.
#[derive(Debug)]
pub struct Expiry {
    /// Per side, the rules on its time column (the first one ruled on).
    rules: [Vec<ExpiryRule>; 2],
    /// Per side: column -> watermark in nanoseconds.
    watermarks: [HashMap<usize, i64>; 2],
    /// Per side: time -> the rows of that time stored, with their join
    /// keys, so expiry visits those rows alone. Entries of rows retracted
    /// since are left to expire with the rest (the join's own state says
    /// which rows are still there).
    stored: [BTreeMap<i64, Vec<StoredRow>>; 2],
    late: LateRows,
}

impl Expiry {
    /// Expiry by `rules`, or None when there are none.
    pub fn new(rules: Vec<ExpiryRule>, late: LateRows) -> Option<Self> {
        let per_side = rules_per_side(rules);
        (!per_side.iter().all(Vec::is_empty)).then(|| Self {
            rules: per_side,
            watermarks: [HashMap::new(), HashMap::new()],
            stored: [BTreeMap::new(), BTreeMap::new()],
            late,
        })
    }

    /// The watermark of `side`'s time column in the join's output: its
    /// stored rows below it have left state, and its later rows arrive at
    /// or above its own watermark (or are late, and dropped), so every
    /// later output row made of one of its rows is at or above it — a
    /// stored row's or a new one's. (For a window join, `l = r`, it is the
    /// smaller of the two sides' watermarks.)
    pub fn output_watermark(&self, side: usize) -> Option<i64> {
        self.threshold(side)
    }

    /// The time column of `side` whose rows expire, if any.
    pub fn time_column(&self, side: usize) -> Option<usize> {
        self.rules[side].first().map(|r| r.column)
    }

    /// Whether a row of `side` at `time` arrived behind its watermark.
    pub fn is_late(&self, side: usize, time: i64) -> bool {
        self.time_column(side)
            .and_then(|c| self.watermarks[side].get(&c))
            .is_some_and(|w| time < *w)
    }

    /// Where the late rows it finds go.
    pub fn late_rows(&mut self) -> &mut LateRows {
        &mut self.late
    }

    /// Records a watermark; returns whether any rule reads it.
    pub fn observe(&mut self, side: usize, column: usize, nanos: i64) -> bool {
        let used = self.rules[side].iter().any(|r| r.column == column)
            || self.rules[1 - side]
                .iter()
                .any(|r| r.other_column == column);
        if used {
            let w = self.watermarks[side].entry(column).or_insert(nanos);
            *w = (*w).max(nanos);
        }
        used
    }

    /// Every watermark recorded: (side, column, nanoseconds).
    pub fn watermarks(&self) -> Vec<(usize, usize, i64)> {
        let mut out: Vec<_> = (0..2)
            .flat_map(|side| {
                self.watermarks[side]
                    .iter()
                    .map(move |(column, w)| (side, *column, *w))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Rows of `side` below this time have expired.
    fn threshold(&self, side: usize) -> Option<i64> {
        self.rules[side]
            .iter()
            .filter_map(|r| {
                let other = self.watermarks[1 - side].get(&r.other_column)?;
                let own = self.watermarks[side].get(&r.column)?;
                Some(other.saturating_add(r.offset).min(*own))
            })
            .max()
    }

    /// Row `row` of `side` at `time` entered state under `key`.
    pub fn stored(&mut self, side: usize, time: i64, key: &Arc<[u8]>, row: &Arc<[u8]>) {
        self.stored[side]
            .entry(time)
            .or_default()
            .push((key.clone(), row.clone()));
    }

    /// Forgets the rows stored: the join's state indexes them by time
    /// from now on.
    pub fn forget_stored(&mut self) {
        self.stored = [BTreeMap::new(), BTreeMap::new()];
    }

    /// Takes the expiry threshold of `side` (rows with an earlier time have
    /// expired) and the rows stored at such times, by (key, row): some may
    /// have left state since.
    pub fn expired(&mut self, side: usize) -> Option<(i64, Vec<StoredRow>)> {
        let threshold = self.threshold(side)?;
        let later = self.stored[side].split_off(&threshold);
        let expired = std::mem::replace(&mut self.stored[side], later);
        Some((threshold, expired.into_values().flatten().collect()))
    }
}
