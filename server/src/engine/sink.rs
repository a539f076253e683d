//! CREATE SINK, and SHOW SINKS with each sink's delivery.

use std::sync::Arc;

use datafusion::sql::sqlparser::ast::Statement;

use eddy_executor::batch_schema;
use eddy_executor::sink::SinkSpec;
use eddy_planner::{CreateSink, SinkInput};
use eddy_storage::{CatalogEntry, RelationKind};

use super::ddl::referenced_relations;
use super::job_options::JobOptions;
use super::show::text_rows;
use super::{Engine, Outcome};
use crate::catalog::RelationInfo;
use crate::error::{EddyError, Result};

impl Engine {
    /// CREATE SINK. `id` is set when replaying the stored catalog.
    pub(super) async fn create_sink(&self, sink: &CreateSink, id: Option<u32>) -> Result<Outcome> {
        let Some(name) = self.fresh_name(&sink.name, sink.if_not_exists)? else {
            return Ok(Outcome::command("CREATE SINK"));
        };
        let query = match &sink.input {
            SinkInput::Relation(relation) => {
                let sql = format!("SELECT * FROM {relation}");
                match eddy_planner::parse_sql(&sql)?.pop() {
                    Some(eddy_planner::EddyStatement::Sql(stmt)) => *stmt,
                    _ => return Err(EddyError::Unsupported(sql)),
                }
            }
            SinkInput::Query(query) => Statement::Query(query.clone()),
        };
        let depends_on = referenced_relations(&query, &self.catalog);
        let plan = self.bind(query).await?;
        let stream_plan = self.stream_plan(&plan)?;
        let schema = batch_schema(stream_plan.schema());
        let guard = self.runtime.write_lock().await;
        let quiesced = self.runtime.quiesce(&guard).await;
        let replaying = id.is_some();
        let id = id.unwrap_or_else(|| self.catalog.next_id());
        let mut options = sink.options.clone();
        let job_options = JobOptions::take(&mut options)?;
        let spec = Arc::new(SinkSpec::new(id, schema.clone(), options)?);
        let status = self.runtime.create_sink(
            &quiesced,
            spec,
            &stream_plan,
            job_options.pipeline(false, self.state),
            &|n| self.catalog.read_target(n),
        )?;
        let sql = sink.to_string();
        if !replaying {
            let entry = CatalogEntry {
                id,
                name: name.clone(),
                kind: RelationKind::Sink,
                sql: sql.clone(),
            };
            if let Err(e) = self.store.put_catalog(&entry) {
                self.runtime.drop_relation(&quiesced, id);
                return Err(e.into());
            }
        }
        self.catalog.insert(RelationInfo {
            id,
            name,
            kind: RelationKind::Sink,
            schema,
            sql,
            depends_on,
            rows: None,
            view_plan: None,
            source: None,
            sink: Some(status),
        });
        job_options.apply(&self.jobs, id);
        drop(quiesced);
        drop(guard);
        // As for a materialized view: the statement returns once the rows
        // the sink starts from are committed, so later changes follow them.
        self.runtime.flush().await;
        Ok(Outcome::command("CREATE SINK"))
    }

    /// SHOW SINKS: each sink with the last epoch Kafka holds and the last
    /// delivery error, if the latest attempt failed.
    pub(super) fn show_sinks(&self) -> Outcome {
        let rows = self
            .catalog
            .all()
            .into_iter()
            .filter(|r| r.kind == RelationKind::Sink)
            .map(|r| {
                let status = r.sink.as_ref();
                vec![
                    r.name.clone(),
                    status
                        .map(|s| s.delivered().to_string())
                        .unwrap_or_default(),
                    status.and_then(|s| s.last_error()).unwrap_or_default(),
                ]
            })
            .collect();
        text_rows(&["Name", "delivered_epoch", "last_error"], rows)
    }
}
