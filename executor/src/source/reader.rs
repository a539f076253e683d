//! One view's reader of one split of a source.
//!
//! It interleaves generated chunks (paced if the source says so),
//! watermarks, and barriers forwarded from the runtime's ticks. Barriers
//! cut the split where the split's [`SplitClock`] says, so every view is at
//! the same position of the split at every epoch; forwarding one hands the
//! checkpoint this reader's position and watermark. A reader whose
//! watermark ran too far ahead of the view's other readers of the source
//! waits for them (see [`SplitAlignment`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::scalar::ScalarValue;
use tokio::sync::RwLock;
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;

use super::{
    CHUNK_ROWS, IDLE_AFTER, SourceSpec, SplitAlignment, SplitClock, SplitReader, end_of_time,
};
use crate::checkpoint::{FragmentCheckpoint, OWN_STATE, StateEntries, ValueReader, ValueWriter};
use crate::coordinator::Coordinator;
use crate::dispatch::Subscribers;
use crate::error::Result;
use crate::eval::{Evaluator, RowErrors};
use crate::message::{Barrier, Message, Watermark};
use crate::progress::Progress;

/// One running split reader.
pub(crate) struct Reader {
    pub relation: u32,
    pub spec: Arc<SourceSpec>,
    /// Its checkpoint scope (see [`crate::checkpoint`]).
    pub scope: u32,
    /// Which split.
    pub index: usize,
    pub split: Box<dyn SplitReader>,
    pub splits: usize,
    pub clock: Arc<SplitClock>,
    /// Keeps the watermarks of the view's readers of the source (or of
    /// its alignment group) together.
    pub alignment: Arc<SplitAlignment>,
    /// This split's number in `alignment`.
    pub alignment_slot: usize,
    /// Rows of the split read so far (from a checkpoint, on recovery).
    pub position: u64,
    /// The last watermark sent (from a checkpoint, on recovery).
    pub watermark: Option<ScalarValue>,
    /// The processing time rows read now get, with a `PROCTIME()` column
    /// (nanoseconds): the reader's start, then each barrier's time (never
    /// going back). It is also that column's watermark.
    pub proctime: i64,
    pub ticks: Receiver<Message>,
    pub output: Arc<Subscribers>,
    pub gate: Arc<RwLock<()>>,
    /// False while the runtime recovers: barriers pass, no rows are read
    /// beyond the barriers' positions.
    pub running: tokio::sync::watch::Receiver<bool>,
    pub evaluator: Evaluator,
    pub progress: Arc<Progress>,
    /// Told when the split fails, so the view reports it.
    pub coordinator: Arc<Coordinator>,
    /// Which run of the relation's pipeline it belongs to (see [`crate::fragment::Fragment`]).
    pub incarnation: u64,
    /// The split ended (or failed): only barriers pass from now on.
    pub exhausted: bool,
    /// Rows whose watermark expression failed.
    pub errors: RowErrors,
}

/// Unregisters a reader from its split's clock when it ends.
struct Registration(Arc<SplitClock>, u64);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}

impl Reader {
    /// Takes up the position a checkpoint recorded for this reader.
    pub fn restore(&mut self, entries: StateEntries) -> Result<()> {
        let Some((_, value)) = entries.first() else {
            return Ok(());
        };
        let mut value = ValueReader::new(value);
        self.position = value.i64()? as u64;
        let watermark = value.opt_i64()?;
        self.split = self.spec.split(self.index, self.splits, self.position)?;
        if let (Some(w), Some(spec)) = (watermark, &self.spec.watermark) {
            let data_type = self.spec.schema.field(spec.column).data_type();
            self.watermark = Some(ScalarValue::Int64(Some(w)).cast_to(data_type)?);
        }
        Ok(())
    }

    /// Takes up the split's own checkpointed state (after [`Reader::restore`]).
    pub fn restore_split(&mut self, entries: StateEntries) -> Result<()> {
        self.split.restore(entries)
    }

    /// Sends `candidate` as the watermark if it raises it (or `force`).
    async fn emit_watermark(&mut self, candidate: ScalarValue, force: bool) {
        let Some(spec) = &self.spec.watermark else {
            return;
        };
        let raises = !candidate.is_null() && self.watermark.as_ref().is_none_or(|c| *c < candidate);
        if !raises && !force {
            return;
        }
        self.watermark = Some(candidate.clone());
        self.send_watermark(spec.column, candidate).await;
    }

