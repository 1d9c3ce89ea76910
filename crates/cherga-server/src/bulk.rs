//! Acting on many tasks: `POST /v1/queues/{queue}/tasks/retry`, `/cancel`,
//! `/purge` and `DELETE /v1/queues/{queue}`.
//!
//! A bulk request runs as a loop of store steps ([`cherga_store::bulk`]), each
//! at most [`BULK_BATCH`] tasks and one commit, with its effects applied after
//! each step like any other change's (one event per task): other requests are
//! served between steps, and a request cut short (a timeout, a shutdown) keeps
//! the steps it committed. Every bulk route needs `admin`: it changes tasks that
//! other producers enqueued, many at a time.

use crate::auth::AdminQueue;
use crate::error::ApiError;
use crate::extract::{JsonBody, QueryArgs};
use crate::routes::QueueParam;
use crate::{App, now_ms};
use axum::Json;
use axum::extract::State;
use cherga_api::{
    BulkRequest, BulkResponse, DeleteQueueQuery, DeleteQueueResponse, ErrorBody, ErrorCode, MAX_BULK_LIMIT,
    MAX_NAME_LEN,
};
use cherga_core::{QueueName, TaskState};
use cherga_store::{BULK_BATCH, BulkAction, BulkStep, Store, StoreError, TaskFilter};
use std::sync::Arc;

type AppState<S> = State<Arc<App<S>>>;

/// Checks a bulk request's filter for `action`.
///
/// # Errors
/// `invalid_request` naming the field at fault.
pub(crate) fn filter_of(action: BulkAction, request: &BulkRequest) -> Result<(TaskFilter, u64), ApiError> {
    let allowed = action.states();
    let names = || allowed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    let mut states = Vec::new();
    for text in &request.states {
        let state = TaskState::parse(text)
            .ok_or_else(|| ApiError::invalid(format!("states: {text:?} is not a task state")))?;
        if !allowed.contains(&state) {
            return Err(ApiError::invalid(format!(
                "states: {} applies to {} tasks, not {state}",
                action.as_str(),
                names()
            )));
        }
        if !states.contains(&state) {
            states.push(state);
        }
    }
    for (field, value) in [("kind", &request.kind), ("group", &request.group)] {
        if value.as_ref().is_some_and(|v| v.is_empty() || v.chars().count() > MAX_NAME_LEN) {
            return Err(ApiError::invalid(format!("{field} must be 1 to {MAX_NAME_LEN} characters")));
        }
    }
    let (after, before) = (request.enqueued_after.map(|t| t.0), request.enqueued_before.map(|t| t.0));
    if let (Some(after), Some(before)) = (after, before)
        && before <= after
    {
        return Err(ApiError::invalid("enqueued_before must be later than enqueued_after"));
    }
    let limit = request.limit.unwrap_or(u64::MAX);
    if request.limit.is_some_and(|limit| !(1..=MAX_BULK_LIMIT).contains(&limit)) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_BULK_LIMIT}")));
    }
    let filter = TaskFilter {
        states,
        kind: request.kind.clone(),
        group: request.group.clone(),
        enqueued_after: after,
        enqueued_before: before,
    };
    Ok((filter, limit))
}

impl<S: Store> App<S> {
    /// Applies `action` to up to `limit` tasks of `queue` that match `filter`, a
    /// step (one commit) at a time, applying each step's effects. Answers how
    /// many tasks it changed.
    ///
    /// # Errors
    /// The store's error; the steps before it stay done.
    pub(crate) async fn act_on_tasks(
        &self,
        queue: &QueueName,
        action: BulkAction,
        filter: TaskFilter,
        limit: u64,
    ) -> Result<u64, StoreError> {
        let mut changed = 0u64;
        let mut after = None;
        while changed < limit {
            let max = usize::try_from(limit - changed).unwrap_or(usize::MAX).min(BULK_BATCH);
            let step = BulkStep { queue: queue.clone(), action, filter: filter.clone(), after, max };
            let page = self.change(self.store.act_on_tasks(step, now_ms())).await?;
            changed += page.changed as u64;
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        Ok(changed)
    }
}

async fn bulk<S: Store>(
    app: &App<S>,
    queue: &QueueName,
    action: BulkAction,
    request: &BulkRequest,
) -> Result<Json<BulkResponse>, ApiError> {
    let (filter, limit) = filter_of(action, request)?;
    let matched = app.act_on_tasks(queue, action, filter, limit).await.map_err(ApiError::from_queue_error)?;
    tracing::info!(queue = %queue, action = action.as_str(), matched, "bulk action");
    Ok(Json(BulkResponse { matched }))
}

/// Sends every dead task that matches the filter back to ready, with the
/// queue's `max_attempts` more attempts. Needs `admin`.
#[utoipa::path(post, path = "/v1/queues/{queue}/tasks/retry", tag = "bulk", params(QueueParam),
    request_body = BulkRequest,
    responses((status = 200, description = "how many tasks were retried", body = BulkResponse),
        (status = 404, description = "no such queue", body = ErrorBody)))]
pub(crate) async fn retry<S: Store>(
    State(app): AppState<S>,
    AdminQueue(queue): AdminQueue,
    JsonBody(request): JsonBody<BulkRequest>,
) -> Result<Json<BulkResponse>, ApiError> {
    bulk(&app, &queue, BulkAction::Retry, &request).await
}

