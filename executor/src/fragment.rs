//! A fragment: one task running a chain of operators between its inputs
//! and its output.
//!
//! ```text
//!  inputs (aligned) -> op[0] -> op[1] -> ... -> Output (broadcast | hash | subscribers)
//! ```
//!
//! Barriers run through the chain in order (each operator may flush held-back
//! rows into the next) and are then forwarded. Watermarks run through it the
//! same way, each operator translating them for its output. If an operator fails, the
//! fragment reports the failure for its relation and from then on forwards
//! barriers only, so every other pipeline keeps committing epochs.
//!
//! After a barrier ran through the chain, every operator's changed state
//! goes to the coordinator for the epoch's checkpoint before the barrier is
//! forwarded (see [`crate::checkpoint`]); so do the rows its operators kept
//! as late, which then go to the late-rows relation's readers too (see
//! [`crate::late_rows`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::RecordBatch;
use tracing::warn;

use crate::checkpoint::{FragmentCheckpoint, OWN_STATE};
use crate::coordinator::Coordinator;
use crate::dispatch::Output;
use crate::error::Result;
use crate::eval::RowErrors;
use crate::input::AlignedInput;
use crate::late_rows::LateOutput;
use crate::message::{Barrier, Message, StreamChunk, Watermark};
use crate::operator::Operator;
use crate::operator::StateSize;
use crate::progress::Progress;

/// One running unit of a pipeline.
#[derive(Debug)]
pub struct Fragment {
    /// Relation whose pipeline this is (for failure reports).
    pub relation: u32,
    /// Inputs, barrier-aligned.
    pub input: AlignedInput,
    /// Operator chain.
    pub ops: Vec<Box<dyn Operator>>,
    /// Where results go.
    pub output: Output,
    /// Receives failure reports.
    pub coordinator: Arc<Coordinator>,
    /// Which run of the relation's pipeline this fragment belongs to: the
    /// coordinator ignores what a stopped run still hands over.
    pub incarnation: u64,
    /// Set when the relation failed: the run then only forwards barriers
    /// (so nothing downstream waits), until it is stopped.
    pub halted: Arc<AtomicBool>,
    /// This fragment's number within its relation's pipeline.
    pub index: usize,
    /// Where its operators' state is in checkpoints (see [`crate::checkpoint`]).
    pub scope: u32,
    /// Receives state sizes, at every barrier.
    pub progress: Arc<Progress>,
    /// Rows whose expressions failed in its operators.
    pub errors: RowErrors,
    /// Where its view's late rows are read, if it keeps them.
    pub late: Option<LateOutput>,
}

fn push(
    ops: &mut [Box<dyn Operator>],
    port: usize,
    chunk: StreamChunk,
    out: &mut Vec<StreamChunk>,
) -> Result<()> {
    match ops.split_first_mut() {
        None => out.push(chunk),
        Some((first, rest)) => {
            let mut produced = Vec::new();
            first.process(port, chunk, &mut produced)?;
            for c in produced {
                push(rest, 0, c, out)?;
            }
        }
    }
    Ok(())
}

fn barrier(ops: &mut [Box<dyn Operator>], b: Barrier, out: &mut Vec<StreamChunk>) -> Result<()> {
    if let Some((first, rest)) = ops.split_first_mut() {
        let mut produced = Vec::new();
        first.on_barrier(b, &mut produced)?;
        for c in produced {
            push(rest, 0, c, out)?;
        }
        barrier(rest, b, out)?;
    }
    Ok(())
}

fn watermark(
    ops: &mut [Box<dyn Operator>],
    port: usize,
    w: Watermark,
    out: &mut Vec<StreamChunk>,
    forward: &mut Vec<Watermark>,
) -> Result<()> {
    let Some((first, rest)) = ops.split_first_mut() else {
        forward.push(w);
        return Ok(());
    };
    let mut produced = Vec::new();
    let derived = first.on_watermark(port, w, &mut produced)?;
    for c in produced {
        push(rest, 0, c, out)?;
    }
    for d in derived {
        watermark(rest, 0, d, out, forward)?;
    }
    Ok(())
}

impl Fragment {
    /// Hands the state every operator changed during `epoch` to the
    /// coordinator. Returns the rows its operators kept as late.
    fn checkpoint(&mut self, epoch: u64) -> Result<Vec<RecordBatch>> {
        let mut checkpoint = FragmentCheckpoint::default();
        let mut late_rows = Vec::new();
        for (i, op) in self.ops.iter_mut().enumerate() {
            let mut state = checkpoint.scope(self.scope, i as u16);
            if let Some(late) = op.late_rows() {
                late_rows.extend(late.checkpoint(&mut state)?);
            }
            op.checkpoint(&mut state);
        }
        self.errors
            .checkpoint(&mut checkpoint.scope(self.scope, OWN_STATE));
        if !checkpoint.is_empty() {
            self.coordinator
                .stage(self.relation, self.incarnation, epoch, checkpoint);
        }
        Ok(late_rows)
    }

    fn report_state(&self) {
        let sizes: Vec<StateSize> = self.ops.iter().filter_map(|op| op.state_size()).collect();
        if !sizes.is_empty() {
            self.progress.state(self.relation, self.index, sizes);
        }
    }

    /// Runs until every input is closed or no downstream is left.
    pub async fn run(mut self) {
        let mut failed = false;
        while let Some((index, msg)) = self.input.next().await {
            failed |= self.halted.load(Ordering::Relaxed);
            let mut out = Vec::new();
            let mut forward = None;
            let mut watermarks = Vec::new();
            let mut late_rows = Vec::new();
            let port = self.input.port(index);
            RowErrors::discard_noted();
            let step = match msg {
                Message::Chunk(_) | Message::Watermark(_) if failed => Ok(()),
                Message::Chunk(c) => push(&mut self.ops, port, c, &mut out),
                Message::Watermark(w) => {
                    watermark(&mut self.ops, port, w, &mut out, &mut watermarks)
                }
                Message::Barrier(b) => {
                    forward = Some(b);
                    if failed {
                        Ok(())
                    } else {
                        let done = barrier(&mut self.ops, b, &mut out);
                        self.errors.take_noted();
                        let done = done.and_then(|()| {
                            late_rows = self.checkpoint(b.epoch)?;
                            Ok(())
                        });
                        self.report_state();
                        done
                    }
                }
            };
            self.errors.take_noted();
            if let Err(e) = step {
                warn!(relation = self.relation, error = %e, "pipeline failed");
                self.coordinator
                    .fail_pipeline(self.relation, self.incarnation, e.to_string());
                failed = true;
                out.clear();
                watermarks.clear();
                late_rows.clear();
            }
            if let Some(late) = &self.late {
                for batch in late_rows {
                    late.changelog
                        .send(Message::Chunk(StreamChunk::inserts(batch)))
                        .await;
                }
            }
            let messages = out
                .into_iter()
                .filter(|c| !c.is_empty())
                .map(Message::Chunk)
                .chain(watermarks.into_iter().map(Message::Watermark));
            for msg in messages {
                if !matches!(self.output.send(msg).await, Ok(true)) {
                    return;
                }
            }
            if let Some(b) = forward {
                if !matches!(self.output.send(Message::Barrier(b)).await, Ok(true)) {
                    return;
                }
                if let Some(late) = self.late.as_ref().filter(|l| l.ends_epochs) {
                    late.changelog.send(Message::Barrier(b)).await;
                }
            }
        }
    }
}
