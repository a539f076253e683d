//! The last operator of a sink's pipeline.
//!
//! State: `e<epoch>` -> the epoch's records, from the checkpoint that
//! commits the epoch until a later checkpoint after Kafka holds it. The
//! writer acks each epoch with an empty change of rows: a sink keeps none.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;

use super::delivery::{self, DeliveryHandle, DeliveryStatus, EpochRecords};
use super::{EpochEncoder, SinkRecord, SinkSpec};
use crate::checkpoint::{StateEntries, StateWriter, ValueReader, ValueWriter};
use crate::error::{ExecutorError, Result};
use crate::message::{Barrier, StreamChunk};
use crate::operator::Operator;
use crate::relation_rows::Changes;

/// Encodes a sink's changes per epoch and hands them to delivery.
pub struct SinkWriter {
    spec: Arc<SinkSpec>,
    encoder: EpochEncoder,
    /// The epoch the last barrier ended, with its records.
    finished: Option<(u64, Vec<SinkRecord>)>,
    /// Epochs in the state, not yet known to be in Kafka.
    pending: BTreeSet<u64>,
    /// Restored epochs, sent to delivery when it starts.
    restored: Vec<EpochRecords>,
    /// The last durable epoch: an epoch goes to Kafka only once a crash
    /// cannot take it back.
    durable: watch::Receiver<u64>,
    status: Arc<DeliveryStatus>,
    /// Started at the first barrier, after any restore.
    delivery: Option<DeliveryHandle>,
}

impl std::fmt::Debug for SinkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkWriter")
            .field("sink", &self.spec.id)
            .field("pending", &self.pending)
            .finish()
    }
}

fn state_key(epoch: u64) -> [u8; 9] {
    let mut key = [b'e'; 9];
    key[1..].copy_from_slice(&epoch.to_be_bytes());
    key
}

impl SinkWriter {
    /// A writer for `spec`; `durable` follows the last durable epoch.
    pub fn new(
        spec: Arc<SinkSpec>,
        durable: watch::Receiver<u64>,
        status: Arc<DeliveryStatus>,
    ) -> Self {
        Self {
            encoder: EpochEncoder::new(spec.sink_type, spec.key.clone()),
            spec,
            finished: None,
            pending: BTreeSet::new(),
            restored: Vec::new(),
            durable,
            status,
            delivery: None,
        }
    }

    fn send(&mut self, records: EpochRecords) {
        let delivery = self.delivery.get_or_insert_with(|| {
            delivery::start(self.spec.clone(), self.durable.clone(), self.status.clone())
        });
        delivery.send(records);
    }
}

impl Operator for SinkWriter {
    fn process(
        &mut self,
        _port: usize,
        chunk: StreamChunk,
        _out: &mut Vec<StreamChunk>,
    ) -> Result<()> {
        self.encoder.add(&chunk)
    }

    fn on_barrier(&mut self, barrier: Barrier, _out: &mut Vec<StreamChunk>) -> Result<()> {
        let records = self.encoder.finish()?;
        self.finished = Some((barrier.epoch, records));
        Ok(())
    }

    fn checkpoint(&mut self, state: &mut StateWriter<'_>) {
        for restored in std::mem::take(&mut self.restored) {
            self.send(restored);
        }
        let delivered = self.status.delivered();
        while let Some(&epoch) = self.pending.first().filter(|&&e| e <= delivered) {
            state.delete(&state_key(epoch));
            self.pending.remove(&epoch);
        }
        if let Some((epoch, records)) = self.finished.take()
            && !records.is_empty()
        {
            let mut value = ValueWriter::new();
            value.u32(records.len() as u32);
            for record in &records {
                value.opt_bytes(record.key.as_deref());
                value.opt_bytes(record.value.as_deref());
            }
            state.put(&state_key(epoch), value.finish());
            self.pending.insert(epoch);
            self.send((epoch, Arc::new(records)));
        }
        state.rows(Changes::Appended(Vec::new()));
    }

    fn restore(&mut self, entries: StateEntries) -> Result<()> {
        for (key, value) in entries {
            let epoch = key
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| ExecutorError::CorruptState("a sink's epoch key".into()))?;
            let mut reader = ValueReader::new(&value);
            let count = reader.u32()?;
            let mut records = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let key = reader.opt_bytes()?.map(<[u8]>::to_vec);
                let value = reader.opt_bytes()?.map(<[u8]>::to_vec);
                records.push(SinkRecord { key, value });
            }
            self.pending.insert(epoch);
            self.restored.push((epoch, Arc::new(records)));
        }
        Ok(())
    }
}