/// Cancels every scheduled or ready task that matches the filter. Running
/// tasks are left to their workers: a lease is not taken back. Needs `admin`.
#[utoipa::path(post, path = "/v1/queues/{queue}/tasks/cancel", tag = "bulk", params(QueueParam),
    request_body = BulkRequest,
    responses((status = 200, description = "how many tasks were cancelled", body = BulkResponse),
        (status = 404, description = "no such queue", body = ErrorBody)))]
pub(crate) async fn cancel<S: Store>(
    State(app): AppState<S>,
    AdminQueue(queue): AdminQueue,
    JsonBody(request): JsonBody<BulkRequest>,
) -> Result<Json<BulkResponse>, ApiError> {
    bulk(&app, &queue, BulkAction::Cancel, &request).await
}

/// Deletes every finished task that matches the filter, before its retention
/// would. Needs `admin`.
#[utoipa::path(post, path = "/v1/queues/{queue}/tasks/purge", tag = "bulk", params(QueueParam),
    request_body = BulkRequest,
    responses((status = 200, description = "how many tasks were purged", body = BulkResponse),
        (status = 404, description = "no such queue", body = ErrorBody)))]
pub(crate) async fn purge<S: Store>(
    State(app): AppState<S>,
    AdminQueue(queue): AdminQueue,
    JsonBody(request): JsonBody<BulkRequest>,
) -> Result<Json<BulkResponse>, ApiError> {
    bulk(&app, &queue, BulkAction::Purge, &request).await
}

/// Deletes a queue: its tasks (each purged, with its event), settings and
/// idempotency keys. Refused while it holds unfinished tasks, unless
/// `force=true`, which purges those too (a worker holding one then finds it
/// gone). Needs `admin`.
#[utoipa::path(delete, path = "/v1/queues/{queue}", tag = "queues", params(QueueParam, DeleteQueueQuery),
    responses((status = 200, description = "the queue is deleted", body = DeleteQueueResponse),
        (status = 404, description = "no such queue", body = ErrorBody),
        (status = 409, description = "the queue holds unfinished tasks (`queue_not_empty`)", body = ErrorBody)))]
pub(crate) async fn delete_queue<S: Store>(
    State(app): AppState<S>,
    AdminQueue(queue): AdminQueue,
    QueryArgs(query): QueryArgs<DeleteQueueQuery>,
) -> Result<Json<DeleteQueueResponse>, ApiError> {
    let force = query.force.unwrap_or(false);
    let info = app.store.get_queue(queue.clone()).await.map_err(ApiError::from_queue_error)?;
    let unfinished: u64 = TaskState::ALL.iter().filter(|s| !s.is_finished()).map(|&s| info.count(s)).sum();
    if unfinished > 0 && !force {
        return Err(ApiError::new(
            ErrorCode::QueueNotEmpty,
            format!(
                "queue {queue} holds {unfinished} unfinished tasks (scheduled, ready or running); \
                 cancel them, or delete with force=true to purge them too"
            ),
        ));
    }
    let states = if force { TaskState::ALL.to_vec() } else { BulkAction::Purge.states().to_vec() };
    let filter = TaskFilter { states, ..TaskFilter::default() };
    let purged = app
        .act_on_tasks(&queue, BulkAction::Purge, filter, u64::MAX)
        .await
        .map_err(ApiError::from_queue_error)?;
    app.change(app.store.delete_queue(queue.clone(), now_ms())).await.map_err(ApiError::from_queue_error)?;
    tracing::info!(queue = %queue, purged, force, "queue deleted");
    Ok(Json(DeleteQueueResponse { queue: queue.as_str().to_owned(), purged }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> BulkRequest {
        serde_json::from_str(json).expect("a bulk request")
    }

    #[test]
    fn a_filter_takes_the_actions_states_and_refuses_others() {
        let (filter, limit) = filter_of(BulkAction::Retry, &request("{}")).expect("empty filter");
        assert_eq!((filter, limit), (TaskFilter::default(), u64::MAX));
        let (filter, _) =
            filter_of(BulkAction::Cancel, &request(r#"{"states": ["ready", "ready"], "limit": 5}"#))
                .expect("ok");
        assert_eq!(filter.states, [TaskState::Ready]);
        let refused = [
            (BulkAction::Retry, r#"{"states": ["running"]}"#, "retry applies to dead tasks, not running"),
            (BulkAction::Cancel, r#"{"states": ["running"]}"#, "not running"),
            (BulkAction::Purge, r#"{"states": ["ready"]}"#, "not ready"),
            (BulkAction::Purge, r#"{"states": ["fine"]}"#, "\"fine\" is not a task state"),
            (BulkAction::Retry, r#"{"limit": 0}"#, "limit must be between 1 and"),
            (BulkAction::Retry, r#"{"kind": ""}"#, "kind must be 1 to 256"),
            (
                BulkAction::Retry,
                r#"{"enqueued_after": "2026-01-02T00:00:00Z", "enqueued_before": "2026-01-01T00:00:00Z"}"#,
                "enqueued_before must be later",
            ),
        ];
        for (action, json, message) in refused {
            let error = filter_of(action, &request(json)).expect_err(json);
            assert_eq!(error.code, ErrorCode::InvalidRequest, "{json}");
            assert!(error.message.contains(message), "{json}: {}", error.message);
        }
        assert!(serde_json::from_str::<BulkRequest>(r#"{"state": "dead"}"#).is_err(), "unknown fields");
    }
}
