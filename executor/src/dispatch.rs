//! Where a fragment's output goes: to every target, or hash-partitioned.
//!
//! Hash partitioning sends every row to the target chosen by the hash of its
//! key, so all rows of one key (one group, one join key) meet in the same
//! downstream partition. Barriers go to every target.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::common::hash_utils::create_hashes;
use datafusion::physical_expr::PhysicalExpr;
use tokio::sync::mpsc::Sender;

use crate::error::Result;
use crate::eval::Evaluator;
use crate::message::{Message, Op, StreamChunk};

/// Channel capacity of every edge: the depth of backpressure. Chunks are
/// up to 4,096 rows, so a deeper queue mostly holds rows back: it delays
/// watermarks (an interval join holds its rows longer) and fills memory
/// without adding throughput (see docs/benchmarks.md).
pub const CHANNEL_CAPACITY: usize = 4;

/// Senders that can be added and removed while the pipeline runs (the
/// subscribers of a table or view), each tagged with the relation that owns it.
///
/// It remembers the last watermark sent on each column, and sends those
/// to a subscriber when it is added: a view created (or recovered) after
/// its input's watermark passed learns it, as its rows from then on are
/// at or above it.
#[derive(Debug, Default)]
pub struct Subscribers {
    state: Mutex<SubscribersState>,
}

#[derive(Debug, Default)]
struct SubscribersState {
    senders: Vec<(u32, Sender<Message>)>,
    /// The last watermark sent on each column.
    watermarks: BTreeMap<usize, Message>,
}

impl Subscribers {
    /// Adds a subscriber owned by relation `owner`; it is sent the last
    /// watermark of each column first.
    pub fn add(&self, owner: u32, tx: Sender<Message>) {
        let mut state = self.lock();
        for watermark in state.watermarks.values() {
            // A new channel has room for them (fewer than its capacity).
            let _ = tx.try_send(watermark.clone());
        }
        state.senders.push((owner, tx));
    }

    /// Whether nobody subscribes (any more).
    pub fn is_empty(&self) -> bool {
        self.lock().senders.is_empty()
    }

    /// Removes every subscriber owned by `owner`; its pipeline then drains and ends.
    pub fn remove_owner(&self, owner: u32) {
        self.lock().senders.retain(|(o, _)| *o != owner);
    }

    /// Forgets the watermarks sent: the pipeline writing here restarts
    /// from a checkpoint, behind them, and sends its own again.
    pub fn forget_watermarks(&self) {
        self.lock().watermarks.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SubscribersState> {
        crate::sync::lock(&self.state)
    }

    /// Sends `msg` to every subscriber; ones whose pipeline ended are dropped.
    pub async fn send(&self, msg: Message) {
        let targets: Vec<_> = {
            let mut state = self.lock();
            if let Message::Watermark(w) = &msg {
                state.watermarks.insert(w.column, msg.clone());
            }
            state.senders.iter().map(|(_, tx)| tx.clone()).collect()
        };
        let mut gone = false;
        for tx in &targets {
            gone |= tx.send(msg.clone()).await.is_err();
        }
        if gone {
            self.lock().senders.retain(|(_, tx)| !tx.is_closed());
        }
    }
}

/// How rows are spread over targets.
#[derive(Debug, Clone)]
pub enum Dispatch {
    /// Every target gets every row.
    Broadcast,
    /// Row goes to target `hash(keys) % n`.
    Hash(Vec<Arc<dyn PhysicalExpr>>),
}

/// The output of a fragment.
#[derive(Debug)]
pub enum Output {
    /// Fixed downstream edges.
    Channels {
        /// Spreading rule.
        dispatch: Dispatch,
        /// Downstream senders.
        targets: Vec<Sender<Message>>,
        /// Evaluates hash keys.
        evaluator: Evaluator,
    },
    /// The subscribers of a table or view.
    Subscribers(Arc<Subscribers>),
}

/// Fixed seed: every exchange of every pipeline partitions alike.
const HASH_SEED: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0xedd1);

impl Output {
    /// Sends `msg` on. Returns `false` when no downstream is left.
    pub async fn send(&mut self, msg: Message) -> Result<bool> {
        match self {
            Output::Subscribers(subs) => {
                subs.send(msg).await;
                Ok(true)
            }
            Output::Channels {
                dispatch,
                targets,
                evaluator,
            } => {
                let (chunk, keys) = match (msg, &*dispatch) {
                    (Message::Chunk(c), Dispatch::Hash(keys)) if targets.len() > 1 => (c, keys),
                    (msg, _) => {
                        let mut alive = false;
                        for tx in targets.iter() {
                            alive |= tx.send(msg.clone()).await.is_ok();
                        }
                        return Ok(alive);
                    }
                };
                let parts = partition(&chunk, keys, targets.len(), evaluator)?;
                let mut alive = false;
                for (tx, part) in targets.iter().zip(parts) {
                    alive |= match part {
                        Some(part) => tx.send(Message::Chunk(part)).await.is_ok(),
                        None => !tx.is_closed(),
                    };
                }
                Ok(alive)
            }
        }
    }
}

fn partition(
    chunk: &StreamChunk,
    keys: &[Arc<dyn PhysicalExpr>],
    n: usize,
    evaluator: &Evaluator,
) -> Result<Vec<Option<StreamChunk>>> {
    let columns = evaluator.eval_all(keys, &chunk.batch)?;
    let mut hashes = vec![0u64; chunk.len()];
    create_hashes(&columns, &HASH_SEED, &mut hashes)?;
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (i, h) in hashes.iter().enumerate() {
        indices[(*h % n as u64) as usize].push(i as u32);
    }
    indices
        .into_iter()
        .map(|idx| {
            if idx.is_empty() {
                return Ok(None);
            }
            let ops: Vec<Op> = idx.iter().map(|&i| chunk.ops[i as usize]).collect();
            let batch: RecordBatch = take_record_batch(&chunk.batch, &UInt32Array::from(idx))?;
            Ok(Some(StreamChunk {
                batch,
                ops: ops.into(),
            }))
        })
        .collect()
}