    /// Sends the processing time as its column's watermark, if the source has one.
    async fn emit_processing_time(&mut self, value: Option<ScalarValue>) {
        let Some(column) = self.spec.proctime else {
            return;
        };
        match value.map_or_else(|| self.spec.processing_time(self.proctime), Ok) {
            Ok(value) => self.send_watermark(column, value).await,
            Err(e) => self.fail(e),
        }
    }

    async fn send_watermark(&mut self, column: usize, value: ScalarValue) {
        let name = self.spec.schema.field(column).name().clone();
        self.progress.watermark(self.spec.id, &name, &value);
        self.output
            .send(Message::Watermark(Watermark { column, value }))
            .await;
    }

    /// Takes what [`SplitReader::available`] said: the position readable
    /// rows reach, or `None` once the split is done (reported here: the end
    /// of time as watermark, or the failure).
    async fn settle(&mut self, available: Result<Option<u64>>) -> Option<u64> {
        match available {
            Ok(Some(end)) => Some(end),
            Ok(None) => {
                self.progress.reader_finished(self.relation, self.spec.id);
                self.alignment.finished(self.alignment_slot);
                if let Some(end) = self
                    .spec
                    .watermark
                    .as_ref()
                    .and_then(|w| end_of_time(self.spec.schema.field(w.column).data_type()))
                {
                    self.emit_watermark(end, false).await;
                }
                if let Some(column) = self.spec.proctime {
                    let end = end_of_time(self.spec.schema.field(column).data_type());
                    self.emit_processing_time(end).await;
                }
                None
            }
            Err(e) => {
                self.fail(e);
                self.alignment.finished(self.alignment_slot);
                None
            }
        }
    }

    /// The last watermark sent, as a number in its column's units.
    fn raw_watermark(&self) -> Option<i64> {
        match self.watermark.as_ref()?.cast_to(&DataType::Int64).ok()? {
            ScalarValue::Int64(v) => v,
            _ => None,
        }
    }

    /// Fails the view visibly (queries on it say why); its pipeline keeps
    /// forwarding barriers for everyone else.
    fn fail(&self, e: crate::error::ExecutorError) {
        tracing::warn!(relation = self.relation, error = %e, "source split failed");
        self.coordinator.fail_pipeline(
            self.relation,
            self.incarnation,
            format!("reading the source failed: {e}"),
        );
    }

    /// Reads and sends the rows up to position `end`; false if the split failed.
    async fn read_to(&mut self, end: u64) -> bool {
        self.alignment.reading(self.alignment_slot);
        let read = self.split.read(self.position, end).and_then(|mut chunk| {
            chunk.batch = self.spec.with_processing_time(chunk.batch, self.proctime)?;
            Ok(chunk)
        });
        let chunk = match read {
            Ok(chunk) => chunk,
            Err(e) => {
                self.fail(e);
                return false;
            }
        };
        self.position = end;
        if chunk.is_empty() {
            return true;
        }
        self.progress
            .rows_read(self.relation, self.spec.id, chunk.len() as u64);
        RowErrors::discard_noted();
        let candidate = match &self.spec.watermark {
            Some(spec) => self
                .evaluator
                .eval(&spec.expr, &chunk.batch)
                .ok()
                .and_then(|a| max_value(&a)),
            None => None,
        };
        self.errors.take_noted();
        self.output.send(Message::Chunk(chunk)).await;
        if let Some(candidate) = candidate {
            self.emit_watermark(candidate, false).await;
        }
        let watermark = self.raw_watermark().map(|w| self.spec.alignment.nanos(w));
        self.alignment.read(self.alignment_slot, watermark);
        true
    }

    /// Forwards a message from the runtime's ticks. A barrier goes out at
    /// its boundary (reading up to it first), after handing the checkpoint
    /// this reader's position and watermark.
    async fn forward(&mut self, msg: Message, id: u64) {
        let Message::Barrier(Barrier { epoch, now }) = &msg else {
            self.output.send(msg).await;
            return;
        };
        let (epoch, now) = (*epoch, *now);
        let boundary = self.clock.boundary(epoch, self.position);
        // Catching up takes no gate: these rows belong to the epoch the
        // barrier ends, which a quiescing DDL statement waits for anyway.
        while !self.exhausted && self.position < boundary {
            let max = (boundary - self.position).min(CHUNK_ROWS as u64) as usize;
            let available = self.split.available(self.position, max).await;
            self.exhausted = match self.settle(available).await {
                Some(end) => !self.read_to(end.min(boundary)).await,
                None => true,
            };
        }
        let raw = self.raw_watermark();
        let mut checkpoint = FragmentCheckpoint::default();
        self.split.checkpoint(&mut checkpoint.scope(self.scope, 1));
        self.errors
            .checkpoint(&mut checkpoint.scope(self.scope, OWN_STATE));
        checkpoint.scope(self.scope, 0).put(
            &[],
            ValueWriter::new()
                .i64(self.position as i64)
                .opt_i64(raw)
                .finish(),
        );
        self.coordinator
            .stage(self.relation, self.incarnation, epoch, checkpoint);
        self.output.send(msg).await;
        self.clock.forwarded(id, epoch);
        // Rows after the barrier are read at its time or later.
        if now > self.proctime && !self.exhausted {
            self.proctime = now;
            self.emit_processing_time(None).await;
        }
    }

