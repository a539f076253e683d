//! Window table functions, rewritten into plain SQL before binding.
//!
//! `TUMBLE(rel, col, size [, offset])` becomes
//! `(SELECT *, ws AS window_start, ws + size AS window_end FROM rel)` with
//! `ws = date_bin(size, col - offset) + offset`; `HOP(rel, col, slide, size
//! [, offset])` becomes the `UNION ALL` of `ceil(size / slide)` such
//! projections, branch `j` giving each row its `j`-th most recent window.
//! The result is ordinary SQL, so one rewrite serves both the batch engine
//! (plain `SELECT`, and the oracle that checks a view against its query) and
//! the stream plan, where every `window_start` is a monotone function of the
//! time column and so carries its watermark.
//!
//! `SESSION(rel, col, gap [, key ...])` becomes a pair of window functions,
//! see [`crate::session`].
//!
//! The Flink spelling `TABLE(TUMBLE(TABLE rel, DESCRIPTOR(col), size))` is
//! turned into the short one on the token stream, before parsing.

use std::borrow::Cow;
use std::ops::ControlFlow;

use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Statement, TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{PlanError, Result};
use crate::session::{SESSION_END, SESSION_START};

/// Most windows one row of a `HOP` may belong to.
const MAX_HOP_WINDOWS: i64 = 1024;

/// Rewrites `TABLE(TUMBLE(TABLE t, DESCRIPTOR(c), ...))` (and HOP / SESSION)
/// into `TUMBLE(t, c, ...)`, and `TABLE(SESSION(TABLE t PARTITION BY k,
/// DESCRIPTOR(c), gap))` into `SESSION(t, c, gap, k)`. Text it cannot
/// tokenize is returned unchanged.
pub fn flink_to_eddy_spelling(sql: &str) -> Cow<'_, str> {
    if !sql.to_ascii_uppercase().contains("DESCRIPTOR") {
        return Cow::Borrowed(sql);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return Cow::Borrowed(sql);
    };
    let is_word =
        |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
    let significant = |tokens: &[Token], from: usize| {
        (from..tokens.len()).find(|&i| !matches!(tokens[i], Token::Whitespace(_)))
    };
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    // Depths (in `out`'s paren nesting) whose closing paren must be dropped.
    let mut drop_close: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    // Session partition keys, moved to the end of the call at this depth.
    let mut partition_keys: Vec<(usize, Vec<Token>)> = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        // TABLE ( TUMBLE|HOP|SESSION (  ->  TUMBLE|HOP|SESSION (
        if is_word(t, "TABLE")
            && let Some(p) = significant(&tokens, i + 1)
            && tokens[p] == Token::LParen
            && let Some(f) = significant(&tokens, p + 1)
            && ["TUMBLE", "HOP", "SESSION"]
                .iter()
                .any(|w| is_word(&tokens[f], w))
        {
            depth += 1;
            drop_close.push(depth);
            i = f;
            continue;
        }
        // ( TABLE name  ->  ( name   (the relation argument)
        if is_word(t, "TABLE") && matches!(out.last(), Some(Token::LParen)) {
            i += 1;
            continue;
        }
        // DESCRIPTOR ( col )  ->  col
        if is_word(t, "DESCRIPTOR")
            && let Some(p) = significant(&tokens, i + 1)
            && tokens[p] == Token::LParen
            && let Some(c) = significant(&tokens, p + 1)
            && let Some(r) = significant(&tokens, c + 1)
            && tokens[r] == Token::RParen
        {
            out.push(tokens[c].clone());
            i = r + 1;
            continue;
        }
        // name PARTITION BY k1, k2, DESCRIPTOR(...)  ->  name, DESCRIPTOR(...) ..., k1, k2
        if is_word(t, "PARTITION")
            && let Some(b) = significant(&tokens, i + 1)
            && is_word(&tokens[b], "BY")
            && let Some(end) = partition_keys_end(&tokens, b + 1)
        {
            partition_keys.push((depth, tokens[b + 1..end].to_vec()));
            i = end;
            continue;
        }
        match t {
            Token::LParen => depth += 1,
            Token::RParen => {
                if partition_keys.last().is_some_and(|(d, _)| *d == depth)
                    && let Some((_, keys)) = partition_keys.pop()
                {
                    out.push(Token::Comma);
                    out.extend(keys);
                }
                let dropped = drop_close.last() == Some(&depth);
                depth = depth.saturating_sub(1);
                if dropped {
                    drop_close.pop();
                    i += 1;
                    continue;
                }
            }
            _ => {}
        }
        out.push(t.clone());
        i += 1;
    }
    Cow::Owned(out.iter().map(|t| t.to_string()).collect())
}

