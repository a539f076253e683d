//! The in-memory catalog: every relation's definition, as planned from its
//! stored `CREATE` statement.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;

use eddy_executor::sink::DeliveryStatus;
use eddy_executor::source::SourceSpec;
use eddy_executor::{ReadTarget, RowCodec};
use eddy_storage::RelationKind;

use crate::error::{EddyError, Result};

/// How a table's rows are keyed and encoded in storage.
#[derive(Debug)]
pub struct TableRows {
    /// Primary key column indices (empty: hidden row ids).
    pub primary_key: Vec<usize>,
    key_codec: Option<RowCodec>,
    value_codec: RowCodec,
    next_row_id: AtomicU64,
}

impl TableRows {
    /// Row encoding for `schema` keyed by `primary_key`; hidden row ids continue after `last_key`.
    pub fn new(
        schema: &SchemaRef,
        primary_key: Vec<usize>,
        last_key: Option<&[u8]>,
    ) -> Result<Self> {
        let key_codec = if primary_key.is_empty() {
            None
        } else {
            Some(RowCodec::new(
                primary_key
                    .iter()
                    .map(|&i| schema.field(i).data_type().clone())
                    .collect(),
            )?)
        };
        let next = match (primary_key.is_empty(), last_key) {
            (true, Some(k)) if k.len() == 8 => {
                u64::from_be_bytes(k.try_into().unwrap_or([0; 8])) + 1
            }
            _ => 0,
        };
        Ok(Self {
            primary_key,
            key_codec,
            value_codec: RowCodec::for_schema(schema)?,
            next_row_id: AtomicU64::new(next),
        })
    }

    /// Storage keys of new rows: their primary key, or fresh hidden row ids.
    pub fn new_keys(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        match &self.key_codec {
            Some(codec) => {
                let columns: Vec<ArrayRef> = self
                    .primary_key
                    .iter()
                    .map(|&i| batch.column(i).clone())
                    .collect();
                Ok(codec
                    .encode(&columns)?
                    .iter()
                    .map(|r| r.as_ref().to_vec())
                    .collect())
            }
            None => {
                let n = batch.num_rows() as u64;
                let first = self.next_row_id.fetch_add(n, Ordering::Relaxed);
                Ok((first..first + n)
                    .map(|id| id.to_be_bytes().to_vec())
                    .collect())
            }
        }
    }

    /// Encoded rows of `batch`.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .value_codec
            .encode(batch.columns())?
            .iter()
            .map(|r| r.as_ref().to_vec())
            .collect())
    }

    /// The codec of the table's rows.
    pub fn codec(&self) -> &RowCodec {
        &self.value_codec
    }

    /// Decodes stored rows into columns.
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        Ok(self.value_codec.decode(rows)?)
    }
}

/// One relation.
#[derive(Debug)]
pub struct RelationInfo {
    /// Stable id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: RelationKind,
    /// Columns.
    pub schema: SchemaRef,
    /// The `CREATE` statement.
    pub sql: String,
    /// Relations this one reads (blocks their plain DROP).
    pub depends_on: Vec<String>,
    /// Tables: row encoding.
    pub rows: Option<TableRows>,
    /// Views: the plan inlined where the view is used.
    pub view_plan: Option<LogicalPlan>,
    /// Sources: what generates the rows.
    pub source: Option<Arc<SourceSpec>>,
    /// Sinks: how far delivery got.
    pub sink: Option<Arc<DeliveryStatus>>,
}

impl RelationInfo {
    /// A table's row encoding; 42809 for views.
    pub fn table_rows(&self) -> Result<&TableRows> {
        self.rows
            .as_ref()
            .ok_or_else(|| EddyError::WrongObjectType {
                name: self.name.clone(),
                expected: "table",
            })
    }

    /// The word Postgres uses for this kind.
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }
}

/// The word Postgres uses for `kind`.
pub fn kind_name(kind: RelationKind) -> &'static str {
    match kind {
        RelationKind::Table => "table",
        RelationKind::View => "view",
        RelationKind::MaterializedView => "materialized view",
        RelationKind::Source => "source",
        RelationKind::Sink => "sink",
        RelationKind::LateRows => "late-rows table",
    }
}

/// All relations by name.
#[derive(Debug, Default)]
pub struct Catalog {
    relations: RwLock<BTreeMap<String, Arc<RelationInfo>>>,
}

impl Catalog {
    /// The relation named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<RelationInfo>> {
        self.relations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The relation named `name`, or 42P01.
    pub fn require(&self, name: &str) -> Result<Arc<RelationInfo>> {
        self.get(name)
            .ok_or_else(|| EddyError::UndefinedTable(name.to_string()))
    }

    /// Adds a relation.
    pub fn insert(&self, info: RelationInfo) {
        self.relations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.name.clone(), Arc::new(info));
    }

    /// Removes a relation.
    pub fn remove(&self, name: &str) {
        self.relations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Every relation, by name.
    pub fn all(&self) -> Vec<Arc<RelationInfo>> {
        self.relations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Relations that read `name`.
    pub fn dependents(&self, name: &str) -> Vec<Arc<RelationInfo>> {
        self.all()
            .into_iter()
            .filter(|r| r.depends_on.iter().any(|d| d == name))
            .collect()
    }

    /// What a pipeline reads for relation `name`: a source's stream, or a
    /// table's, materialized view's or late-rows relation's changelog.
    pub fn read_target(&self, name: &str) -> Option<ReadTarget> {
        let r = self.get(name)?;
        match (&r.kind, &r.source) {
            (RelationKind::Source, Some(spec)) => Some(ReadTarget::Source(spec.clone())),
            (RelationKind::Table | RelationKind::MaterializedView | RelationKind::LateRows, _) => {
                Some(ReadTarget::Relation(r.id))
            }
            _ => None,
        }
    }

    /// The next free relation id (late-rows relations' ids are derived
    /// from their views').
    pub fn next_id(&self) -> u32 {
        self.all()
            .iter()
            .filter(|r| r.kind != RelationKind::LateRows)
            .map(|r| r.id + 1)
            .max()
            .unwrap_or(1)
    }

    /// The late-rows relation of view `view`, if it keeps late rows.
    pub fn late_rows_of(&self, view: u32) -> Option<Arc<RelationInfo>> {
        let id = eddy_executor::late_rows_id(view);
        self.all()
            .into_iter()
            .find(|r| r.id == id && r.kind == RelationKind::LateRows)
    }
}
