//! Sinks: a query's changes written to Kafka, exactly once.
//!
//! A sink's pipeline is a view's, ending in a [`SinkWriter`] instead of a
//! materialize operator. Exactly-once rests on two facts:
//!
//! - **The epoch's records are durable before they are sent.** At each
//!   barrier the writer encodes the epoch's changes into Kafka records
//!   ([`encode`]) and writes them into its checkpointed state, in the same
//!   atomic write as the rest of the epoch.
//! - **Kafka tells the last epoch it holds.** Once the epoch is durable
//!   (committed and written: while checkpoints fail to be written, say on a
//!   full disk, delivery waits, since a crash would take the epoch back),
//!   its records go out in one Kafka transaction, each with the epoch in a
//!   header. A transaction is all or nothing, so the largest epoch among
//!   the topic's committed records is exactly the last epoch delivered.
//!   (Committing the epoch as a consumer group's offset inside the
//!   transaction would be cheaper to read back, but the mock broker the
//!   tests run against acknowledges such commits without storing them.)
//!
//! After a crash, the writer's state holds every epoch that was committed
//! but maybe not delivered; delivery reads the newest records of each
//! partition for the last epoch Kafka holds and sends only the later ones. An unfinished transaction of the crashed
//! process is aborted when the new producer takes over its transactional
//! id. A delivered epoch leaves the state at the next checkpoint.

mod delivery;
mod encode;
mod writer;

use datafusion::arrow::datatypes::SchemaRef;

pub use delivery::DeliveryStatus;
pub use encode::{EpochEncoder, SinkRecord};
pub use writer::SinkWriter;

use crate::error::{ExecutorError, Result};
use crate::source::Options;

/// What a sink writes for a change (`type = ...`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SinkType {
    /// Inserted rows only; a deletion fails the sink.
    AppendOnly,
    /// Keyed by the primary key: the row, or a tombstone when it is gone.
    Upsert,
    /// Debezium change events: `before`, `after`, `op`.
    Debezium,
}

/// A validated `CREATE SINK ... WITH (...)`.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Catalog id.
    pub id: u32,
    /// The rows it writes.
    pub schema: SchemaRef,
    /// Topic written.
    pub topic: String,
    /// librdkafka configuration of its producer.
    pub config: Vec<(String, String)>,
    /// What it writes per change.
    pub sink_type: SinkType,
    /// Columns of the message key (`primary_key = 'a, b'`).
    pub key: Vec<usize>,
}

impl SinkSpec {
    /// A sink of `schema` rows from `options`.
    pub fn new(
        id: u32,
        schema: SchemaRef,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut options = Options::new(options);
        match options.take("connector").as_deref() {
            Some("kafka") => {}
            Some(other) => {
                return Err(ExecutorError::InvalidOption(format!(
                    "unknown sink connector '{other}' (kafka)"
                )));
            }
            None => {
                return Err(ExecutorError::InvalidOption(
                    "connector is required, e.g. WITH (connector = 'kafka')".into(),
                ));
            }
        }
        let (topic, config) = crate::kafka_client::connection_options(&mut options)?;
        // `FORMAT UPSERT | DEBEZIUM` names the type too.
        let format = options.take("format");
        let implied = match format.as_deref() {
            None | Some("plain") => None,
            Some("upsert") => Some("upsert"),
            Some("debezium") => Some("debezium"),
            Some(other) => {
                return Err(ExecutorError::Unsupported(format!(
                    "FORMAT {} for a sink",
                    other.to_uppercase()
                )));
            }
        };
        let declared = options.take("type");
        if let (Some(implied), Some(declared)) = (implied, declared.as_deref())
            && implied != declared
        {
            return Err(ExecutorError::InvalidOption(format!(
                "FORMAT {} contradicts type = '{declared}'",
                implied.to_uppercase()
            )));
        }
        let sink_type = match declared.as_deref().or(implied) {
            None | Some("append-only") => SinkType::AppendOnly,
            Some("upsert") => SinkType::Upsert,
            Some("debezium") => SinkType::Debezium,
            Some(other) => {
                return Err(ExecutorError::InvalidOption(format!(
                    "type must be append-only, upsert or debezium, got '{other}'"
                )));
            }
        };
        let key = match options.take("primary_key") {
            None => vec![],
            Some(list) => list
                .split(',')
                .map(|c| {
                    let c = c.trim().to_lowercase();
                    schema.index_of(&c).map_err(|_| {
                        ExecutorError::InvalidOption(format!(
                            "primary_key column '{c}' is not a column of the sink"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        if sink_type == SinkType::Upsert && key.is_empty() {
            return Err(ExecutorError::InvalidOption(
                "an upsert sink needs primary_key = 'column, ...'".into(),
            ));
        }
        match options.take("encode").as_deref() {
            None | Some("json") => {}
            Some(other) => {
                return Err(ExecutorError::Unsupported(format!(
                    "ENCODE {} for a sink (supported: JSON)",
                    other.to_uppercase()
                )));
            }
        }
        options.reject_unknown()?;
        Ok(Self {
            id,
            schema,
            topic,
            config,
            sink_type,
            key,
        })
    }
}
