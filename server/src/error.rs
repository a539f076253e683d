//! User-facing errors and their Postgres SQLSTATEs.
//!
//! Every error that reaches a client goes through [`EddyError::sqlstate`].
//! DataFusion's errors are classified by their root cause.

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum EddyError {
    /// Malformed SQL (42601).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// A relation does not exist (42P01).
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    /// A relation already exists (42P07).
    #[error("relation \"{0}\" already exists")]
    DuplicateTable(String),
    /// A relation is not of the kind the statement names (42809).
    #[error("\"{name}\" is not a {expected}")]
    WrongObjectType {
        /// Relation name.
        name: String,
        /// What the statement expected ("table", "view", ...).
        expected: &'static str,
    },
    /// Other objects depend on the one being dropped (2BP01).
    #[error(
        "cannot drop {name} because other objects depend on it: {dependents} (use DROP ... CASCADE to drop them too)"
    )]
    DependentObjects {
        /// Relation being dropped.
        name: String,
        /// Its dependents, comma separated.
        dependents: String,
    },
    /// A primary key value is already present (23505).
    #[error(
        "duplicate key value violates unique constraint \"{table}_pkey\": key {key} already exists"
    )]
    UniqueViolation {
        /// Table name.
        table: String,
        /// The key, as text.
        key: String,
    },
    /// NULL in a NOT NULL column (23502).
    #[error(
        "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
    )]
    NotNullViolation {
        /// Table name.
        table: String,
        /// Column name.
        column: String,
    },
    /// Valid SQL Eddy does not support (0A000).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// An error with an explicit SQLSTATE.
    #[error("{message}")]
    Coded {
        /// SQLSTATE.
        code: &'static str,
        /// Message.
        message: String,
    },
    /// From DataFusion (classified in [`EddyError::sqlstate`]).
    #[error("{}", clean_datafusion_message(.0))]
    DataFusion(#[from] DataFusionError),
    /// From storage.
    #[error(transparent)]
    Storage(#[from] eddy_storage::StorageError),
    /// From the streaming runtime.
    #[error(transparent)]
    Executor(#[from] eddy_executor::ExecutorError),
}

/// Result alias for the server.
pub type Result<T, E = EddyError> = std::result::Result<T, E>;

impl From<ParserError> for EddyError {
    fn from(e: ParserError) -> Self {
        EddyError::Syntax(
            e.to_string()
                .trim_start_matches("sql parser error: ")
                .to_string(),
        )
    }
}

impl From<eddy_planner::PlanError> for EddyError {
    fn from(e: eddy_planner::PlanError) -> Self {
        match e {
            eddy_planner::PlanError::Unsupported(m) => EddyError::Unsupported(m),
            eddy_planner::PlanError::InvalidParameter(message) => EddyError::Coded {
                code: "22023",
                message,
            },
            eddy_planner::PlanError::Internal(message) => EddyError::Coded {
                code: "XX000",
                message,
            },
            eddy_planner::PlanError::DataFusion(e) => EddyError::DataFusion(e),
        }
    }
}

impl From<ArrowError> for EddyError {
    fn from(e: ArrowError) -> Self {
        EddyError::DataFusion(DataFusionError::ArrowError(Box::new(e), None))
    }
}

fn clean_datafusion_message(e: &DataFusionError) -> String {
    let root = e.find_root();
    let text = match root {
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m) => m.clone(),
        DataFusionError::SchemaError(s, _) => s.to_string(),
        DataFusionError::ArrowError(a, _) => a.to_string(),
        DataFusionError::SQL(p, _) => p.to_string(),
        DataFusionError::External(e) => e.to_string(),
        other => other.to_string(),
    };
    text.trim().to_string()
}

fn arrow_sqlstate(e: &ArrowError) -> &'static str {
    match e {
        ArrowError::DivideByZero => "22012",
        ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
        ArrowError::ComputeError(m) if m.contains("Overflow") || m.contains("overflow") => "22003",
        _ => "XX000",
    }
}

