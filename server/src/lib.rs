//! Eddy's server: the engine behind the `eddy` binary and its Postgres
//! wire front end. The binary (`main.rs`) only parses configuration,
//! listens and shuts down; the benchmark drives [`Engine`] in-process.

mod catalog;
mod engine;
mod error;
mod functions;
mod pg;
mod pg_class;
mod providers;
mod system_tables;

pub use engine::{Engine, IMPLICIT_FLUSH, Outcome, Prepared, Settings};
pub use error::{EddyError, Result};
pub use pg::PgHandler;
