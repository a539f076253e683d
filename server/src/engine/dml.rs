//! INSERT, UPDATE and DELETE.
//!
//! Under the write lock: compute the statement's old and new rows, check
//! constraints, write them to storage in one synced batch, then publish the
//! change (deletes of old rows, inserts of new ones) to the table's
//! changelog. UPDATE and DELETE find their rows in the table's latest stored
//! rows (`__eddy_dml.<table>`), whose hidden column is each row's storage key.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::logical_expr::{DmlStatement, WriteOp};
use datafusion::sql::sqlparser::ast::{
    Delete, FromTable, Ident, ObjectName, ObjectNamePart, Statement, TableAlias, TableFactor,
    TableWithJoins,
};

use eddy_executor::{Op, StreamChunk, WriteGuard};
use eddy_storage::{RelationKind, RowWrite};

use super::{DML_SCHEMA, Engine, IMPLICIT_FLUSH, Outcome, Settings};
use crate::catalog::{Catalog, RelationInfo};
use crate::error::{EddyError, Result};
use crate::providers::ROW_KEY;

/// `deleting` allows a late-rows relation, which is deleted from as it is
/// (see [`Engine::delete_late_rows`]).
fn retarget_factor(table: &mut TableWithJoins, catalog: &Catalog, deleting: bool) -> Result<()> {
    let TableFactor::Table { name, alias, .. } = &mut table.relation else {
        return Err(EddyError::Unsupported(
            "UPDATE / DELETE of something other than a table".into(),
        ));
    };
    let Some(last) = name.0.last().cloned() else {
        return Err(EddyError::Syntax("missing table name".into()));
    };
    let normalized = crate::functions::normalize_ident(&last.to_string());
    let kind = catalog.get(&normalized).map(|info| info.kind);
    if deleting && kind == Some(RelationKind::LateRows) {
        return Ok(());
    }
    if let Some(kind) = kind
        && kind != RelationKind::Table
    {
        return Err(EddyError::WrongObjectType {
            name: normalized,
            expected: "table",
        });
    }
    if alias.is_none() {
        let ident = last
            .as_ident()
            .cloned()
            .unwrap_or_else(|| Ident::new(last.to_string()));
        *alias = Some(TableAlias {
            name: ident,
            columns: vec![],
            explicit: true,
            at: None,
        });
    }
    *name = ObjectName(vec![
        ObjectNamePart::Identifier(Ident::new(DML_SCHEMA)),
        last,
    ]);
    Ok(())
}

/// Points an UPDATE / DELETE at the table's latest rows (`__eddy_dml.t AS t`);
/// 42809 when it names a relation of `catalog` that is not a table.
pub(super) fn retarget(mut stmt: Statement, catalog: &Catalog) -> Result<Statement> {
    match &mut stmt {
        Statement::Update(update) => {
            if update.from.is_some() || update.returning.is_some() {
                return Err(EddyError::Unsupported("UPDATE ... FROM / RETURNING".into()));
            }
            retarget_factor(&mut update.table, catalog, false)?;
        }
        Statement::Delete(Delete {
            from,
            using,
            returning,
            ..
        }) => {
            if using.is_some() || returning.is_some() {
                return Err(EddyError::Unsupported(
                    "DELETE ... USING / RETURNING".into(),
                ));
            }
            let tables = match from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            let [table] = tables.as_mut_slice() else {
                return Err(EddyError::Unsupported("DELETE from several tables".into()));
            };
            retarget_factor(table, catalog, true)?;
        }
        _ => {}
    }
    Ok(stmt)
}

impl Engine {
    pub(super) async fn execute_dml(
        &self,
        dml: DmlStatement,
        settings: &Settings,
    ) -> Result<Outcome> {
        let name = dml.table_name.table().to_string();
        let info = self.catalog.require(&name)?;
        if info.kind == RelationKind::LateRows && matches!(dml.op, WriteOp::Delete) {
            return self.delete_late_rows(&info, &dml).await;
        }
        if info.kind != RelationKind::Table {
            return Err(EddyError::WrongObjectType {
                name,
                expected: "table",
            });
        }
        let (tag, rows) = {
            let guard = self.runtime.write_lock().await;
            // Reads of other relations (INSERT ... SELECT, subqueries) must see
            // every earlier statement: settle the pipelines first.
            if !Self::scanned_relations(&dml.input)?.is_empty() {
                drop(self.runtime.quiesce(&guard).await);
            }
            let (_, batches) = self.run_query(dml.input.as_ref().clone()).await?;
            let (tag, change, writes) = match dml.op {
                WriteOp::Insert(_) => {
                    let new = self.conform(&info, &batches, info.schema.fields().len())?;
                    let (change, writes) = self.prepare_insert(&info, new)?;
                    ("INSERT 0", change, writes)
                }
                WriteOp::Update => {
                    let (change, writes) = self.prepare_update(&info, &batches)?;
                    ("UPDATE", change, writes)
                }
                WriteOp::Delete => {
                    let (change, writes) = self.prepare_delete(&info, &batches)?;
                    ("DELETE", change, writes)
                }
                other => return Err(EddyError::Unsupported(format!("{other}"))),
            };
            let count = match &change {
                Some(c) if tag == "UPDATE" => c.len() / 2,
                Some(c) => c.len(),
                None => 0,
            };
            self.apply_change(&guard, &info, change, &writes).await?;
            (tag, count)
        };
        if settings
            .get(IMPLICIT_FLUSH)
            .is_some_and(|v| matches!(v.as_str(), "true" | "on" | "1"))
        {
            self.runtime.flush().await;
        }
        Ok(Outcome::Command {
            tag: tag.to_string(),
            rows: Some(rows),
        })
    }

