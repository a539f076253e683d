//! Planner errors.

use datafusion::error::DataFusionError;

/// Errors raised while parsing or planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The SQL is valid but Eddy cannot do it (yet); the text says what.
    #[error("{0}")]
    Unsupported(String),
    /// An argument's value is out of range (a window size of zero, ...).
    #[error("{0}")]
    InvalidParameter(String),
    /// A bug in Eddy.
    #[error("internal error: {0}")]
    Internal(String),
    /// An error from DataFusion's parser, binder or optimizer.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

/// Result alias for the planner crate.
pub type Result<T, E = PlanError> = std::result::Result<T, E>;
