//! The `eddy_catalog` schema: system tables, built afresh for each query.
//!
//! - `view_errors`: per view, expression errors and pipeline failures;
//! - `watermarks`: per relation and watermarked column, the watermark and
//!   the late rows dropped;
//! - `source_readers`: per view and source, splits, finished splits, rows read;
//! - `operator_state`: per view, fragment and stateful operator, its keys and
//!   stored rows as of the fragment's last barrier;
//! - `checkpoints`: the last checkpoints written (epoch, when, how long,
//!   bytes, error) and whether each is durable;
//! - `epochs`: one row: the last committed and the last durable epoch, the
//!   bytes of checkpoints waiting in memory for the disk, and whether
//!   scheduled epochs pause for them;
//! - `source_errors`: the last malformed messages of each source (where,
//!   why, the start of the payload) with the source's total since start;
//! - `sources`: per source, its connector, splits, malformed messages since
//!   start and its clients' current connection problem (until messages
//!   flow again);
//! - `sinks`: per sink, the last epoch Kafka holds and the last delivery
//!   error (while delivery is failing);
//! - `jobs`: per view and sink, its pipeline's state (running, restarting,
//!   failed), restarts, last failure and a source's connection problem.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;

use eddy_executor::{Runtime, StateSize};

use crate::catalog::Catalog;
use crate::engine::SystemParameters;
use crate::jobs::Jobs;

/// The `eddy_catalog` schema: system tables.
#[derive(Debug)]
pub struct SystemSchema {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// The runtime.
    pub runtime: Arc<Runtime>,
    /// Every pipeline's state and restarts.
    pub jobs: Arc<Jobs>,
    /// The server's system parameters (the default restart strategy).
    pub parameters: Arc<SystemParameters>,
}

const VIEW_ERRORS: &str = "view_errors";
const WATERMARKS: &str = "watermarks";
const SOURCE_READERS: &str = "source_readers";
const OPERATOR_STATE: &str = "operator_state";
const CHECKPOINTS: &str = "checkpoints";
const EPOCHS: &str = "epochs";
const SOURCE_ERRORS: &str = "source_errors";
const SINKS: &str = "sinks";
const SOURCES: &str = "sources";
const JOBS: &str = "jobs";
const TABLES: [&str; 10] = [
    VIEW_ERRORS,
    WATERMARKS,
    SOURCE_READERS,
    OPERATOR_STATE,
    CHECKPOINTS,
    EPOCHS,
    SOURCE_ERRORS,
    SINKS,
    SOURCES,
    JOBS,
];

/// A wall-clock time as the tables' millisecond timestamps.
pub(crate) fn millis(time: std::time::SystemTime) -> i64 {
    eddy_planner::system_time_nanos(time) / 1_000_000
}

