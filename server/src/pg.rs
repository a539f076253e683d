//! The Postgres wire protocol front end (simple and extended query).
//!
//! Errors become `ErrorResponse`s with the SQLSTATE of [`EddyError::sqlstate`];
//! a failing statement never drops the connection. Session settings live in
//! the connection's metadata.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::LogicalPlan;
use futures::{Sink, stream};
use pgwire::api::auth::noop::NoopStartupHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;

use crate::engine::{Engine, Outcome, Prepared};
use crate::error::EddyError;

fn to_pg_error(e: EddyError, sql: &str) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".to_string(), e.sqlstate().to_string(), e.to_string());
    info.position = e.position(sql).map(|p| p.to_string());
    PgWireError::UserError(Box::new(info))
}

/// Encodes `batch` as data rows with arrow-pg, except NULL intervals, which
/// arrow-pg 0.16 encodes as a value without checking validity.
fn encode_batch(
    fields: &Arc<Vec<FieldInfo>>,
    batch: datafusion::arrow::array::RecordBatch,
) -> Vec<PgWireResult<DataRow>> {
    use datafusion::arrow::array::Array;
    let mut encoder = DataRowEncoder::new(fields.clone());
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|row| {
            for (col, array) in batch.columns().iter().enumerate() {
                let field = schema.field(col);
                if array.is_null(row) && matches!(field.data_type(), DataType::Interval(_)) {
                    encoder.encode_field(&None::<i64>)?;
                } else {
                    arrow_pg::encoder::encode_value(&mut encoder, array, row, field, &fields[col])?;
                }
            }
            Ok(encoder.take_row())
        })
        .collect()
}

fn to_response(outcome: Outcome, format: &Format) -> PgWireResult<Response> {
    Ok(match outcome {
        Outcome::Rows { schema, batches } => {
            let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(
                &schema, format, None,
            )?);
            let rows: Vec<_> = batches
                .into_iter()
                .flat_map(|b| encode_batch(&fields, b))
                .collect();
            Response::Query(QueryResponse::new(fields, stream::iter(rows)))
        }
        Outcome::Command { tag, rows } => {
            let tag = match (tag.strip_suffix(" 0"), rows) {
                (Some(insert), Some(n)) => Tag::new(insert).with_oid(0).with_rows(n),
                (None, Some(n)) => Tag::new(&tag).with_rows(n),
                (_, None) => Tag::new(&tag),
            };
            Response::Execution(tag)
        }
        Outcome::TransactionStart => Response::TransactionStart(Tag::new("BEGIN")),
        Outcome::TransactionEnd(tag) => Response::TransactionEnd(Tag::new(tag)),
    })
}

/// Handles every connection.
#[derive(Debug)]
pub struct PgHandler {
    engine: Arc<Engine>,
    parser: Arc<EddyQueryParser>,
}

impl PgHandler {
    /// A handler serving `engine`.
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            parser: Arc::new(EddyQueryParser {
                engine: engine.clone(),
            }),
            engine,
        }
    }
}

impl NoopStartupHandler for PgHandler {}

impl PgWireServerHandlers for PgHandler {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(PgHandler {
            engine: self.engine.clone(),
            parser: self.parser.clone(),
        })
    }
    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(PgHandler {
            engine: self.engine.clone(),
            parser: self.parser.clone(),
        })
    }
    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::new(PgHandler {
            engine: self.engine.clone(),
            parser: self.parser.clone(),
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for PgHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut responses = Vec::new();
        for result in self.engine.execute_all(query, client.metadata_mut()).await {
            match result
                .map_err(|e| to_pg_error(e, query))
                .and_then(|o| to_response(o, &Format::UnifiedText))
            {
                Ok(r) => responses.push(r),
                Err(PgWireError::UserError(info)) => responses.push(Response::Error(info)),
                Err(e) => return Err(e),
            }
        }
        Ok(responses)
    }
}

/// A statement parsed by the extended protocol's Parse message.
#[derive(Debug, Clone)]
pub struct PgStatement {
    prepared: Prepared,
    sql: String,
}

/// Parses and binds extended-protocol statements.
#[derive(Debug)]
pub struct EddyQueryParser {
    engine: Arc<Engine>,
}

fn plan_of(stmt: &PgStatement) -> Option<&LogicalPlan> {
    match &stmt.prepared {
        Prepared::Plan(p) => Some(p),
        Prepared::Statement(_) => None,
    }
}

fn parameter_types(plan: &LogicalPlan) -> Vec<Option<DataType>> {
    let Ok(types) = plan.get_parameter_types() else {
        return vec![];
    };
    let mut ordered: Vec<(usize, Option<DataType>)> = types
        .into_iter()
        .filter_map(|(k, v)| {
            k.trim_start_matches('$')
                .parse::<usize>()
                .ok()
                .filter(|i| *i >= 1) // `$0` is no parameter (and must not underflow)
                .map(|i| (i, v))
        })
        .collect();
    ordered.sort_by_key(|(i, _)| *i);
    let n = ordered.last().map(|(i, _)| *i).unwrap_or(0);
    let mut out = vec![None; n];
    for (i, t) in ordered {
        out[i - 1] = t;
    }
    out
}

#[async_trait]
impl QueryParser for EddyQueryParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut stmts = self.engine.parse(sql).map_err(|e| to_pg_error(e, sql))?;
        let stmt = match stmts.len() {
            0 => return Ok(None),
            1 => stmts.remove(0),
            _ => {
                return Err(to_pg_error(
                    EddyError::Coded {
                        code: "42601",
                        message: "cannot insert multiple commands into a prepared statement".into(),
                    },
                    sql,
                ));
            }
        };
        let prepared = self
            .engine
            .prepare(stmt)
            .await
            .map_err(|e| to_pg_error(e, sql))?;
        Ok(Some(PgStatement {
            prepared,
            sql: sql.to_string(),
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        let Some(plan) = plan_of(stmt) else {
            return Ok(vec![]);
        };
        Ok(parameter_types(plan)
            .iter()
            .map(|t| {
                t.as_ref()
                    .and_then(|t| arrow_pg::datatypes::into_pg_type(t).ok())
                    .unwrap_or(Type::UNKNOWN)
            })
            .collect())
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match plan_of(stmt) {
            Some(LogicalPlan::Dml(_)) | None => Ok(vec![]),
            Some(plan) => arrow_pg::datatypes::arrow_schema_to_pg_fields(
                plan.schema().as_arrow(),
                format.unwrap_or(&Format::UnifiedText),
                None,
            ),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgHandler {
    type Statement = PgStatement;
    type QueryParser = EddyQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let params = match plan_of(stmt) {
            Some(plan) => {
                let types = parameter_types(plan);
                let refs: Vec<Option<&DataType>> = types.iter().map(|t| t.as_ref()).collect();
                Some(arrow_pg::datatypes::df::deserialize_parameters(
                    portal, &refs,
                )?)
            }
            None => None,
        };
        let params = params
            .filter(|p| !matches!(p, datafusion::common::ParamValues::List(l) if l.is_empty()));
        let outcome = self
            .engine
            .execute(stmt.prepared.clone(), params, client.metadata_mut())
            .await
            .map_err(|e| to_pg_error(e, &stmt.sql))?;
        to_response(outcome, &portal.result_column_format)
    }
}
