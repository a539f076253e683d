//! SQL text to Eddy statements, and DataFusion logical plans to stream plans.
//!
//! Name resolution, type coercion and scalar functions are DataFusion's: a
//! materialized view's query is planned and optimized by DataFusion, then
//! [`lower`] turns the optimized `LogicalPlan` into a [`StreamNode`] tree of
//! incremental operators. Anything the stream runtime cannot maintain
//! incrementally is rejected here with [`PlanError::Unsupported`], before any
//! state exists.

mod create_sink;
mod error;
mod parse;
mod session;
mod shared;
mod stream_plan;
mod temporal;
mod time;
mod window;

pub use create_sink::{CreateSink, SinkInput};
pub use error::{PlanError, Result};
pub use parse::{CreateSource, EddyStatement, option_value, parse_sql};
pub use session::{SessionBound, same_session, session_window_functions};
pub use shared::{SharedSubplan, shared_subplans};
pub use stream_plan::{AggregateCall, AggregateKind, JoinKind, StreamNode, lower};
pub use temporal::{NowIs, ProcessingTime, TemporalBound, defer_now};
pub use time::{nanos_to_time, scalar_nanos, system_time_nanos, time_nanos};
pub use window::{duration_setting, duration_text, interval_text_nanos, rewrite_windows};