impl EddyError {
    /// The SQLSTATE of this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            EddyError::Syntax(_) => "42601",
            EddyError::UndefinedTable(_) => "42P01",
            EddyError::DuplicateTable(_) => "42P07",
            EddyError::WrongObjectType { .. } => "42809",
            EddyError::DependentObjects { .. } => "2BP01",
            EddyError::UniqueViolation { .. } => "23505",
            EddyError::NotNullViolation { .. } => "23502",
            EddyError::Unsupported(_) => "0A000",
            EddyError::Coded { code, .. } => code,
            EddyError::Storage(e) => storage_sqlstate(e),
            EddyError::Executor(eddy_executor::ExecutorError::Unsupported(_)) => "0A000",
            EddyError::Executor(eddy_executor::ExecutorError::InvalidOption(_)) => "22023",
            EddyError::Executor(eddy_executor::ExecutorError::Windowing(_)) => "42P20",
            EddyError::Executor(eddy_executor::ExecutorError::Storage(e)) => storage_sqlstate(e),
            // As postgres_fdw reports a foreign server it cannot reach.
            EddyError::Executor(eddy_executor::ExecutorError::Connector(_)) => "08001",
            EddyError::Executor(eddy_executor::ExecutorError::UnknownTopic(_)) => "42704",
            EddyError::Executor(
                eddy_executor::ExecutorError::CorruptState(_)
                | eddy_executor::ExecutorError::StateLayout { .. },
            ) => "XX001",
            EddyError::Executor(eddy_executor::ExecutorError::DataFusion(e)) => {
                datafusion_sqlstate(e)
            }
            EddyError::Executor(_) => "XX000",
            EddyError::DataFusion(e) => datafusion_sqlstate(e),
        }
    }

    /// Character position (1-based) of a syntax error, as Postgres reports it.
    pub fn position(&self, sql: &str) -> Option<usize> {
        let EddyError::Syntax(m) = self else {
            return None;
        };
        let line: usize = m
            .split("Line: ")
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let column: usize = m
            .split("Column: ")
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let before: usize = sql
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(|l| l.chars().count())
            .sum();
        Some(before + column)
    }
}

/// `disk_full` when the disk is, else `io_error`: either way nothing was
/// written, and the client should know whether waiting for space helps.
fn storage_sqlstate(e: &eddy_storage::StorageError) -> &'static str {
    if e.is_disk_full() { "53100" } else { "58030" }
}

fn datafusion_sqlstate(e: &DataFusionError) -> &'static str {
    match e.find_root() {
        DataFusionError::SQL(_, _) => "42601",
        DataFusionError::SchemaError(s, _) => match s.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::AmbiguousReference { .. } => "42702",
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
        },
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ArrowError(a, _) => arrow_sqlstate(a),
        // Our planner's errors, raised inside DataFusion (window functions).
        DataFusionError::External(e) => match e.downcast_ref::<eddy_planner::PlanError>() {
            Some(eddy_planner::PlanError::InvalidParameter(_)) => "22023",
            Some(eddy_planner::PlanError::Unsupported(_)) => "0A000",
            _ => "XX000",
        },
        DataFusionError::Plan(m) => {
            let m = m.to_lowercase();
            if m.contains("not found") && (m.contains("table") || m.contains("relation")) {
                "42P01"
            } else if m.contains("no field named")
                || m.contains("column") && m.contains("not found")
            {
                "42703"
            } else if m.contains("function")
                && (m.contains("invalid")
                    || m.contains("not found")
                    || m.contains("does not exist"))
            {
                "42883"
            } else if m.contains("cannot")
                && (m.contains("coerce") || m.contains("cast") || m.contains("infer"))
                || m.contains("type")
            {
                "42804"
            } else if m.contains("unsupported") || m.contains("not supported") {
                "0A000"
            } else {
                "42000"
            }
        }
        DataFusionError::Execution(m) => {
            let m = m.to_lowercase();
            if m.contains("divide by zero") || m.contains("division by zero") {
                "22012"
            } else if m.contains("cast") || m.contains("parse") {
                "22P02"
            } else {
                "XX000"
            }
        }
        _ => "XX000",
    }
}
