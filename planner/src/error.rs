//! Planner errors.

use datafusion::error::DataFusionError;

/// Errors raised while parsing or planning.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The SQL is valid but Eddy cannot do it (yet); the text says what.
    #[error("{0}")]
    Unsupported(String),
    /// An error from DataFusion's parser, binder or optimizer.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

/// Result alias for the planner crate.
pub type Result<T, E = PlanError> = std::result::Result<T, E>;