    /// DELETE from a late-rows relation: clears rows once handled. Its rows
    /// change only in checkpoints, so the rows the statement selects are
    /// removed with the next epoch, which it waits for: durable (or
    /// reported, on a full disk) on return. Views reading it take the
    /// removal in with that epoch.
    async fn delete_late_rows(&self, info: &RelationInfo, dml: &DmlStatement) -> Result<Outcome> {
        let (epoch, rows) = {
            let guard = self.runtime.write_lock().await;
            let quiesced = self.runtime.quiesce(&guard).await;
            let (_, batches) = self.run_query(dml.input.as_ref().clone()).await?;
            let width = info.schema.fields().len();
            let removed = batches
                .iter()
                .map(|batch| {
                    let columns = batch.columns().get(..width).ok_or(EddyError::Coded {
                        code: "XX000",
                        message: "the rows to delete lack columns".into(),
                    })?;
                    Ok(RecordBatch::try_new(info.schema.clone(), columns.to_vec())?)
                })
                .collect::<Result<Vec<_>>>()?;
            self.runtime.coordinator().retract(info.id, &removed)?;
            // Its readers take the removal in with the same epoch.
            for rows in &removed {
                let chunk = StreamChunk::deletes(rows.clone());
                self.runtime.publish(&guard, info.id, chunk, 0).await;
            }
            drop(quiesced);
            let rows = removed.iter().map(RecordBatch::num_rows).sum::<usize>();
            (self.runtime.inject_barrier(&guard).await, rows)
        };
        self.runtime.coordinator().wait_committed(epoch).await;
        self.runtime.coordinator().wait_written(epoch).await;
        Ok(Outcome::Command {
            tag: "DELETE".to_string(),
            rows: Some(rows),
        })
    }

    /// Makes a statement's change durable, then publishes it to the table's readers.
    pub(super) async fn apply_change(
        &self,
        guard: &WriteGuard<'_>,
        info: &RelationInfo,
        change: Option<StreamChunk>,
        writes: &[RowWrite],
    ) -> Result<()> {
        if let Some(change) = change {
            let logged = eddy_executor::encode_change(info.table_rows()?.codec(), &change)?;
            let seq = self.store.write_rows(info.id, writes, &logged)?;
            self.runtime.publish(guard, info.id, change, seq).await;
        }
        Ok(())
    }

