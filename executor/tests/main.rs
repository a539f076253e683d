//! Executor tests: real operators and pipelines driven through the
//! [`Runtime`] API, with plans made by DataFusion, no server.

mod alignment;
mod input;
mod keyed_state;
mod pipelines;
mod restart;
mod state_ttl;