fn mem_table(schema: SchemaRef, columns: Vec<ArrayRef>) -> DfResult<Arc<dyn TableProvider>> {
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

impl SystemSchema {
    fn names(&self) -> HashMap<u32, String> {
        self.catalog
            .all()
            .iter()
            .map(|r| (r.id, r.name.clone()))
            .collect()
    }

    /// Event-time progress: one row per (relation, watermarked column), and
    /// one with a NULL column for relations that only dropped late rows.
    fn watermarks(&self) -> DfResult<Arc<dyn TableProvider>> {
        let names = self.names();
        let (mut relation, mut column, mut watermark, mut late) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, progress) in self.runtime.progress() {
            let Some(name) = names.get(&id) else {
                continue;
            };
            if progress.watermarks.is_empty() && progress.late_rows == 0 {
                continue;
            }
            if progress.watermarks.is_empty() {
                relation.push(name.clone());
                column.push(None);
                watermark.push(None);
                late.push(progress.late_rows);
            }
            for (c, w) in &progress.watermarks {
                relation.push(name.clone());
                column.push(Some(c.clone()));
                watermark.push(Some(scalar_text(w)));
                late.push(progress.late_rows);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("relation", DataType::Utf8, false),
            Field::new("column_name", DataType::Utf8, true),
            Field::new("watermark", DataType::Utf8, true),
            Field::new("late_rows", DataType::UInt64, false),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(StringArray::from(relation)),
                Arc::new(StringArray::from(column)),
                Arc::new(StringArray::from(watermark)),
                Arc::new(UInt64Array::from(late)),
            ],
        )
    }

    /// Per view: failed pipelines and expression errors.
    fn view_errors(&self) -> DfResult<Arc<dyn TableProvider>> {
        let names = self.names();
        let mut relation = Vec::new();
        let mut count = Vec::new();
        let mut last = Vec::new();
        for (id, stats) in self.runtime.errors() {
            relation.push(names.get(&id).cloned().unwrap_or_else(|| id.to_string()));
            count.push(stats.count);
            last.push(stats.last);
        }
        for info in self.catalog.all() {
            if let Some(reason) = self.runtime.coordinator().failure(info.id) {
                relation.push(info.name.clone());
                count.push(0);
                last.push(format!("failed: {reason}"));
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("relation", DataType::Utf8, false),
            Field::new("error_count", DataType::UInt64, false),
            Field::new("last_error", DataType::Utf8, false),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(StringArray::from(relation)),
                Arc::new(UInt64Array::from(count)),
                Arc::new(StringArray::from(last)),
            ],
        )
    }

    /// Per view and stateful fragment: what each operator holds, as of the
    /// fragment's last barrier.
    fn operator_state(&self) -> DfResult<Arc<dyn TableProvider>> {
        let names = self.names();
        let progress = self.runtime.progress();
        let sizes: Vec<(&String, usize, &StateSize)> = progress
            .iter()
            .filter_map(|(id, p)| names.get(id).map(|name| (name, p)))
            .flat_map(|(name, p)| {
                p.state
                    .iter()
                    .flat_map(move |(index, sizes)| sizes.iter().map(move |s| (name, *index, s)))
            })
            .collect();
        let column = |f: fn(&StateSize) -> u64| -> ArrayRef {
            Arc::new(UInt64Array::from_iter_values(
                sizes.iter().map(|(_, _, s)| f(s)),
            ))
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("relation", DataType::Utf8, false),
            Field::new("fragment", DataType::UInt64, false),
            Field::new("operator", DataType::Utf8, false),
            Field::new("keys", DataType::UInt64, false),
            Field::new("state_rows", DataType::UInt64, false),
            // In memory: all of them, but with the rocksdb state backend.
            Field::new("cached_rows", DataType::UInt64, false),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(
                    sizes.iter().map(|(name, _, _)| name.as_str()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    sizes.iter().map(|(_, index, _)| *index as u64),
                )),
                Arc::new(StringArray::from_iter_values(
                    sizes.iter().map(|(_, _, s)| s.operator),
                )),
                column(|s| s.keys),
                column(|s| s.rows),
                column(|s| s.cached),
            ],
        )
    }

    /// The last checkpoints, oldest first.
    fn checkpoints(&self) -> DfResult<Arc<dyn TableProvider>> {
        let (history, durable) = self.runtime.coordinator().checkpoints();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let schema = Arc::new(Schema::new(vec![
            Field::new("epoch", DataType::UInt64, false),
            Field::new(
                "finished_at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("duration_ms", DataType::Float64, false),
            Field::new("write_ms", DataType::Float64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("durable", DataType::Boolean, false),
            Field::new("error", DataType::Utf8, true),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(UInt64Array::from_iter_values(
                    history.iter().map(|c| c.epoch),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    history.iter().map(|c| millis(c.finished_at)),
                )),
                Arc::new(Float64Array::from_iter_values(
                    history.iter().map(|c| ms(c.duration)),
                )),
                Arc::new(Float64Array::from_iter_values(
                    history.iter().map(|c| ms(c.write)),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    history.iter().map(|c| c.bytes),
                )),
                Arc::new(BooleanArray::from_iter(
                    history.iter().map(|c| Some(c.epoch <= durable)),
                )),
                Arc::new(StringArray::from_iter(
                    history.iter().map(|c| c.error.clone()),
                )),
            ],
        )
    }

    /// Where epochs stand, in one row.
    fn epochs(&self) -> DfResult<Arc<dyn TableProvider>> {
        let coordinator = self.runtime.coordinator();
        let schema = Arc::new(Schema::new(vec![
            Field::new("committed", DataType::UInt64, false),
            Field::new("durable", DataType::UInt64, false),
            Field::new("checkpoint_backlog_bytes", DataType::UInt64, false),
            Field::new("paused", DataType::Boolean, false),
        ]));
        let committed = *coordinator.committed().borrow();
        let durable = *coordinator.durable_epoch().borrow();
        mem_table(
            schema,
            vec![
                Arc::new(UInt64Array::from(vec![committed])),
                Arc::new(UInt64Array::from(vec![durable])),
                Arc::new(UInt64Array::from(vec![coordinator.checkpoint_backlog()])),
                Arc::new(BooleanArray::from(vec![self.runtime.epochs_paused()])),
            ],
        )
    }

    /// Each view's readers of each source: splits, finished splits, rows read.
    fn source_readers(&self) -> DfResult<Arc<dyn TableProvider>> {
        let names = self.names();
        let (mut relation, mut source, mut splits, mut finished, mut rows) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, progress) in self.runtime.progress() {
            let Some(name) = names.get(&id) else {
                continue;
            };
            for (src, r) in &progress.readers {
                relation.push(name.clone());
                source.push(names.get(src).cloned().unwrap_or_else(|| src.to_string()));
                splits.push(r.splits as u64);
                finished.push(r.finished as u64);
                rows.push(r.rows);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("relation", DataType::Utf8, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("splits", DataType::UInt64, false),
            Field::new("finished_splits", DataType::UInt64, false),
            Field::new("rows_read", DataType::UInt64, false),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(StringArray::from(relation)),
                Arc::new(StringArray::from(source)),
                Arc::new(UInt64Array::from(splits)),
                Arc::new(UInt64Array::from(finished)),
                Arc::new(UInt64Array::from(rows)),
            ],
        )
    }

    /// Every source: connector, splits, malformed messages, connection.
    fn sources(&self) -> DfResult<Arc<dyn TableProvider>> {
        let (mut name, mut connector, mut splits, mut malformed, mut problem, mut since) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for info in self.catalog.all() {
            let Some(spec) = &info.source else {
                continue;
            };
            let connection = spec.connection().and_then(|c| c.problem());
            name.push(info.name.clone());
            connector.push(spec.connector_name());
            splits.push(spec.split_count(self.runtime.parallelism()) as u64);
            malformed.push(spec.malformed().map_or(0, |m| m.count()));
            since.push(connection.as_ref().map(|(at, _)| millis(*at)));
            problem.push(connection.map(|(_, message)| message));
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("connector", DataType::Utf8, false),
            Field::new("splits", DataType::UInt64, false),
            Field::new("malformed_messages", DataType::UInt64, false),
            Field::new("connection_problem", DataType::Utf8, true),
            Field::new(
                "problem_since",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(StringArray::from(name)),
                Arc::new(StringArray::from(connector)),
                Arc::new(UInt64Array::from(splits)),
                Arc::new(UInt64Array::from(malformed)),
                Arc::new(StringArray::from(problem)),
                Arc::new(TimestampMillisecondArray::from(since)),
            ],
        )
    }

    /// Every view's and sink's pipeline.
    fn jobs(&self) -> DfResult<Arc<dyn TableProvider>> {
        let rows = self.jobs.rows(
            &self.catalog,
            &self.runtime,
            &self.parameters.restart_strategy(),
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("job", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("restarts", DataType::UInt64, false),
            Field::new("last_error", DataType::Utf8, true),
            Field::new(
                "failed_at",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("connection_problem", DataType::Utf8, true),
            Field::new("restart_strategy", DataType::Utf8, false),
        ]));
        let text = |f: fn(&crate::jobs::JobRow) -> Option<&str>| {
            Arc::new(StringArray::from_iter(rows.iter().map(f))) as ArrayRef
        };
        mem_table(
            schema,
            vec![
                text(|j| Some(&j.name)),
                text(|j| Some(j.kind)),
                text(|j| Some(j.state)),
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|j| j.restarts),
                )),
                text(|j| j.last_error.as_deref()),
                Arc::new(TimestampMillisecondArray::from_iter(
                    rows.iter().map(|j| j.failed_at.map(millis)),
                )),
                text(|j| j.connection_problem.as_deref()),
                text(|j| Some(&j.restart_strategy)),
            ],
        )
    }

    /// Every sink's delivery.
    fn sinks(&self) -> DfResult<Arc<dyn TableProvider>> {
        let (mut name, mut delivered, mut error) = (vec![], vec![], vec![]);
        for info in self.catalog.all() {
            if let Some(status) = &info.sink {
                name.push(info.name.clone());
                delivered.push(status.delivered());
                error.push(status.last_error());
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("sink", DataType::Utf8, false),
            Field::new("delivered_epoch", DataType::UInt64, false),
            Field::new("last_error", DataType::Utf8, true),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(StringArray::from(name)),
                Arc::new(UInt64Array::from(delivered)),
                Arc::new(StringArray::from(error)),
            ],
        )
    }

    /// The last malformed messages of every source that decodes messages.
    fn source_errors(&self) -> DfResult<Arc<dyn TableProvider>> {
        let (mut source, mut total, mut topic, mut partition, mut offset, mut reason, mut payload) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for info in self.catalog.all() {
            let Some(malformed) = info.source.as_ref().and_then(|s| s.malformed()) else {
                continue;
            };
            let count = malformed.count();
            for message in malformed.recent() {
                source.push(info.name.clone());
                total.push(count);
                topic.push(message.topic);
                partition.push(message.partition);
                offset.push(message.offset);
                reason.push(message.reason);
                payload.push(String::from_utf8_lossy(&message.payload).into_owned());
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("source", DataType::Utf8, false),
            Field::new("source_total", DataType::UInt64, false),
            Field::new("topic", DataType::Utf8, false),
            Field::new("partition", DataType::Int32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("payload_prefix", DataType::Utf8, false),
        ]));
        mem_table(
            schema,
            vec![
                Arc::new(StringArray::from(source)),
                Arc::new(UInt64Array::from(total)),
                Arc::new(StringArray::from(topic)),
                Arc::new(Int32Array::from(partition)),
                Arc::new(Int64Array::from(offset)),
                Arc::new(StringArray::from(reason)),
                Arc::new(StringArray::from(payload)),
            ],
        )
    }
}

/// A value as the batch engine would print it.
fn scalar_text(value: &datafusion::scalar::ScalarValue) -> String {
    value
        .to_array()
        .ok()
        .and_then(|a| datafusion::arrow::util::display::array_value_to_string(&a, 0).ok())
        .unwrap_or_else(|| value.to_string())
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.to_string()).collect()
    }
    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let table = match name {
            VIEW_ERRORS => self.view_errors(),
            WATERMARKS => self.watermarks(),
            SOURCE_READERS => self.source_readers(),
            OPERATOR_STATE => self.operator_state(),
            CHECKPOINTS => self.checkpoints(),
            EPOCHS => self.epochs(),
            SOURCE_ERRORS => self.source_errors(),
            SINKS => self.sinks(),
            SOURCES => self.sources(),
            JOBS => self.jobs(),
            _ => return Ok(None),
        };
        table.map(Some)
    }
    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
