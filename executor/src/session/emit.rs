//! What a session window emits at the end of an epoch: for each partition
//! changes touched, the difference between its sessions as last emitted
//! and as they are (see the module docs of [`super`]).

use std::collections::BTreeMap;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};

use eddy_planner::{SessionBound, nanos_to_time};

use super::{Encoded, SessionWindow, Span, Touched, containing};
use crate::error::Result;
use crate::message::{Op, StreamChunk};

/// Sessions of `a` that `b` does not have, bounds and all.
fn changed(a: &BTreeMap<i64, i64>, b: &BTreeMap<i64, i64>) -> Vec<Span> {
    a.iter()
        .filter(|(first, last)| b.get(first) != Some(last))
        .map(|(f, l)| (*f, *l))
        .collect()
}

impl SessionWindow {
    /// The output changes of partition `key` since it was last emitted:
    /// (row, session, count) with a signed count.
    fn settle(
        &self,
        key: &Encoded,
        touched: &Touched,
        out: &mut Vec<(Encoded, Option<Span>, i64)>,
    ) {
        let Touched { before, delta } = touched;
        let partition = self.partitions.get(key);
        let no_sessions = BTreeMap::new();
        let after = partition.map_or(&no_sessions, |p| &p.sessions);
        let (gone, new) = (changed(before, after), changed(after, before));
        let now = |t: i64, row: &Encoded| {
            partition
                .and_then(|p| p.rows.get(&t))
                .and_then(|rows| rows.get(row))
                .copied()
                .unwrap_or(0)
        };
        let change = |t: i64, row: &Encoded| {
            delta
                .get(&t)
                .and_then(|rows| rows.get(row))
                .copied()
                .unwrap_or(0)
        };
        if let Some(p) = partition {
            for span in &new {
                for rows in p.rows.range(span.0..=span.1).map(|(_, r)| r) {
                    out.extend(rows.iter().map(|(row, n)| (row.clone(), Some(*span), *n)));
                }
            }
            // Rows still here that were in a changed session: their count before.
            for span in &gone {
                for (t, rows) in p.rows.range(span.0..=span.1) {
                    for (row, n) in rows {
                        let was = n - change(*t, row);
                        if was > 0 {
                            out.push((row.clone(), Some(*span), -was));
                        }
                    }
                }
            }
        }
        for (t, rows) in delta {
            let Some(old) = containing(before, *t) else {
                // In no session before: only in a new one, emitted above.
                continue;
            };
            let session_changed = gone.contains(&old);
            for (row, d) in rows.iter().filter(|(_, d)| **d != 0) {
                // In an unchanged session a row's own change is its output;
                // in a changed one, only rows gone entirely are left to retract.
                if !session_changed || now(*t, row) == 0 {
                    out.push((row.clone(), Some(old), *d));
                }
            }
        }
    }

    pub(super) fn flush(&mut self, out: &mut Vec<StreamChunk>) -> Result<()> {
        let mut changes: Vec<(Encoded, Option<Span>, i64)> = self
            .untimed
            .drain()
            .map(|(row, n)| (row, None, n))
            .collect();
        let touched = std::mem::take(&mut self.touched);
        for (key, t) in &touched {
            self.settle(key, t, &mut changes);
        }
        if changes.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut rows: Vec<&[u8]> = Vec::new();
        let mut spans: Vec<Option<Span>> = Vec::new();
        for (row, span, n) in &changes {
            let op = if *n > 0 { Op::Insert } else { Op::Delete };
            for _ in 0..n.unsigned_abs() {
                ops.push(op);
                rows.push(row);
                spans.push(*span);
            }
        }
        let mut columns: Vec<ArrayRef> = self.row_codec.decode(rows)?;
        for bound in &self.bounds {
            let nanos: Int64Array = spans
                .iter()
                .map(|s| {
                    s.map(|s| match bound {
                        SessionBound::Start => s.0,
                        SessionBound::End => self.end(s),
                    })
                })
                .collect();
            columns.push(nanos_to_time(nanos, &self.time_type)?);
        }
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(ops.len()));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        out.push(StreamChunk {
            batch,
            ops: ops.into(),
        });
        Ok(())
    }
}
