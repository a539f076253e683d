//! Kafka sources that gain partitions.
//!
//! Every Kafka source asks its broker for new partitions each
//! `scan.partition.discovery.interval` (see `KafkaSource::discover`). When
//! the topic has more, quiesced:
//! 1. the catalog entry of the source pins the new partitions' first
//!    offsets too, so a recovery reads them from the same place;
//! 2. the source takes them up (one split each);
//! 3. every pipeline reading the source restarts from its checkpoint, which
//!    is its current state, with a reader more per new partition.
//!
//! So every view gains the new partitions at the same epoch, and none
//! loses or repeats a message.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use eddy_executor::source::SourceSpec;
use eddy_planner::{CreateSource, EddyStatement};

use super::Engine;
use crate::catalog::RelationInfo;
use crate::error::{EddyError, Result};

/// How often the watch looks for sources due a discovery.
const TICK: Duration = Duration::from_millis(100);

/// Looks for new partitions of every Kafka source, each at its own
/// interval, for as long as the engine lives.
pub(super) async fn watch(engine: Weak<Engine>) {
    let mut last: HashMap<u32, Instant> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let sources = engine.catalog.all();
        last.retain(|id, _| sources.iter().any(|r| r.id == *id));
        for info in sources {
            let Some(spec) = info.source.clone() else {
                continue;
            };
            let Some(interval) = spec.kafka().and_then(|k| k.discovery_interval()) else {
                continue;
            };
            // A source looks first one interval after it was seen (it
            // started with the partitions it knows).
            let seen = *last.entry(info.id).or_insert_with(Instant::now);
            if seen.elapsed() < interval {
                continue;
            }
            last.insert(info.id, Instant::now());
            let asked = spec.clone();
            let found = tokio::task::spawn_blocking(move || match asked.kafka() {
                Some(kafka) => kafka.discover(),
                None => Ok(vec![]),
            })
            .await;
            match found {
                Ok(Ok(offsets)) if !offsets.is_empty() => {
                    if let Err(e) = engine.add_partitions(&info, &spec, &offsets).await {
                        warn!(source = %info.name, error = %e, "taking up new partitions failed");
                    }
                }
                Ok(Ok(_)) => {}
                // The source's readers report an unreachable broker.
                Ok(Err(e)) => {
                    tracing::debug!(source = %info.name, error = %e, "partition discovery")
                }
                Err(e) => warn!(source = %info.name, error = %e, "partition discovery panicked"),
            }
        }
    }
}

impl Engine {
    /// Source `info` (read by `spec`) gained partitions starting at `offsets`.
    async fn add_partitions(
        &self,
        info: &RelationInfo,
        spec: &Arc<SourceSpec>,
        offsets: &[i64],
    ) -> Result<()> {
        let Some(kafka) = spec.kafka() else {
            return Ok(());
        };
        let guard = self.runtime.write_lock().await;
        let quiesced = self.runtime.quiesce(&guard).await;
        // Dropped or re-created meanwhile: nothing to do.
        let current = self.catalog.get(&info.name);
        if !current.is_some_and(|c| c.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, spec))) {
            return Ok(());
        }
        let mut stmts = eddy_planner::parse_sql(&info.sql)?;
        let Some(EddyStatement::CreateSource(stored)) = stmts.pop() else {
            return Err(EddyError::Coded {
                code: "XX001",
                message: format!("catalog entry {} is not a CREATE SOURCE", info.id),
            });
        };
        let (key, value) = kafka.pinned_with(offsets);
        let mut options = stored.options.clone();
        options.retain(|(k, _)| *k != key);
        options.push((key, value));
        let stored = CreateSource { options, ..*stored };
        self.register_source(
            info.id,
            info.name.clone(),
            info.schema.clone(),
            &stored,
            spec.clone(),
            true,
        )?;
        kafka.add_partitions(offsets);
        let pipelines = self.runtime.pipelines_reading(info.id);
        for id in &pipelines {
            if let Err(e) = self
                .runtime
                .restart_pipelines(&quiesced, &[*id], &|n| self.catalog.read_target(n))
            {
                self.runtime
                    .coordinator()
                    .fail(*id, format!("restarting with new partitions failed: {e}"));
            }
        }
        info!(
            source = %info.name,
            partitions = kafka.partitions(),
            pipelines = pipelines.len(),
            "took up new partitions"
        );
        Ok(())
    }
}
