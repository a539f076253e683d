//! Durable catalog entries: the DDL text of each relation, replayed on start.

use serde::{Deserialize, Serialize};

/// What kind of relation a catalog entry defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelationKind {
    /// A table: rows are stored, DML changes them.
    Table,
    /// A (non-materialized) view: its query is inlined where it is used.
    View,
    /// A materialized view: maintained incrementally from its inputs.
    MaterializedView,
    /// A source: an append-only stream from a connector; no stored rows.
    Source,
    /// A sink: a query's changes written to a connector; no stored rows.
    Sink,
    /// The late rows a materialized view keeps (`WITH (late_rows = ...)`):
    /// read-only, created and dropped with the view, never stored as an
    /// entry of its own.
    LateRows,
}

/// One relation as persisted: its id, name and the statement that created it.
///
/// The statement text is the source of truth for the schema and plan; it is
/// planned again on restart, so the catalog never stores derived state that
/// could drift from what the planner would produce.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Stable id; also the prefix of the relation's rows.
    pub id: u32,
    /// Relation name (normalized, unqualified).
    pub name: String,
    /// Relation kind.
    pub kind: RelationKind,
    /// The `CREATE ...` statement text.
    pub sql: String,
}