    /// Forwards what the ticks channel gave; false once it is closed (the
    /// view is dropped).
    async fn tick(&mut self, msg: Option<Message>, id: u64) -> bool {
        match msg {
            Some(msg) => {
                self.forward(msg, id).await;
                true
            }
            None => false,
        }
    }

    /// Runs until the view that owns it is dropped.
    pub async fn run(mut self) {
        let id = self.clock.register(self.position);
        let _registration = Registration(self.clock.clone(), id);
        let pace = self.spec.rows_per_second.map(|r| r / self.splits as f64);
        let started = Instant::now();
        let start = self.position;
        self.progress.reader_started(self.relation, self.spec.id);
        if let Some(restored) = self.watermark.clone() {
            self.emit_watermark(restored, true).await;
        }
        self.emit_processing_time(None).await;
        loop {
            // Barriers first: an epoch never waits for reading.
            match self.ticks.try_recv() {
                Ok(msg) => {
                    self.forward(msg, id).await;
                    continue;
                }
                Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => {}
            }
            if self.output.is_empty() {
                return;
            }
            let paused = !*self.running.borrow();
            let produced = self.position - start;
            let pacing = pace
                .map(|p| {
                    let ahead = produced as f64 / p - started.elapsed().as_secs_f64();
                    Duration::try_from_secs_f64(ahead.max(0.0)).unwrap_or(Duration::MAX)
                })
                .filter(|d| !d.is_zero());
            let blocked = self.exhausted || paused;
            // Taken before asking, so a rise meanwhile is not missed.
            let alignment = self.alignment.clone();
            let advanced = alignment.advanced();
            let held = !blocked && pacing.is_none() && alignment.is_ahead(self.alignment_slot);
            let mut end = None;
            if !blocked && pacing.is_none() && !held {
                let max = match pace {
                    Some(p) => ((p / 10.0) as usize).clamp(1, CHUNK_ROWS),
                    None => CHUNK_ROWS,
                };
                // Waiting for rows (a quiet Kafka partition) never holds up a barrier.
                let available = tokio::select! {
                    biased;
                    msg = self.ticks.recv() => {
                        if !self.tick(msg, id).await {
                            return;
                        }
                        continue;
                    }
                    available = self.split.available(self.position, max) => available,
                };
                let Some(readable) = self.settle(available).await else {
                    self.exhausted = true;
                    continue;
                };
                end = Some(self.clock.claim(id, self.position, readable));
            }
            let Some(end) = end.filter(|&end| end > self.position) else {
                // Wait for the next barrier (or the pace, the slowest
                // split, or the end of recovery). Held, look again once the
                // slowest may have gone idle.
                let wait = match pacing {
                    Some(d) if !blocked => d,
                    _ if held => IDLE_AFTER,
                    _ => Duration::from_secs(3600),
                };
                tokio::select! {
                    msg = self.ticks.recv() => if !self.tick(msg, id).await {
                        return;
                    },
                    _ = self.running.changed(), if paused => {}
                    _ = advanced, if held => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            };
            let gate = self.gate.clone();
            let guard = tokio::select! {
                biased;
                msg = self.ticks.recv() => {
                    if !self.tick(msg, id).await {
                        return;
                    }
                    continue;
                }
                guard = gate.read() => guard,
            };
            self.exhausted = !self.read_to(end).await;
            drop(guard);
        }
    }
}

/// The largest non-NULL value of `array` (a time column).
fn max_value(array: &ArrayRef) -> Option<ScalarValue> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let ints = datafusion::arrow::compute::cast(array, &DataType::Int64).ok()?;
    let max = datafusion::arrow::compute::max(ints.as_primitive::<Int64Type>())?;
    ScalarValue::Int64(Some(max))
        .cast_to(array.data_type())
        .ok()
}
