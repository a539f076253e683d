//! Applying one side's change: late rows dropped, each row stored and
//! probed against the other side's rows of its key, joined rows emitted
//! (see the module above for degrees).

use datafusion::arrow::array::{Array, AsArray, BooleanArray, Int64Array};
use datafusion::arrow::compute::{filter, filter_record_batch};
use datafusion::arrow::datatypes::Int64Type;

use eddy_planner::time_nanos;

use super::state::Encoded;
use super::{HashJoin, OutRow};
use crate::error::Result;
use crate::message::{Op, StreamChunk};

impl HashJoin {
    /// Drops the rows of `chunk` that are late for an interval join, and
    /// gives the times of the rest (when `side` has expiring rows).
    pub(super) fn drop_late(
        &mut self,
        side: usize,
        chunk: StreamChunk,
    ) -> Result<(StreamChunk, Option<Int64Array>)> {
        let Some((expiry, column)) = self
            .expiry
            .as_mut()
            .and_then(|e| e.time_column(side).map(|c| (e, c)))
        else {
            return Ok((chunk, None));
        };
        let times = time_nanos(chunk.batch.column(column))?;
        let keep: BooleanArray = (0..times.len())
            .map(|i| Some(!(times.is_valid(i) && expiry.is_late(side, times.value(i)))))
            .collect();
        if keep.false_count() == 0 {
            return Ok((chunk, Some(times)));
        }
        let late: Vec<usize> = (0..keep.len()).filter(|&i| !keep.value(i)).collect();
        expiry
            .late_rows()
            .dropped(&chunk.batch, &chunk.ops, &late)?;
        let ops: Vec<Op> = chunk
            .ops
            .iter()
            .zip(keep.values().iter())
            .filter_map(|(op, k)| k.then_some(*op))
            .collect();
        let batch = filter_record_batch(&chunk.batch, &keep)?;
        let times = filter(&times, &keep)?.as_primitive::<Int64Type>().clone();
        Ok((
            StreamChunk {
                batch,
                ops: ops.into(),
            },
            Some(times),
        ))
    }

    /// Applies `chunk` to `side` (`times`: its rows' times, in an
    /// interval join), emitting the joined changes.
    pub(super) fn apply(
        &mut self,
        side: usize,
        chunk: StreamChunk,
        times: Option<Int64Array>,
        out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        let other = 1 - side;
        let keys = self.keys(side, &chunk.batch)?;
        let encoded = self.sides[side].codec.encode(chunk.batch.columns())?;
        let rows = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((k.as_ref()?, encoded.row(i).data())));
        let whole = self.reads_degrees();
        let read_whole = self.state.load(side, rows, whole)?;
        if whole && !read_whole.is_empty() {
            self.compute_degrees(&read_whole)?;
        }

        // Candidate pairs, probed against the other side before this chunk
        // (rows of one chunk are all on one side, so they never meet each other).
        let mut pair_row = Vec::new();
        let mut mine: Vec<&[u8]> = Vec::new();
        let mut theirs: Vec<Encoded> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(bucket) = key.as_ref().and_then(|k| self.state.bucket(other, k)) else {
                continue;
            };
            for row in bucket.keys() {
                pair_row.push(i);
                mine.push(encoded.row(i).data());
                theirs.push(row.clone());
            }
        }
        let theirs_refs: Vec<&[u8]> = theirs.iter().map(|r| r.as_ref()).collect();
        let passes = self.filter_pairs(side, &mine, &theirs_refs)?;

        let filtered = self.filtered_side();
        let mut output: Vec<OutRow<'_>> = Vec::new();
        let mut pair = 0;
        // Output rows borrow encoded rows; the other side's rows are owned by `theirs`.
        for (i, key) in keys.iter().enumerate() {
            let op = chunk.ops[i];
            let sign = op.sign();
            let my_row = encoded.row(i).data();
            if op == Op::Delete && self.expired_already(side, key.as_ref(), my_row) {
                while pair < pair_row.len() && pair_row[pair] == i {
                    pair += 1;
                }
                continue;
            }
            let mut matched = 0i64;
            while pair < pair_row.len() && pair_row[pair] == i {
                if passes[pair] {
                    let their_row = theirs_refs[pair];
                    // Read the entry and move its degree in one lookup.
                    let entry = key
                        .as_ref()
                        .and_then(|k| self.state.add_degree(other, k, their_row, sign))
                        .unwrap_or_default();
                    matched += entry.copies;
                    if filtered.is_none() {
                        let (l, r) = if side == 0 {
                            (my_row, their_row)
                        } else {
                            (their_row, my_row)
                        };
                        for _ in 0..entry.copies {
                            output.push((op, Some(l), Some(r)));
                        }
                    }
                    let before = self.shows_alone(other, entry.degree);
                    let after = self.shows_alone(other, entry.degree + sign);
                    if before != after {
                        let emit = if after { Op::Insert } else { Op::Delete };
                        for _ in 0..entry.copies {
                            output.push(one_side(other, emit, their_row));
                        }
                    }
                }
                pair += 1;
            }
            // This row on its own (padded, or as a semi / anti join result).
            if self.shows_alone(side, matched) {
                output.push(one_side(side, op, my_row));
            }
            // Store or retract the row itself.
            if let Some(key) = key {
                let time = times.as_ref().filter(|t| t.is_valid(i)).map(|t| t.value(i));
                let indexed = self.state.indexes_times();
                let (entry, was_stored, stored) = self.state.change(side, key, my_row, time);
                if !was_stored
                    && !indexed
                    && let (Some(expiry), Some(t)) = (self.expiry.as_mut(), time)
                {
                    expiry.stored(side, t, key, &stored);
                }
                entry.copies += sign;
                entry.degree = matched;
                if let Some(ttl) = self.ttl.as_mut() {
                    let stored_row = (side as u8, key.clone(), stored);
                    if entry.copies == 0 {
                        ttl.forget(&stored_row, entry.stamp);
                    } else {
                        let previous = was_stored.then_some(entry.stamp);
                        entry.stamp = ttl.touch(&stored_row, previous);
                    }
                }
                if entry.copies == 0 {
                    self.state.remove(side, key, my_row);
                }
            }
        }
        if !output.is_empty() {
            out.push(self.build(&output)?);
        }
        Ok(())
    }
}

/// An output row holding only `row`, on `side`.
fn one_side(side: usize, op: Op, row: &[u8]) -> OutRow<'_> {
    if side == 0 {
        (op, Some(row), None)
    } else {
        (op, None, Some(row))
    }
}
