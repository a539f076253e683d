//! Reading several input channels with barrier alignment.
//!
//! An operator with several inputs (a join, or any operator fed by several
//! upstream partitions) must see epoch `e`'s rows from every input before any
//! row of epoch `e + 1`. [`AlignedInput`] enforces this: once an input
//! delivers `Barrier(e)` it is not read again until every other input has
//! delivered `Barrier(e)` too; then the single aligned barrier is returned.
//!
//! Cancel safety: [`AlignedInput::next`] holds no message across an await, so
//! dropping its future loses nothing.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::Poll;

use tokio::sync::mpsc::Receiver;

use crate::message::{Barrier, Message};

/// One input edge: messages queued before the channel (a backfill snapshot),
/// then the channel itself.
#[derive(Debug)]
pub struct InputChannel {
    prefix: VecDeque<Message>,
    rx: Receiver<Message>,
}

impl InputChannel {
    /// An input reading `rx`.
    pub fn new(rx: Receiver<Message>) -> Self {
        Self {
            prefix: VecDeque::new(),
            rx,
        }
    }

    /// An input that yields `prefix` before reading `rx`.
    pub fn with_prefix(prefix: Vec<Message>, rx: Receiver<Message>) -> Self {
        Self {
            prefix: prefix.into(),
            rx,
        }
    }
}

/// Several inputs read as one, barriers aligned.
#[derive(Debug)]
pub struct AlignedInput {
    inputs: Vec<InputChannel>,
    blocked: Vec<bool>,
    closed: Vec<bool>,
    barrier: Option<Barrier>,
    start: usize,
}

impl AlignedInput {
    /// Reads `inputs` together.
    pub fn new(inputs: Vec<InputChannel>) -> Self {
        let n = inputs.len();
        Self {
            inputs,
            blocked: vec![false; n],
            closed: vec![false; n],
            barrier: None,
            start: 0,
        }
    }

    fn aligned(&self) -> bool {
        self.blocked.iter().zip(&self.closed).all(|(b, c)| *b || *c)
    }

    /// The next chunk with the index of the input it came from, or an aligned
    /// barrier (index 0). `None` once every input is closed.
    pub async fn next(&mut self) -> Option<(usize, Message)> {
        poll_fn(|cx| {
            let n = self.inputs.len();
            loop {
                let mut progressed = false;
                for k in 0..n {
                    let i = (self.start + k) % n;
                    if self.blocked[i] || self.closed[i] {
                        continue;
                    }
                    let input = &mut self.inputs[i];
                    let msg = match input.prefix.pop_front() {
                        Some(m) => Poll::Ready(Some(m)),
                        None => input.rx.poll_recv(cx),
                    };
                    match msg {
                        Poll::Pending => {}
                        Poll::Ready(None) => {
                            self.closed[i] = true;
                            progressed = true;
                        }
                        Poll::Ready(Some(Message::Chunk(c))) => {
                            self.start = (i + 1) % n;
                            return Poll::Ready(Some((i, Message::Chunk(c))));
                        }
                        Poll::Ready(Some(Message::Barrier(b))) => {
                            self.blocked[i] = true;
                            self.barrier = Some(b);
                            progressed = true;
                        }
                    }
                    if self.barrier.is_some() && self.aligned() {
                        break;
                    }
                }
                if let Some(b) = self.barrier.filter(|_| self.aligned()) {
                    self.barrier = None;
                    self.blocked.iter_mut().for_each(|b| *b = false);
                    return Poll::Ready(Some((0, Message::Barrier(b))));
                }
                if self.closed.iter().all(|c| *c) {
                    return Poll::Ready(None);
                }
                if !progressed {
                    return Poll::Pending;
                }
            }
        })
        .await
    }
}
