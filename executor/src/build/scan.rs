//! Scans: a table's or view's changelog, and a source's readers.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Built, Instance, PipelineBuilder, Upstream};
use crate::checkpoint::READER_SCOPE;
use crate::dispatch::{CHANNEL_CAPACITY, Subscribers};
use crate::error::{ExecutorError, Result};
use crate::input::InputChannel;
use crate::message::{Message, StreamChunk};
use crate::source::{Reader, SourceSpec, SplitAlignment};

impl PipelineBuilder<'_> {
    /// Reads relation `relation`: from its changelog (after its rows now,
    /// or what a restart replays), or, a source, from this pipeline's own
    /// readers, one instance per split.
    pub(super) fn build_scan(&mut self, relation: &str) -> Result<Built> {
        match (self.resolve)(relation)? {
            Upstream::Changelog {
                id,
                subscribers,
                traits,
            } => {
                let prefix = if self.backfill {
                    let rows = self.coordinator.backfill(id)?;
                    rows.iter()
                        .map(|b| Message::Chunk(StreamChunk::inserts(b.clone())))
                        .collect()
                } else {
                    let mut replay = self.replay.get(&id).cloned().unwrap_or_default();
                    let changes = self.coordinator.view_changes_since(id, self.relation)?;
                    replay.extend(changes.into_iter().map(Message::Chunk));
                    replay
                };
                let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                self.subscriptions.push((subscribers, tx));
                Ok(Built {
                    instances: vec![Instance {
                        inputs: vec![InputChannel::with_prefix(prefix, rx)],
                        ports: vec![0],
                        ops: vec![],
                        split: None,
                    }],
                    watermarks: traits.watermarks,
                    append_only: traits.append_only,
                })
            }
            Upstream::Stream(spec) => {
                let outputs = self.reader_outputs_of(&spec)?;
                let scan = self.scopes.scan()?;
                let instances = outputs
                    .into_iter()
                    .enumerate()
                    .map(|(index, output)| {
                        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                        self.subscriptions.push((output, tx));
                        Instance {
                            inputs: vec![InputChannel::new(rx)],
                            ports: vec![0],
                            ops: vec![],
                            split: Some((scan << 16) + index as u32),
                        }
                    })
                    .collect();
                Ok(Built {
                    instances,
                    watermarks: spec.watermark_columns().collect(),
                    append_only: spec.is_append_only(),
                })
            }
        }
    }

    /// The outputs of this pipeline's readers of `spec`, one per split,
    /// creating the readers at the first scan of the source.
    fn reader_outputs_of(&mut self, spec: &Arc<SourceSpec>) -> Result<Vec<Arc<Subscribers>>> {
        if let Some(outputs) = self.reader_outputs.get(&spec.id) {
            return Ok(outputs.clone());
        }
        let splits = spec.split_count(self.parallelism);
        let source = self.reader_outputs.len() as u32;
        if source >= 1 << 15 || splits > 1 << 16 {
            return Err(ExecutorError::Unsupported(
                "a view reading more than 32768 sources, or a source of more than 65536 splits"
                    .into(),
            ));
        }
        // A reader's scope names its source (by order of first scan) and
        // split, so a source gaining splits moves no other reader's state.
        let mut outputs = Vec::with_capacity(splits);
        let alignment = match &spec.alignment.group {
            Some(group) => self
                .alignment_groups
                .entry(group.clone())
                .or_default()
                .clone(),
            None => Arc::new(SplitAlignment::default()),
        };
        for index in 0..splits {
            let output = Arc::new(Subscribers::default());
            let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
            self.subscriptions.push((self.ticks.clone(), tx));
            self.readers.push(Reader {
                relation: self.relation,
                spec: spec.clone(),
                scope: READER_SCOPE + (source << 16) + index as u32,
                index,
                split: spec.split(index, splits, 0)?,
                splits,
                clock: self.clocks.get(spec.id, index, splits),
                alignment: alignment.clone(),
                alignment_slot: alignment.add_split(spec.alignment.max_drift),
                position: 0,
                watermark: None,
                proctime: eddy_planner::system_time_nanos(std::time::SystemTime::now()),
                ticks: rx,
                output: output.clone(),
                gate: self.gate.clone(),
                running: self.running.clone(),
                evaluator: self.evaluator.clone(),
                progress: self.progress.clone(),
                coordinator: self.coordinator.clone(),
                incarnation: self.incarnation,
                exhausted: false,
                errors: Default::default(),
            });
            outputs.push(output);
        }
        self.reader_outputs.insert(spec.id, outputs.clone());
        Ok(outputs)
    }
}
