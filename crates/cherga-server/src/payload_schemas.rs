//! `PUT`, `GET` and `DELETE /v1/queues/{queue}/schema`: a queue's payload
//! schemas (`contract.rs` checks payloads against them).
//!
//! Each `PUT` or `DELETE` is a new version of the queue's schemas in the store,
//! never an edit of an old one: the history says who changed what, when. A
//! `DELETE` records a version without a schema for its kind. Changing needs
//! `admin` (as `PUT /v1/queues/{queue}` does); reading needs `produce` or
//! `consume` on the queue (producers need to know the contract).

use crate::App;
use crate::auth::{AdminQueue, Caller, ReadQueue};
use crate::contract;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryArgs};
use crate::now_ms;
use crate::routes::QueueParam;
use axum::Json;
use axum::extract::State;
use cherga_api::{
    ErrorBody, ErrorCode, PutSchemaRequest, SchemaQuery, SchemaVersionView, SchemasView, Timestamp,
};
use cherga_core::QueueName;
use cherga_store::{SchemaChange, SchemaVersion, Store, schemas};
use std::sync::Arc;

type AppState<S> = State<Arc<App<S>>>;

/// Sets the queue's payload schema, for one kind or (without `kind`) for every
/// kind without a schema of its own, as the queue's next version. Every later
/// enqueue is checked against it; stored tasks are not. Needs `admin`.
#[utoipa::path(put, path = "/v1/queues/{queue}/schema", tag = "queues", params(QueueParam),
    request_body = PutSchemaRequest,
    responses((status = 200, description = "the queue's schemas, with the new version", body = SchemasView),
        (status = 422, description = "`payload_invalid`: not a valid draft 2020-12 schema (the message says why)",
            body = ErrorBody)))]
pub(crate) async fn put_schema<S: Store>(
    State(app): AppState<S>,
    AdminQueue(queue): AdminQueue,
    caller: Caller,
    JsonBody(request): JsonBody<PutSchemaRequest>,
) -> Result<Json<SchemasView>, ApiError> {
    request.check()?;
    contract::compile(&request.schema).map_err(|reason| {
        ApiError::new(ErrorCode::PayloadInvalid, format!("not a valid JSON Schema: {reason}"))
    })?;
    let change = SchemaChange {
        kind: request.kind,
        schema: Some(request.schema.to_string()),
        subject: caller.subject(),
    };
    record(&app, queue, change).await
}

/// Removes the queue's payload schema for `kind` (without it: the queue-wide
/// one), as the queue's next version; enqueues of that kind are then checked
/// against the queue-wide schema, if any. Removing a schema that is not there
/// records nothing. Needs `admin`.
#[utoipa::path(delete, path = "/v1/queues/{queue}/schema", tag = "queues", params(QueueParam, SchemaQuery),
    responses((status = 200, description = "the queue's schemas, after the removal", body = SchemasView)))]
pub(crate) async fn delete_schema<S: Store>(
    State(app): AppState<S>,
    AdminQueue(queue): AdminQueue,
    caller: Caller,
    QueryArgs(query): QueryArgs<SchemaQuery>,
) -> Result<Json<SchemasView>, ApiError> {
    cherga_api::contract::check_kind(query.kind.as_deref())?;
    let history = app.store.payload_schemas(queue.clone()).await.map_err(ApiError::from_queue_error)?;
    let in_force = schemas::current(&history).iter().any(|v| v.kind == query.kind);
    if !in_force {
        return Ok(Json(view(&queue, &history)));
    }
    let change = SchemaChange { kind: query.kind, schema: None, subject: caller.subject() };
    record(&app, queue, change).await
}

/// The queue's payload schemas in force and every version, oldest first.
/// Needs `produce` or `consume` on the queue.
#[utoipa::path(get, path = "/v1/queues/{queue}/schema", tag = "queues", params(QueueParam),
    responses((status = 200, description = "the queue's schemas (none: `version` 0)", body = SchemasView)))]
pub(crate) async fn get_schema<S: Store>(
    State(app): AppState<S>,
    ReadQueue(queue): ReadQueue,
) -> Result<Json<SchemasView>, ApiError> {
    let history = app.store.payload_schemas(queue.clone()).await.map_err(ApiError::from_queue_error)?;
    Ok(Json(view(&queue, &history)))
}

async fn record<S: Store>(
    app: &App<S>,
    queue: QueueName,
    change: SchemaChange,
) -> Result<Json<SchemasView>, ApiError> {
    app.store
        .put_payload_schema(queue.clone(), change, now_ms())
        .await
        .map_err(ApiError::from_queue_error)?;
    let history = app.store.payload_schemas(queue.clone()).await.map_err(ApiError::from_queue_error)?;
    Ok(Json(view(&queue, &history)))
}

fn view(queue: &QueueName, history: &[SchemaVersion]) -> SchemasView {
    SchemasView {
        queue: queue.as_str().to_owned(),
        version: history.last().map_or(0, |v| v.version),
        current: schemas::current(history).into_iter().map(version_view).collect(),
        history: history.iter().map(version_view).collect(),
    }
}

fn version_view(version: &SchemaVersion) -> SchemaVersionView {
    SchemaVersionView {
        version: version.version,
        kind: version.kind.clone(),
        // Stored after it was parsed; text that does not parse is shown as a string.
        schema: version.schema.as_deref().map(|text| {
            serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
        }),
        subject: version.subject.clone(),
        created_at: Timestamp(version.created_at),
    }
}

impl<S: Store> App<S> {
    /// Checks `tasks` (kind, payload) against the queue's current contract:
    /// `None` when every one passes (or the queue has no schema), else one
    /// result per task.
    ///
    /// # Errors
    /// The store's, for the whole call.
    pub(crate) async fn check_payloads<'a>(
        &self,
        queue: &QueueName,
        tasks: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Option<Vec<Result<(), ApiError>>>, ApiError> {
        let Some(contract) =
            self.contracts.of(&*self.store, queue).await.map_err(ApiError::from_queue_error)?
        else {
            return Ok(None);
        };
        let mut any_failed = false;
        let checked: Vec<Result<(), ApiError>> = tasks
            .into_iter()
            .map(|(kind, payload)| {
                contract.check(kind, payload).map_err(|violations| {
                    any_failed = true;
                    ApiError::payload_invalid(kind, contract.version(), violations)
                })
            })
            .collect();
        Ok(any_failed.then_some(checked))
    }
}
