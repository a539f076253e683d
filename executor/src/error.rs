//! Executor errors.

use datafusion::error::DataFusionError;

/// Errors of the streaming runtime.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// Arrow / DataFusion failed on something other than a row's value.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// The plan asks for something the runtime cannot maintain.
    #[error("{0}")]
    Unsupported(String),
    /// A source's `WITH (...)` options are wrong; the text says how.
    #[error("{0}")]
    InvalidOption(String),
    /// An external system (a Kafka broker) cannot be reached or refused.
    #[error("{0}")]
    Connector(String),
    /// A Kafka topic the broker does not have.
    #[error("Kafka topic \"{0}\" does not exist")]
    UnknownTopic(String),
    /// `EMIT ON WINDOW CLOSE` (or another windowing rule) cannot apply.
    #[error("{0}")]
    Windowing(String),
    /// Checkpointed state cannot be read back: a damaged data directory or a bug.
    #[error("checkpointed state is unreadable: {0}")]
    CorruptState(String),
    /// Checkpointed state laid out by another version (see
    /// [`crate::checkpoint::STATE_LAYOUT`]).
    #[error(
        "its checkpoint was written by an older version of Eddy, in state layout {found} \
         (this version reads layout {})",
        crate::checkpoint::STATE_LAYOUT
    )]
    StateLayout {
        /// The layout found.
        found: u32,
    },
    /// A pipeline failed, and a restart from its checkpoint would not be exact.
    #[error("it had failed: {0}")]
    Failed(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] eddy_storage::StorageError),
    /// A broken invariant: this is a bug in Eddy.
    #[error("internal error (this is a bug in Eddy): {0}")]
    Internal(String),
}

/// Result alias for the executor crate.
pub type Result<T, E = ExecutorError> = std::result::Result<T, E>;
