//! Eddy's server: the engine behind the `eddy` binary and its Postgres
//! wire front end. The binary (`main.rs`) only parses configuration,
//! listens and shuts down; the benchmark drives [`Engine`] in-process.

/// Every binary of the server allocates with mimalloc: operator state is
/// many small allocations made and freed on several threads, where glibc's
/// allocator spent a third of the time (locks, consolidation) in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod catalog;
mod engine;
mod error;
mod functions;
mod jobs;
mod pg;
mod pg_class;
mod providers;
mod system_tables;

pub use eddy_executor::{StateBackend, StateConfig};
pub use engine::{
    DEFAULT_MAX_CHECKPOINT_BACKLOG, Engine, EngineConfig, IMPLICIT_FLUSH, Outcome, Prepared,
    Settings,
};
pub use error::{EddyError, Result};
pub use pg::PgHandler;
