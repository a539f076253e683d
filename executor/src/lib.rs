//! Eddy's streaming runtime: incremental operators over Arrow batches.
//!
//! A pipeline is a graph of [`fragment::Fragment`] tasks connected by bounded
//! channels (backpressure) carrying [`Message`]s: changelog chunks, epoch
//! barriers and watermarks. Tables publish their DML as chunks; sources are
//! read by each view's own readers ([`source`]); each table and view ends in
//! a materialize operator that hands its epoch's net change to the
//! [`Coordinator`], which commits all relations of an epoch at once.
//!
//! See `docs/architecture.md` for the whole picture.

pub mod aggregate;
mod build;
pub mod checkpoint;
mod closing_partitions;
mod codec;
mod coordinator;
mod dispatch;
mod error;
mod eval;
mod fragment;
mod hash;
pub mod input;
mod join;
mod kafka_client;
mod key;
pub mod keyed_state;
mod late_rows;
mod materialize;
mod message;
mod operator;
mod ordered_partitions;
mod over_window;
mod per_relation;
mod progress;
mod relation_rows;
mod restart;
mod runtime;
mod session;
pub mod sink;
pub mod source;
pub mod state_ttl;
mod sync;
mod temporal_filter;
mod time_ordered_state;
mod watermark;
mod window_index;

pub use build::batch_schema;
pub use codec::{RowCodec, encode_change};
pub use coordinator::{Coordinator, Feed};
pub use error::{ExecutorError, Result};
pub use eval::ErrorStats;
pub use keyed_state::{StateBackend, StateConfig};
pub use late_rows::{late_rows_id, schema as late_rows_schema};
pub use message::{Barrier, Message, Op, StreamChunk, Watermark};
pub use operator::StateSize;
pub use progress::{ReaderProgress, RelationProgress};
pub use restart::RestartStrategy;
pub use runtime::{PipelineOptions, Quiesced, ReadTarget, Runtime, WriteGuard};
