//! Reading several input channels with barrier alignment.
//!
//! An operator with several inputs (a join, or any operator fed by several
//! upstream partitions) must see epoch `e`'s rows from every input before any
//! row of epoch `e + 1`. [`AlignedInput`] enforces this: once an input
//! delivers `Barrier(e)` it is not read again until every other input has
//! delivered `Barrier(e)` too; then the single aligned barrier is returned.
//!
//! Watermarks are merged per logical input port and column: the port's
//! watermark is the minimum over its inputs (every input must have reported
//! one), and only an increase is passed on.
//!
//! Cancel safety: [`AlignedInput::next`] holds no message across an await, so
//! dropping its future loses nothing.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::task::Poll;

use tokio::sync::mpsc::Receiver;

use datafusion::scalar::ScalarValue;

use crate::message::{Barrier, Message, Watermark};

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
    ports: Vec<usize>,
    /// Latest watermark per input and column.
    watermarks: Vec<HashMap<usize, ScalarValue>>,
    /// Watermark last passed on, per (port, column).
    merged: HashMap<(usize, usize), ScalarValue>,
}

impl AlignedInput {
    /// Reads `inputs` together, all feeding port 0.
    pub fn new(inputs: Vec<InputChannel>) -> Self {
        let ports = vec![0; inputs.len()];
        Self::with_ports(inputs, ports)
    }

    /// Reads `inputs` together; input `i` feeds logical port `ports[i]`.
    pub fn with_ports(inputs: Vec<InputChannel>, ports: Vec<usize>) -> Self {
        let n = inputs.len();
        Self {
            inputs,
            blocked: vec![false; n],
            closed: vec![false; n],
            barrier: None,
            start: 0,
            ports,
            watermarks: vec![HashMap::new(); n],
            merged: HashMap::new(),
        }
    }

    /// Logical port of input `index`.
    pub fn port(&self, index: usize) -> usize {
        self.ports.get(index).copied().unwrap_or(0)
    }

    /// Records input `i`'s watermark; returns the port's merged watermark if it rose.
    fn merge(&mut self, i: usize, w: Watermark) -> Option<Watermark> {
        let slot = self.watermarks[i]
            .entry(w.column)
            .or_insert(w.value.clone());
        if w.value > *slot {
            *slot = w.value.clone();
        }
        let port = self.port(i);
        let mut min: Option<&ScalarValue> = None;
        for j in (0..self.inputs.len()).filter(|&j| self.port(j) == port && !self.closed[j]) {
            let v = self.watermarks[j].get(&w.column)?;
            min = Some(match min {
                Some(m) if m <= v => m,
                _ => v,
            });
        }
        let min = min?.clone();
        match self.merged.get(&(port, w.column)) {
            Some(prev) if *prev >= min => None,
            _ => {
                self.merged.insert((port, w.column), min.clone());
                Some(Watermark {
                    column: w.column,
                    value: min,
                })
            }
        }
    }

    fn aligned(&self) -> bool {
        self.blocked.iter().zip(&self.closed).all(|(b, c)| *b || *c)
    }

    /// The next chunk or merged watermark with the index of the input it came
    /// from, or an aligned barrier (index 0). `None` once every input is closed.
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
                        Poll::Ready(Some(Message::Watermark(w))) => {
                            if let Some(merged) = self.merge(i, w) {
                                self.start = (i + 1) % n;
                                return Poll::Ready(Some((i, Message::Watermark(merged))));
                            }
                            progressed = true;
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
