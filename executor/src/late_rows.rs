//! Late rows: rows a windowed aggregate, session window or interval join
//! drops because they arrived behind the watermark.
//!
//! They are always counted (`eddy_catalog.watermarks`); each operator's
//! count is checkpointed under [`LATE_COUNT_KEY`] beside its own state, so
//! the count goes on from where the checkpoint left it. A view created
//! `WITH (late_rows = 'name')` also keeps them, in a relation of that name
//! (a *late-rows relation*; DELETE clears rows from it) with the columns of
//! [`schema`]: which operator dropped the row, its change (`insert` /
//! `delete`), the row as the operator saw it, in JSON, and when it was
//! dropped.
//!
//! Exactly once: the fragment hands the rows an operator dropped during an
//! epoch (its [`crate::operator::Operator::late_rows`]) to that epoch's
//! checkpoint, next to the state that made it drop them, and
//! the coordinator applies them to the late-rows relation in the same
//! commit. So after a crash the rows of uncommitted epochs are dropped, and
//! kept, again, never twice; and a restarted pipeline's failed epoch leaves
//! nothing behind.
//!
//! Views and sinks read a late-rows relation like a view: the fragment also
//! sends an epoch's late rows to the relation's changelog before it
//! forwards that epoch's barrier, and the view's last fragment, which every
//! barrier reaches after all the others forwarded it, then ends the epoch
//! there (see [`LateOutput`]). So a reader takes in each epoch's late rows
//! in that epoch, as the coordinator commits them to the relation.

use std::sync::Arc;
use std::time::SystemTime;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::checkpoint::{StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::codec::{RowCodec, json_rows};
use crate::dispatch::Subscribers;
use crate::error::Result;
use crate::message::Op;
use crate::progress::Progress;
use crate::relation_rows::{Delta, add_change};

/// Set in a late-rows relation's id: views' ids are small, so the top bit
/// is free, and the id needs no catalog entry of its own.
const LATE_ROWS_BIT: u32 = 0x8000_0000;

/// The late-rows relation of view `view` has this id.
pub fn late_rows_id(view: u32) -> u32 {
    view | LATE_ROWS_BIT
}

/// The view whose late rows relation `id` keeps, if it is a late-rows relation.
pub fn late_rows_view(id: u32) -> Option<u32> {
    (id & LATE_ROWS_BIT != 0).then_some(id & !LATE_ROWS_BIT)
}

/// The columns of a late-rows relation.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("operator", DataType::Utf8, false),
        Field::new("op", DataType::Utf8, false),
        Field::new("data", DataType::Utf8, false),
        Field::new(
            "dropped_at",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
    ]))
}

/// Where a fragment of a view keeping late rows streams them: the
/// late-rows relation's changelog.
#[derive(Debug, Clone)]
pub struct LateOutput {
    pub changelog: Arc<Subscribers>,
    /// Whether this fragment ends each epoch there: the view's last
    /// fragment, which gets every barrier after each other fragment sent
    /// its late rows of that epoch.
    pub ends_epochs: bool,
}

/// The state key of an operator's late-row count: operators' own keys
/// start with a letter, so it meets none of them.
pub const LATE_COUNT_KEY: &[u8] = b"~late";

/// Where one operator of a relation's pipeline puts the late rows it drops.
#[derive(Debug)]
pub struct LateRows {
    relation: u32,
    progress: Arc<Progress>,
    /// Rows dropped, since the view started (checkpointed).
    count: u64,
    /// Whether `count` changed since the last checkpoint.
    counted: bool,
    kept: Option<Kept>,
}

/// The late rows an operator dropped since the last checkpoint.
#[derive(Debug)]
struct Kept {
    into: u32,
    operator: &'static str,
    codec: RowCodec,
    rows: Vec<RecordBatch>,
}

impl LateRows {
    /// Counts under `relation` in `progress`; with `keep_in`, also keeps
    /// the rows in that late-rows relation, as dropped by `operator`.
    pub fn new(
        relation: u32,
        progress: Arc<Progress>,
        keep_in: Option<u32>,
        operator: &'static str,
    ) -> Result<Self> {
        let kept = keep_in
            .map(|into| {
                Ok::<_, crate::error::ExecutorError>(Kept {
                    into,
                    operator,
                    codec: RowCodec::for_schema(&schema())?,
                    rows: Vec::new(),
                })
            })
            .transpose()?;
        Ok(Self {
            relation,
            progress,
            count: 0,
            counted: false,
            kept,
        })
    }

    /// The operator dropped rows `rows` of `batch` (with `ops`).
    pub fn dropped(&mut self, batch: &RecordBatch, ops: &[Op], rows: &[usize]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.progress.late(self.relation, rows.len() as u64);
        self.count += rows.len() as u64;
        self.counted = true;
        let Some(kept) = self.kept.as_mut() else {
            return Ok(());
        };
        let indices = rows.iter().map(|&i| i as u32).collect::<Vec<_>>();
        let taken = datafusion::arrow::compute::take_record_batch(
            batch,
            &datafusion::arrow::array::UInt32Array::from(indices),
        )?;
        let now = eddy_planner::system_time_nanos(SystemTime::now());
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![kept.operator; rows.len()])),
            Arc::new(StringArray::from_iter_values(rows.iter().map(
                |&i| match ops[i] {
                    Op::Insert => "insert",
                    Op::Delete => "delete",
                },
            ))),
            Arc::new(StringArray::from_iter_values(
                json_rows(&taken)?
                    .into_iter()
                    .map(|r| String::from_utf8_lossy(&r).into_owned()),
            )),
            Arc::new(TimestampNanosecondArray::from(vec![now; rows.len()])),
        ];
        kept.rows.push(RecordBatch::try_new(schema(), columns)?);
        Ok(())
    }

    /// Hands the count and the rows kept since the last checkpoint to this
    /// one; returns those rows, for the late-rows relation's readers.
    pub fn checkpoint(&mut self, state: &mut StateWriter<'_>) -> Result<Vec<RecordBatch>> {
        if std::mem::take(&mut self.counted) {
            state.put(
                LATE_COUNT_KEY,
                ValueWriter::new().i64(self.count as i64).finish(),
            );
        }
        let Some(kept) = self.kept.as_mut().filter(|k| !k.rows.is_empty()) else {
            return Ok(vec![]);
        };
        let rows = std::mem::take(&mut kept.rows);
        let mut delta = Delta::default();
        for batch in &rows {
            for row in kept.codec.encode(batch.columns())?.iter() {
                add_change(&mut delta, row.as_ref(), 1);
            }
        }
        state.late_rows(kept.into, delta);
        Ok(rows)
    }
    /// Takes its checkpointed count out of its operator's restored `entries`.
    pub fn restore(&mut self, entries: &mut StateEntries) -> Result<()> {
        let Some(i) = entries
            .iter()
            .position(|(k, _)| k.as_ref() == LATE_COUNT_KEY)
        else {
            return Ok(());
        };
        let (_, value) = entries.remove(i);
        self.count = ValueReader::new(&value).i64()?.max(0) as u64;
        self.progress.late(self.relation, self.count);
        Ok(())
    }
}