    /// The first `width` columns of `batches` as one batch of the table's schema.
    pub(super) fn conform(
        &self,
        info: &RelationInfo,
        batches: &[RecordBatch],
        width: usize,
    ) -> Result<RecordBatch> {
        let columns = |b: &RecordBatch| -> Vec<ArrayRef> { b.columns()[..width].to_vec() };
        let parts = batches
            .iter()
            .map(|b| {
                RecordBatch::try_new(info.schema.clone(), columns(b))
                    .map_err(|e| self.not_null_error(info, b, e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(concat_batches(&info.schema, &parts)?)
    }

    fn not_null_error(
        &self,
        info: &RelationInfo,
        batch: &RecordBatch,
        e: datafusion::arrow::error::ArrowError,
    ) -> EddyError {
        for (i, field) in info.schema.fields().iter().enumerate() {
            if !field.is_nullable() && batch.column(i).null_count() > 0 {
                return EddyError::NotNullViolation {
                    table: info.name.clone(),
                    column: field.name().clone(),
                };
            }
        }
        e.into()
    }

    fn key_text(info: &RelationInfo, batch: &RecordBatch, row: usize) -> String {
        let Some(rows) = &info.rows else {
            return String::new();
        };
        let cols: Vec<String> = rows
            .primary_key
            .iter()
            .map(|&i| info.schema.field(i).name().clone())
            .collect();
        let vals: Vec<String> = rows
            .primary_key
            .iter()
            .map(|&i| {
                datafusion::arrow::util::display::array_value_to_string(batch.column(i), row)
                    .unwrap_or_default()
            })
            .collect();
        format!("({})=({})", cols.join(", "), vals.join(", "))
    }

    pub(super) fn prepare_insert(
        &self,
        info: &RelationInfo,
        new: RecordBatch,
    ) -> Result<(Option<StreamChunk>, Vec<RowWrite>)> {
        if new.num_rows() == 0 {
            return Ok((None, vec![]));
        }
        let rows = info.table_rows()?;
        let keys = rows.new_keys(&new)?;
        if !rows.primary_key.is_empty() {
            let mut seen = HashSet::new();
            let existing = self.store.get_rows(info.id, &keys)?;
            for (i, (key, old)) in keys.iter().zip(&existing).enumerate() {
                if old.is_some() || !seen.insert(key) {
                    return Err(EddyError::UniqueViolation {
                        table: info.name.clone(),
                        key: Self::key_text(info, &new, i),
                    });
                }
            }
        }
        let values = rows.encode(&new)?;
        let writes = keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| RowWrite::Put { key, value })
            .collect();
        Ok((Some(StreamChunk::inserts(new)), writes))
    }

    /// Storage keys of the rows a DML plan produced (its hidden key column).
    fn row_keys(batches: &[RecordBatch]) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for batch in batches {
            out.extend(Self::batch_row_keys(batch)?);
        }
        Ok(out)
    }

    fn batch_row_keys(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let keys = batch
            .column_by_name(ROW_KEY)
            .and_then(|c| c.as_any().downcast_ref::<BinaryArray>())
            .ok_or_else(|| EddyError::Coded {
                code: "XX000",
                message: "DML plan lost the row key (this is a bug in Eddy)".into(),
            })?;
        Ok(keys
            .iter()
            .map(|k| k.unwrap_or_default().to_vec())
            .collect())
    }

    fn prepare_delete(
        &self,
        info: &RelationInfo,
        batches: &[RecordBatch],
    ) -> Result<(Option<StreamChunk>, Vec<RowWrite>)> {
        let width = info.schema.fields().len();
        let old = self.conform(info, batches, width)?;
        if old.num_rows() == 0 {
            return Ok((None, vec![]));
        }
        let keys = Self::row_keys(batches)?;
        let writes = keys
            .into_iter()
            .map(|key| RowWrite::Delete { key })
            .collect();
        Ok((Some(StreamChunk::deletes(old)), writes))
    }

    fn prepare_update(
        &self,
        info: &RelationInfo,
        batches: &[RecordBatch],
    ) -> Result<(Option<StreamChunk>, Vec<RowWrite>)> {
        let rows = info.table_rows()?;
        let width = info.schema.fields().len();
        let new = self.conform(info, batches, width)?;
        if new.num_rows() == 0 {
            return Ok((None, vec![]));
        }
        let old_keys = Self::row_keys(batches)?;
        let stored = self.store.get_rows(info.id, &old_keys)?;
        let stored: Vec<&[u8]> = stored
            .iter()
            .map(|v| v.as_deref().unwrap_or_default())
            .collect();
        let old = RecordBatch::try_new(info.schema.clone(), rows.decode(stored)?)?;
        let new_keys = if rows.primary_key.is_empty() {
            old_keys.clone()
        } else {
            rows.new_keys(&new)?
        };
        if !rows.primary_key.is_empty() {
            let freed: HashSet<&Vec<u8>> = old_keys.iter().collect();
            let existing = self.store.get_rows(info.id, &new_keys)?;
            let mut seen = HashSet::new();
            for (i, (key, present)) in new_keys.iter().zip(&existing).enumerate() {
                if (present.is_some() && !freed.contains(key)) || !seen.insert(key) {
                    return Err(EddyError::UniqueViolation {
                        table: info.name.clone(),
                        key: Self::key_text(info, &new, i),
                    });
                }
            }
        }
        let values = rows.encode(&new)?;
        let mut writes: Vec<RowWrite> = old_keys
            .into_iter()
            .map(|key| RowWrite::Delete { key })
            .collect();
        writes.extend(
            new_keys
                .into_iter()
                .zip(values)
                .map(|(key, value)| RowWrite::Put { key, value }),
        );
        let both = concat_batches(&info.schema, [&old, &new])?;
        let ops: Vec<Op> = std::iter::repeat_n(Op::Delete, old.num_rows())
            .chain(std::iter::repeat_n(Op::Insert, new.num_rows()))
            .collect();
        Ok((
            Some(StreamChunk {
                batch: both,
                ops: Arc::from(ops),
            }),
            writes,
        ))
    }
}