/// Where the keys of `PARTITION BY k1, k2, DESCRIPTOR(..)` starting at
/// `from` end: the index of the comma before `DESCRIPTOR`.
fn partition_keys_end(tokens: &[Token], from: usize) -> Option<usize> {
    let mut nesting = 0usize;
    for i in from..tokens.len() {
        match &tokens[i] {
            Token::LParen => nesting += 1,
            Token::RParen if nesting == 0 => return None,
            Token::RParen => nesting -= 1,
            Token::Comma if nesting == 0 => {
                let next =
                    (i + 1..tokens.len()).find(|&j| !matches!(tokens[j], Token::Whitespace(_)));
                if next.is_some_and(|j| {
                    matches!(&tokens[j], Token::Word(w) if w.value.eq_ignore_ascii_case("DESCRIPTOR"))
                }) {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// Replaces every window table function in `stmt` by its plain-SQL form.
pub fn rewrite_windows(stmt: &mut Statement) -> Result<()> {
    struct Windows;
    impl VisitorMut for Windows {
        type Break = PlanError;
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<PlanError> {
            match window_subquery(factor) {
                Ok(Some(replacement)) => {
                    *factor = replacement;
                    ControlFlow::Continue(())
                }
                Ok(None) => ControlFlow::Continue(()),
                Err(e) => ControlFlow::Break(e),
            }
        }
    }
    match stmt.visit(&mut Windows) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn invalid(message: impl Into<String>) -> PlanError {
    PlanError::InvalidParameter(message.into())
}

/// An interval literal's length in nanoseconds.
fn interval_nanos(expr: &Expr, what: &str) -> Result<i64> {
    let text = match expr {
        Expr::Interval(interval) => {
            let value = match interval.value.as_ref() {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
                    _ => return Err(invalid(format!("{what} must be an interval literal"))),
                },
                _ => return Err(invalid(format!("{what} must be an interval literal"))),
            };
            match (&interval.leading_field, &interval.last_field) {
                (Some(field), None) => format!("{value} {field}"),
                (None, None) => value,
                _ => return Err(invalid(format!("{what}: use a single-unit interval"))),
            }
        }
        other => {
            return Err(invalid(format!(
                "{what} must be an interval literal such as INTERVAL '10' SECOND, got {other}"
            )));
        }
    };
    interval_text_nanos(&text).map_err(|e| invalid(format!("{what}: {e}")))
}

/// The length of interval text such as `10 seconds` in nanoseconds. Months
/// and years are refused (their length varies), and so is a length beyond
/// what nanoseconds in an `i64` hold.
pub fn interval_text_nanos(text: &str) -> std::result::Result<i64, String> {
    let interval = parse_interval_month_day_nano(text).map_err(|e| e.to_string())?;
    if interval.months != 0 {
        return Err("months and years are not allowed (their length varies)".into());
    }
    i64::from(interval.days)
        .checked_mul(86_400_000_000_000)
        .and_then(|d| d.checked_add(interval.nanoseconds))
        .ok_or_else(|| format!("interval '{text}' is too long"))
}

/// A duration as settings spell it: `500ms`, `10s`, `2 seconds`,
/// `1 minute`, or a bare number of milliseconds.
pub fn duration_text(text: &str) -> std::result::Result<std::time::Duration, String> {
    let text = text.trim();
    let number = |t: &str| t.trim().parse::<f64>().ok().filter(|n| n.is_finite());
    let seconds = if let Some(ms) = number(text) {
        ms / 1000.0
    } else if let Some(ms) = text.strip_suffix("ms").and_then(number) {
        ms / 1000.0
    } else if let Some(s) = text.strip_suffix('s').and_then(number) {
        s
    } else {
        let not_one = |_| format!("'{text}' is not a duration (say 500ms, 10s or 1 minute)");
        interval_text_nanos(text).map_err(not_one)? as f64 / 1e9
    };
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("'{text}' is negative or too long"))
}

/// A duration as settings show it (`1500ms`), which [`duration_text`]
/// reads back.
pub fn duration_setting(duration: std::time::Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// An interval literal of `nanos`, in the coarsest exact unit.
fn interval_sql(nanos: i64) -> String {
    let (n, unit) = [
        (1_000_000_000, "seconds"),
        (1_000_000, "milliseconds"),
        (1_000, "microseconds"),
    ]
    .into_iter()
    .find(|(d, _)| nanos % d == 0)
    .map(|(d, u)| (nanos / d, u))
    .unwrap_or((nanos, "nanoseconds"));
    format!("INTERVAL '{n} {unit}'")
}

fn expr_arg(arg: &FunctionArg) -> Option<&Expr> {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
        _ => None,
    }
}

fn window_subquery(factor: &TableFactor) -> Result<Option<TableFactor>> {
    let TableFactor::Table {
        name,
        alias,
        args: Some(args),
        ..
    } = factor
    else {
        return Ok(None);
    };
    let function = name.to_string().to_ascii_uppercase();
    if !["TUMBLE", "HOP", "SESSION"].contains(&function.as_str()) {
        return Ok(None);
    }
    let args: Vec<&Expr> = args
        .args
        .iter()
        .map(|a| expr_arg(a).ok_or_else(|| invalid(format!("{function}: unexpected argument {a}"))))
        .collect::<Result<_>>()?;
    let (relation, time) = match args.as_slice() {
        [Expr::Identifier(_) | Expr::CompoundIdentifier(_), t, ..] => {
            (args[0].to_string(), t.to_string())
        }
        _ => {
            return Err(invalid(format!(
                "{function}(relation, time_column, ...) needs a relation name and a time column"
            )));
        }
    };
    let alias = match alias {
        Some(a) => a.name.to_string(),
        None => match args[0] {
            Expr::CompoundIdentifier(parts) => {
                parts.last().map(|p| p.to_string()).unwrap_or_default()
            }
            other => other.to_string(),
        },
    };
    if function == "SESSION" {
        return session_subquery(&relation, &time, &args[2..], &alias).map(Some);
    }
    let durations: Vec<i64> = args[2..]
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let what = match (function.as_str(), i) {
                ("TUMBLE", 0) => "window size",
                ("HOP", 0) => "window slide",
                ("HOP", 1) => "window size",
                _ => "window offset",
            };
            interval_nanos(e, what)
        })
        .collect::<Result<_>>()?;
    let (slide, size, offset) = match (function.as_str(), durations.as_slice()) {
        ("TUMBLE", [size]) => (*size, *size, 0),
        ("TUMBLE", [size, offset]) => (*size, *size, *offset),
        ("HOP", [slide, size]) => (*slide, *size, 0),
        ("HOP", [slide, size, offset]) => (*slide, *size, *offset),
        _ => {
            return Err(invalid(
                "wrong number of arguments: TUMBLE(relation, time_column, size [, offset]) or HOP(relation, time_column, slide, size [, offset])",
            ));
        }
    };
    if slide <= 0 || size <= 0 {
        return Err(invalid(format!(
            "{function} window size and slide must be positive"
        )));
    }
    let windows = (size - 1) / slide + 1;
    if windows > MAX_HOP_WINDOWS {
        return Err(invalid(format!(
            "HOP window size / slide must be at most {MAX_HOP_WINDOWS}, got {windows}"
        )));
    }
    let shifted = if offset == 0 {
        format!("date_bin({}, {time})", interval_sql(slide))
    } else {
        let off = interval_sql(offset);
        format!("date_bin({}, {time} - {off}) + {off}", interval_sql(slide))
    };
    let branches: Vec<String> = (0..windows)
        .map(|j| {
            let start = if j == 0 {
                shifted.clone()
            } else {
                format!("{shifted} - {}", interval_sql(j * slide))
            };
            let end = format!("{start} + {}", interval_sql(size));
            // (j + 1) * slide > size, without overflow.
            let filter = if slide > size - j * slide {
                format!(" WHERE {time} < {end}")
            } else {
                String::new()
            };
            format!(
                "SELECT *, {start} AS window_start, {end} AS window_end FROM {relation}{filter}"
            )
        })
        .collect();
    let sql = format!(
        "SELECT * FROM ({}) AS {alias}",
        branches.join(" UNION ALL ")
    );
    subquery_factor(&sql, &function).map(Some)
}

/// `SESSION(relation, time, gap [, key ...])`: see [`crate::session`].
fn session_subquery(
    relation: &str,
    time: &str,
    rest: &[&Expr],
    alias: &str,
) -> Result<TableFactor> {
    let Some((gap, keys)) = rest.split_first() else {
        return Err(invalid(
            "wrong number of arguments: SESSION(relation, time_column, gap [, partition_column ...])",
        ));
    };
    let gap = interval_nanos(gap, "session gap")?;
    if gap <= 0 {
        return Err(invalid("SESSION gap must be positive"));
    }
    let over = if keys.is_empty() {
        String::new()
    } else {
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        format!("PARTITION BY {}", keys.join(", "))
    };
    let sql = format!(
        "SELECT * FROM (SELECT *, {SESSION_START}({time}, {gap}) OVER ({over}) AS window_start, \
         {SESSION_END}({time}, {gap}) OVER ({over}) AS window_end FROM {relation}) AS {alias}"
    );
    subquery_factor(&sql, "SESSION")
}

/// The FROM item of `SELECT * FROM (...) AS alias`.
fn subquery_factor(sql: &str, function: &str) -> Result<TableFactor> {
    let query = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_query())
        .map_err(|e| invalid(format!("{function}: {e}")))?;
    let datafusion::sql::sqlparser::ast::SetExpr::Select(select) = *query.body else {
        return Err(PlanError::Internal(
            "window rewrite produced no SELECT".into(),
        ));
    };
    select
        .from
        .into_iter()
        .next()
        .map(|t| t.relation)
        .ok_or_else(|| PlanError::Internal("window rewrite produced no FROM".into()))
}
