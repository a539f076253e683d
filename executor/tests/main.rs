//! Executor tests: real operators and pipelines driven through the
//! [`Runtime`] API, with plans made by DataFusion, no server.

mod input;
mod pipelines;
mod restart;
