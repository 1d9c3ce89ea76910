//! The v1 routes. Each handler validates its input, makes one store call (a call
//! that changes state goes through `App::change`, which applies its effects), and
//! answers with the wire types of `cherga-api`. No handler decides what a change
//! means for waiting leases or timers.

use crate::auth::{
    Admin, AdminQueue, Caller, ConsumeQueue, ConsumeTask, ProduceQueue, ProduceTask, ReadQueue, forbidden,
};
use crate::error::ApiError;
use crate::extract::{JsonBody, PathArg, Prefer, QueryArgs};
use crate::{App, ServerConfig, now_ms};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cherga_api::auth::{RevocationList, RevocationView, RevokeRequest, WhoAmI};
use cherga_api::render::{self, View};
use cherga_api::{
    AckRequest, BatchAck, BatchAckRequest, BatchResponse, EnqueueBatchRequest, EnqueueRequest, ErrorCode,
    ExtendRequest, Health, LeaseRequest, LeaseResponse, ListQuery, MAX_BATCH, MAX_ERROR_LEN, MAX_WAIT_MS,
    NackRequest, PREFER_MINIMAL, QueueList, QueueSettingsBody, QueueView, RetryRequest, TaskBrief, TaskList,
    TaskView,
};
use cherga_api::{ErrorBody, Timestamp};
use cherga_auth::Access;
use cherga_core::queue::MAX_LEASE_MS;
use cherga_core::{NewTask, QueueName, Task, TaskId, TaskState};
use cherga_store::{Ack, Claim, Enqueued, ListTasks, Nack, QueueInfo, Store, StoreError, TaskFilter};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;

type AppState<S> = State<Arc<App<S>>>;

/// Most tasks in one batch enqueue or batch ack.
const MAX_BATCH_ITEMS: usize = 10_000;

/// The router with every v1 route, for `serve` and for in-process tests.
pub fn router<S: Store>(app: Arc<App<S>>, config: &ServerConfig) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/readyz", get(crate::observe::ready::<S>))
        .route("/metrics", get(crate::observe::metrics::<S>))
        .route("/v1/queues", get(list_queues::<S>))
        .route(
            "/v1/queues/{queue}",
            get(get_queue::<S>).put(put_queue::<S>).delete(crate::bulk::delete_queue::<S>),
        )
        .route(
            "/v1/queues/{queue}/schema",
            get(crate::payload_schemas::get_schema::<S>)
                .put(crate::payload_schemas::put_schema::<S>)
                .delete(crate::payload_schemas::delete_schema::<S>),
        )
        .route("/v1/queues/{queue}/tasks", post(enqueue::<S>).get(list_tasks::<S>))
        .route("/v1/queues/{queue}/tasks/batch", post(enqueue_batch::<S>))
        .route("/v1/queues/{queue}/tasks/retry", post(crate::bulk::retry::<S>))
        .route("/v1/queues/{queue}/tasks/cancel", post(crate::bulk::cancel::<S>))
        .route("/v1/queues/{queue}/tasks/purge", post(crate::bulk::purge::<S>))
        .route("/v1/queues/{queue}/lease", post(lease::<S>))
        .route("/v1/tasks/ack", post(ack_batch::<S>))
        .route("/v1/tasks/{id}", get(get_task::<S>).delete(cancel::<S>))
        .route("/v1/tasks/{id}/ack", post(ack::<S>))
        .route("/v1/tasks/{id}/nack", post(nack::<S>))
        .route("/v1/tasks/{id}/extend", post(extend::<S>))
        .route("/v1/tasks/{id}/retry", post(retry::<S>))
        .route("/v1/revocations", post(revoke::<S>).get(list_revocations::<S>))
        .route("/v1/whoami", get(whoami))
        .route("/v1/events", get(crate::events::stream::<S>))
        .route("/v1/openapi.json", get(crate::openapi::serve_document::<S>))
        .merge(crate::ui::routes())
        .fallback(|| async { ApiError::new(ErrorCode::RouteNotFound, "no such route; see the v1 API") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take this method")
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(app.clone(), crate::browser::check::<S>))
        .layer(axum::middleware::from_fn_with_state(app.clone(), crate::observe::observe::<S>))
        .with_state(app)
}

pub(crate) fn queue_name(name: &str) -> Result<QueueName, ApiError> {
    QueueName::new(name).map_err(|e| ApiError::new(ErrorCode::InvalidQueueName, e.to_string()))
}

/// A `state` query parameter: none when absent or empty.
pub(crate) fn state_filter(text: Option<&str>) -> Result<Option<TaskState>, ApiError> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => TaskState::parse(text).map(Some).ok_or_else(|| {
            let all: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
            ApiError::invalid(format!("state must be one of {}; got {text:?}", all.join(", ")))
        }),
    }
}

pub(crate) fn task_id(text: &str) -> Result<TaskId, ApiError> {
    TaskId::parse(text)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidTaskId, format!("{text:?} is not a task id")))
}

/// Checks a result's size and removes its insignificant whitespace.
fn result_text(app: &App<impl Store>, result: Option<Box<RawValue>>) -> Result<Option<String>, ApiError> {
    let Some(raw) = result else { return Ok(None) };
    let text = cherga_api::minify(raw.get());
    if text.len() > app.limits.max_payload_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("result is {} bytes; the limit is {}", text.len(), app.limits.max_payload_bytes),
        ));
    }
    Ok(Some(text))
}

/// Cuts an error text to [`MAX_ERROR_LEN`] bytes at a character boundary.
fn error_text(error: Option<String>) -> Option<String> {
    error.map(|mut e| {
        if e.len() > MAX_ERROR_LEN {
            let mut cut = MAX_ERROR_LEN;
            while !e.is_char_boundary(cut) {
                cut -= 1;
            }
            e.truncate(cut);
        }
        e
    })
}

fn check_lease_ms(lease_ms: Option<i64>) -> Result<(), ApiError> {
    match lease_ms {
        Some(ms) if !(1..=MAX_LEASE_MS).contains(&ms) => {
            Err(ApiError::invalid(format!("lease_ms must be between 1 and {MAX_LEASE_MS}")))
        }
        _ => Ok(()),
    }
}

/// Liveness: answers while the server runs. Open to everyone.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "the server is up", body = Health)))]
pub(crate) async fn health() -> Json<Health> {
    Json(Health { status: "ok".into() })
}

fn queue_view(info: &QueueInfo) -> QueueView {
    QueueView { name: info.name.clone(), settings: (&info.settings).into(), counts: info.counts.into() }
}

/// Every queue the caller may read (any valid token; the list is filtered by its
/// scopes), with settings and counts per state.
#[utoipa::path(get, path = "/v1/queues", tag = "queues",
    responses((status = 200, description = "the queues", body = QueueList)))]
pub(crate) async fn list_queues<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
) -> Result<Json<QueueList>, ApiError> {
    let queues = app.store.list_queues().await.map_err(ApiError::from_queue_error)?;
    let visible = queues.iter().filter(|q| caller.allows(Access::Read, &q.name));
    Ok(Json(QueueList { queues: visible.map(queue_view).collect() }))
}

/// A queue's settings and counts. Needs `produce` or `consume` on the queue.
#[utoipa::path(get, path = "/v1/queues/{queue}", tag = "queues", params(QueueParam),
    responses((status = 200, description = "the queue", body = QueueView),
        (status = 404, description = "no such queue", body = ErrorBody)))]
pub(crate) async fn get_queue<S: Store>(
    State(app): AppState<S>,
    ReadQueue(queue): ReadQueue,
) -> Result<Json<QueueView>, ApiError> {
    let info = app.store.get_queue(queue).await.map_err(ApiError::from_queue_error)?;
    Ok(Json(queue_view(&info)))
}

/// Creates the queue or changes its settings (fields left out are kept). Needs `admin`.
#[utoipa::path(put, path = "/v1/queues/{queue}", tag = "queues", params(QueueParam),
    request_body = QueueSettingsBody,
    responses((status = 200, description = "the queue with its new settings", body = QueueView)))]
pub(crate) async fn put_queue<S: Store>(
    State(app): AppState<S>,
    AdminQueue(name): AdminQueue,
    JsonBody(body): JsonBody<QueueSettingsBody>,
) -> Result<Json<QueueView>, ApiError> {
    let info = app
        .change(app.store.put_queue(name, body.to_patch(), now_ms()))
        .await
        .map_err(ApiError::from_queue_error)?;
    Ok(Json(queue_view(&info)))
}

/// Enqueues one task. Needs `produce` on the queue.
#[utoipa::path(post, path = "/v1/queues/{queue}/tasks", tag = "tasks", params(QueueParam, IdempotencyKeyParam, PreferParam),
    request_body = EnqueueRequest,
    responses((status = 201, description = "a new task (a `TaskBrief` with `Prefer: return=minimal`)", body = TaskView),
        (status = 200, description = "the idempotency key was seen: the existing task, as it is now", body = TaskView,
            headers(("Idempotent-Replayed" = String, description = "`true`"))),
        (status = 422, description = "the idempotency key was used for a different request", body = ErrorBody)))]
pub(crate) async fn enqueue<S: Store>(
    State(app): AppState<S>,
    ProduceQueue(queue): ProduceQueue,
    prefer: Prefer,
    headers: HeaderMap,
    JsonBody(request): JsonBody<EnqueueRequest>,
) -> Result<Response, ApiError> {
    let header_key = match headers.get("idempotency-key") {
        Some(v) => {
            Some(v.to_str().map_err(|_| ApiError::invalid("Idempotency-Key header must be visible ASCII"))?)
        }
        None => None,
    };
    let now = now_ms();
    let new = request.into_new_task(header_key, now, &app.limits)?;
    if let Some(mut checked) = app.check_payloads(&queue, [(new.kind.as_str(), new.payload.as_str())]).await?
    {
        checked.pop().unwrap_or(Ok(()))?;
    }
    let mut results =
        app.change(app.store.enqueue(queue, vec![new], now)).await.map_err(ApiError::from_queue_error)?;
    let result =
        results.pop().ok_or_else(|| ApiError::new(ErrorCode::Internal, "store returned no result"))?;
    match result.map_err(ApiError::from_task_error)? {
        Enqueued::Created(task) => {
            app.remember_queues([&task]);
            Ok(task_answer(StatusCode::CREATED, &task, prefer))
        }
        Enqueued::Replayed(task) => {
            let mut response = task_answer(StatusCode::OK, &task, prefer);
            response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            Ok(response)
        }
    }
}

/// A task as the answer to a change: whole, or its [`TaskBrief`] when the client
/// asked for short answers.
fn task_answer(status: StatusCode, task: &Task, prefer: Prefer) -> Response {
    if prefer.minimal {
        minimal((status, Json(TaskBrief::from_task(task))).into_response())
    } else {
        let mut body = Vec::with_capacity(640);
        render::task(&mut body, task, View::Public);
        rendered(status, body)
    }
}

/// A JSON answer whose bytes `cherga_api::render` wrote: those serde writes for
/// the wire types named in the route's documentation, faster.
fn rendered(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// A task, whole, as the answer of a route that shows one.
fn task_json(task: &Task) -> Response {
    task_answer(StatusCode::OK, task, Prefer { minimal: false })
}

/// Marks an answer as shortened on the client's request.
fn minimal(mut response: Response) -> Response {
    response.headers_mut().insert("preference-applied", HeaderValue::from_static(PREFER_MINIMAL));
    response
}

/// One item of a batch answer before it is written: a task with the status it
/// would have had alone, or the item's error.
// Almost every item is `Done`; boxing its task would allocate once per item.
#[allow(clippy::large_enum_variant)]
enum Item {
    Done(u16, Task),
    Failed(ApiError),
}

impl Item {
    /// How the answer writes this item: the task's id alone in a short answer.
    fn render(&self, prefer: Prefer) -> render::Item<'_> {
        match self {
            Item::Done(status, task) if prefer.minimal => render::Item::Id(*status, task),
            Item::Done(status, task) => render::Item::Task(*status, task),
            Item::Failed(e) => render::Item::Error(e.code.status(), e.to_wire()),
        }
    }
}

/// A batch answer (a [`BatchResponse`]), marked as shortened when it was.
fn batch_answer(items: Vec<Item>, prefer: Prefer) -> Response {
    let body = render::batch(items.iter().map(|item| item.render(prefer)));
    let response = rendered(StatusCode::OK, body);
    if prefer.minimal { minimal(response) } else { response }
}

/// The answer of a batch: the items refused before the store keep their error, and
/// the others take, in order, the store's answers (`stored` holds one per `Ok` in
/// `checked`), turned into items by `ok`.
fn merge_batch<T>(
    checked: Vec<Result<(), ApiError>>,
    stored: Vec<Result<T, StoreError>>,
    mut ok: impl FnMut(T) -> Item,
) -> Vec<Item> {
    let mut stored = stored.into_iter();
    checked
        .into_iter()
        .map(|check| match check {
            Err(e) => Item::Failed(e),
            Ok(()) => match stored.next() {
                Some(Ok(answer)) => ok(answer),
                Some(Err(e)) => Item::Failed(ApiError::from_task_error(e)),
                None => Item::Failed(ApiError::new(ErrorCode::Internal, "store returned too few results")),
            },
        })
        .collect()
}

/// Enqueues many tasks; each item succeeds or fails on its own. Needs `produce` on the queue.
#[utoipa::path(post, path = "/v1/queues/{queue}/tasks/batch", tag = "tasks", params(QueueParam, PreferParam),
    request_body = EnqueueBatchRequest,
    responses((status = 200, description = "one result per item, in order", body = BatchResponse)))]
pub(crate) async fn enqueue_batch<S: Store>(
    State(app): AppState<S>,
    ProduceQueue(queue): ProduceQueue,
    prefer: Prefer,
    JsonBody(request): JsonBody<EnqueueBatchRequest>,
) -> Result<Response, ApiError> {
    if request.tasks.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid(format!("a batch holds at most {MAX_BATCH_ITEMS} tasks")));
    }
    let now = now_ms();
    // Valid items go to the store in one call; invalid ones keep their place.
    let mut checked: Vec<Result<(), ApiError>> = Vec::with_capacity(request.tasks.len());
    let mut valid: Vec<NewTask> = Vec::with_capacity(request.tasks.len());
    for item in request.tasks {
        match item.into_new_task(None, now, &app.limits) {
            Ok(new) => {
                valid.push(new);
                checked.push(Ok(()));
            }
            Err(e) => checked.push(Err(e.into())),
        }
    }
    // Items that break the queue's schema keep their place with their error.
    let payloads = valid.iter().map(|new| (new.kind.as_str(), new.payload.as_str()));
    if let Some(verdicts) = app.check_payloads(&queue, payloads).await? {
        let mut verdicts = verdicts.into_iter();
        let mut kept = Vec::with_capacity(valid.len());
        let mut tasks = valid.into_iter();
        for check in checked.iter_mut().filter(|check| check.is_ok()) {
            let (Some(new), Some(verdict)) = (tasks.next(), verdicts.next()) else { break };
            match verdict {
                Ok(()) => kept.push(new),
                Err(e) => *check = Err(e),
            }
        }
        valid = kept;
    }
    let stored = if valid.is_empty() {
        Vec::new()
    } else {
        app.change(app.store.enqueue(queue, valid, now)).await.map_err(ApiError::from_queue_error)?
    };
    let results = merge_batch(checked, stored, |enqueued| match enqueued {
        Enqueued::Created(task) => {
            app.remember_queues([&task]);
            Item::Done(201, task)
        }
        Enqueued::Replayed(task) => Item::Done(200, task),
    });
    Ok(batch_answer(results, prefer))
}

/// Lists a queue's tasks, oldest first, with cursor paging, filtered by state,
/// kind, group or idempotency key. Needs `produce` or
/// `consume` on the queue.
#[utoipa::path(get, path = "/v1/queues/{queue}/tasks", tag = "tasks", params(QueueParam, ListQuery),
    responses((status = 200, description = "a page of tasks", body = TaskList),
        (status = 404, description = "no such queue", body = ErrorBody)))]
pub(crate) async fn list_tasks<S: Store>(
    State(app): AppState<S>,
    ReadQueue(queue): ReadQueue,
    QueryArgs(query): QueryArgs<ListQuery>,
) -> Result<Response, ApiError> {
    let state = state_filter(query.state.as_deref())?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_BATCH).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_BATCH}")));
    }
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(a) => Some(task_id(a)?),
    };
    let filter = TaskFilter {
        states: state.into_iter().collect(),
        kind: query.kind.filter(|k| !k.is_empty()),
        group: query.group.filter(|g| !g.is_empty()),
        ..TaskFilter::default()
    };
    let key = query.key.filter(|k| !k.is_empty());
    let tasks = app
        .store
        .list_tasks(ListTasks { queue, filter, key, after, limit })
        .await
        .map_err(ApiError::from_queue_error)?;
    let next = (tasks.len() == limit).then(|| tasks.last().map(|t| t.id.to_string())).flatten();
    Ok(rendered(StatusCode::OK, render::tasks(&tasks, View::Public, Some(next.as_deref()))))
}

/// Leases up to `max` ready tasks, waiting up to `wait_ms` for one (long poll).
/// Needs `consume` on the queue. `acks` acknowledge earlier leases first, in the
/// same commit (each needs `consume` on its task's queue and succeeds or fails
/// on its own); they are durable before the long poll waits.
#[utoipa::path(post, path = "/v1/queues/{queue}/lease", tag = "workers", params(QueueParam, PreferParam),
    request_body = LeaseRequest,
    responses((status = 200, description = "the leased tasks, each with its lease; empty when none came in time \
        (with `Prefer: return=minimal` each task is a `LeasedBrief`); with `acks`, one result per ack",
        body = LeaseResponse)))]
pub(crate) async fn lease<S: Store>(
    State(app): AppState<S>,
    ConsumeQueue(queue, caller): ConsumeQueue,
    prefer: Prefer,
    JsonBody(request): JsonBody<LeaseRequest>,
) -> Result<Response, ApiError> {
    let view = if prefer.minimal { View::LeasedBrief } else { View::Leased };
    let max = request.max.unwrap_or(1);
    if !(1..=MAX_BATCH).contains(&max) {
        return Err(ApiError::invalid(format!("max must be between 1 and {MAX_BATCH}")));
    }
    let wait_ms = request.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid(format!("wait_ms must be at most {MAX_WAIT_MS}")));
    }
    // Within the request timeout, with a second to spare for the answer.
    let wait_ms = wait_ms.min(app.max_wait_ms);
    check_lease_ms(request.lease_ms)?;
    cherga_api::check_worker(request.worker.as_deref())?;
    // Acks are checked before anything is stored, and stored with the first look.
    let mut pending =
        if request.acks.is_empty() { None } else { Some(checked_acks(&app, &caller, request.acks).await?) };
    let mut acked: Option<Vec<Item>> = None;
    let answer = |tasks: &[Task], acked: Option<Vec<Item>>| {
        let body = match acked {
            None => render::tasks(tasks, view, None),
            Some(items) => render::lease_with_acks(tasks, view, items.iter().map(|i| i.render(prefer))),
        };
        let response = rendered(StatusCode::OK, body);
        if prefer.minimal { minimal(response) } else { response }
    };
    let claim = Claim { queue: queue.clone(), max, lease_ms: request.lease_ms, worker: request.worker };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
    let notify = app.waiters.of(queue.as_str());
    let mut shutting_down = app.shutting_down.clone();
    // Taken before the first wait: a permit per waiting long poll.
    let mut wait_slot = None;
    loop {
        // Register for wake-ups before looking, so a task that arrives between the
        // look and the wait is not missed.
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let tasks = match pending.take() {
            Some((checked, acks)) => {
                let (stored, tasks) = app
                    .change(app.store.complete_and_claim(acks, claim.clone(), now_ms()))
                    .await
                    .map_err(ApiError::from_queue_error)?;
                acked = Some(merge_batch(checked, stored, |task| Item::Done(200, task)));
                tasks
            }
            None => app
                .change(app.store.claim(claim.clone(), now_ms()))
                .await
                .map_err(ApiError::from_queue_error)?,
        };
        if !tasks.is_empty() {
            app.remember_queues(&tasks);
            return Ok(answer(&tasks, acked));
        }
        if tokio::time::Instant::now() >= deadline || *shutting_down.borrow() {
            return Ok(answer(&[], acked));
        }
        if wait_slot.is_none() {
            let slot = app.lease_waits.clone().try_acquire_owned().map_err(|_| {
                ApiError::too_many("too many long polls are waiting on this server; retry shortly", 1)
            })?;
            wait_slot = Some(slot);
            // Once per long poll; from here on a wake-up reaches it (tests wait for this line).
            tracing::debug!(queue = %queue, wait_ms, "long poll waiting");
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => {}
            _ = shutting_down.wait_for(|&s| s) => {}
        }
    }
}

/// Acknowledges a task with the token of its current lease: it succeeded, with
/// this result. Needs `consume` on the task's queue.
#[utoipa::path(post, path = "/v1/tasks/{id}/ack", tag = "workers", params(TaskIdParam, PreferParam),
    request_body = AckRequest,
    responses((status = 200, description = "the task, succeeded (a `TaskBrief` with `Prefer: return=minimal`)", body = TaskView),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "the lease is not the task's current one (`lease_lost`)", body = ErrorBody)))]
pub(crate) async fn ack<S: Store>(
    State(app): AppState<S>,
    ConsumeTask(task_id): ConsumeTask,
    prefer: Prefer,
    JsonBody(request): JsonBody<AckRequest>,
) -> Result<Response, ApiError> {
    let result = result_text(&app, request.result)?;
    let ack = Ack { task_id, token: request.lease, result };
    let mut results =
        app.change(app.store.complete(vec![ack], now_ms())).await.map_err(ApiError::from_task_error)?;
    let task = results
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "store returned no result"))?
        .map_err(ApiError::from_task_error)?;
    Ok(task_answer(StatusCode::OK, &task, prefer))
}

/// Acknowledges many tasks; each item succeeds or fails on its own (403 for a
/// task in a queue the token may not consume).
#[utoipa::path(post, path = "/v1/tasks/ack", tag = "workers", params(PreferParam),
    request_body = BatchAckRequest,
    responses((status = 200, description = "one result per item, in order", body = BatchResponse)))]
pub(crate) async fn ack_batch<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    prefer: Prefer,
    JsonBody(request): JsonBody<BatchAckRequest>,
) -> Result<Response, ApiError> {
    let (checked, acks) = checked_acks(&app, &caller, request.acks).await?;
    let stored = if acks.is_empty() {
        Vec::new()
    } else {
        app.change(app.store.complete(acks, now_ms())).await.map_err(ApiError::from_task_error)?
    };
    Ok(batch_answer(merge_batch(checked, stored, |task| Item::Done(200, task)), prefer))
}

/// The acks of a batch checked before the store sees them: each item's id, the
/// caller's `consume` on its task's queue and its result. `checked` has an entry
/// per item; the acks are those that passed, in order.
async fn checked_acks<S: Store>(
    app: &App<S>,
    caller: &Caller,
    items: Vec<BatchAck>,
) -> Result<(Vec<Result<(), ApiError>>, Vec<Ack>), ApiError> {
    if items.len() > MAX_BATCH_ITEMS {
        return Err(ApiError::invalid(format!("a batch holds at most {MAX_BATCH_ITEMS} acks")));
    }
    let mut checked: Vec<Result<(), ApiError>> = Vec::with_capacity(items.len());
    let mut acks = Vec::with_capacity(items.len());
    for item in items {
        let parsed = match task_id(&item.id) {
            Ok(id) => match app.require_on_task(caller, Access::Consume, id).await {
                Ok(()) => result_text(app, item.result).map(|result| (id, result)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match parsed {
            Ok((task_id, result)) => {
                acks.push(Ack { task_id, token: item.lease, result });
                checked.push(Ok(()));
            }
            Err(e) => checked.push(Err(e)),
        }
    }
    Ok((checked, acks))
}

/// Reports a failed attempt: the task is retried after its backoff, or is dead.
/// Needs `consume` on the task's queue.
#[utoipa::path(post, path = "/v1/tasks/{id}/nack", tag = "workers", params(TaskIdParam),
    request_body = NackRequest,
    responses((status = 200, description = "the task, scheduled again or dead", body = TaskView),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "the lease is not the task's current one (`lease_lost`)", body = ErrorBody)))]
pub(crate) async fn nack<S: Store>(
    State(app): AppState<S>,
    ConsumeTask(task_id): ConsumeTask,
    JsonBody(request): JsonBody<NackRequest>,
) -> Result<Response, ApiError> {
    if request.retry_in_ms.is_some_and(|ms| !(0..=cherga_api::MAX_RETRY_IN_MS).contains(&ms)) {
        return Err(ApiError::invalid("retry_in_ms must be between 0 and 30 days"));
    }
    let nack = Nack {
        task_id,
        token: request.lease,
        error: error_text(request.error),
        retry_in_ms: request.retry_in_ms,
        dead: request.dead,
    };
    let task = app.change(app.store.fail(nack, now_ms())).await.map_err(ApiError::from_task_error)?;
    Ok(task_json(&task))
}

/// Extends the current lease (a heartbeat). Needs `consume` on the task's queue.
#[utoipa::path(post, path = "/v1/tasks/{id}/extend", tag = "workers", params(TaskIdParam),
    request_body = ExtendRequest,
    responses((status = 200, description = "the task with its new lease expiry", body = TaskView),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "the lease is not the task's current one (`lease_lost`)", body = ErrorBody)))]
pub(crate) async fn extend<S: Store>(
    State(app): AppState<S>,
    ConsumeTask(task_id): ConsumeTask,
    JsonBody(request): JsonBody<ExtendRequest>,
) -> Result<Response, ApiError> {
    check_lease_ms(request.lease_ms)?;
    let lease_ms = match request.lease_ms {
        Some(ms) => ms,
        None => {
            let task = app.store.get_task(task_id).await.map_err(ApiError::from_task_error)?;
            let queue = queue_name(&task.queue)?;
            app.store.get_queue(queue).await.map_err(ApiError::from_queue_error)?.settings.lease_ms
        }
    };
    let task = app
        .change(app.store.extend_lease(task_id, request.lease, lease_ms, now_ms()))
        .await
        .map_err(ApiError::from_task_error)?;
    Ok(task_json(&task))
}

/// A task with its result. Needs `produce` or `consume` on the task's queue.
#[utoipa::path(get, path = "/v1/tasks/{id}", tag = "tasks", params(TaskIdParam),
    responses((status = 200, description = "the task", body = TaskView),
        (status = 404, description = "no such task (it may have been purged)", body = ErrorBody)))]
pub(crate) async fn get_task<S: Store>(
    State(app): AppState<S>,
    caller: Caller,
    PathArg(id): PathArg<String>,
) -> Result<Response, ApiError> {
    let task = app.store.get_task(task_id(&id)?).await.map_err(ApiError::from_task_error)?;
    if !caller.allows(Access::Read, &task.queue) {
        return Err(forbidden(Access::Read, &task.queue));
    }
    Ok(task_json(&task))
}

/// Cancels a scheduled or ready task (idempotent). Needs `produce` on the task's queue.
#[utoipa::path(delete, path = "/v1/tasks/{id}", tag = "tasks", params(TaskIdParam),
    responses((status = 200, description = "the task, cancelled", body = TaskView),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "the task is running or finished (`invalid_state`)", body = ErrorBody)))]
pub(crate) async fn cancel<S: Store>(
    State(app): AppState<S>,
    ProduceTask(task_id): ProduceTask,
) -> Result<Response, ApiError> {
    let task = app.change(app.store.cancel(task_id, now_ms())).await.map_err(ApiError::from_task_error)?;
    Ok(task_json(&task))
}

/// Sends a dead task back to ready, with a new payload when the body gives one
/// (the edit is recorded in the task's history: who, when). Needs `produce` on
/// the task's queue.
#[utoipa::path(post, path = "/v1/tasks/{id}/retry", tag = "tasks", params(TaskIdParam),
    request_body = RetryRequest,
    responses((status = 200, description = "the task, ready again", body = TaskView),
        (status = 404, description = "no such task", body = ErrorBody),
        (status = 409, description = "the task is not dead (`invalid_state`); its payload is left as it was", body = ErrorBody)))]
pub(crate) async fn retry<S: Store>(
    State(app): AppState<S>,
    ProduceTask(task_id): ProduceTask,
    caller: Caller,
    JsonBody(request): JsonBody<RetryRequest>,
) -> Result<Response, ApiError> {
    let by = match &caller {
        Caller::Anyone => None,
        Caller::Token(principal) => principal.subject.clone(),
    };
    let new_payload = request.into_new_payload(by, &app.limits)?;
    let task = app
        .change(app.store.retry_dead(task_id, new_payload, now_ms()))
        .await
        .map_err(ApiError::from_task_error)?;
    Ok(task_json(&task))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::from_task_error(e)
    }
}

/// Who the caller is and what its token allows: any valid token. With auth off,
/// anyone, allowed everything.
#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, description = "the caller and its scopes", body = WhoAmI)))]
pub(crate) async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(match caller {
        Caller::Anyone => {
            WhoAmI { auth: false, subject: None, scopes: vec!["admin".to_owned()], expires_at: None }
        }
        Caller::Token(principal) => WhoAmI {
            auth: true,
            subject: principal.subject.clone(),
            scopes: principal.scopes.words(),
            expires_at: Some(Timestamp(
                principal.expires_at.saturating_mul(1000).min(cherga_api::time::MAX_MILLIS),
            )),
        },
    })
}

/// Revokes a token by its `jti`, on every node sharing the store (within about a
/// second; at once on this one), until its `expires_at` plus the clock-skew
/// leeway tokens are accepted for. Needs `admin`.
#[utoipa::path(post, path = "/v1/revocations", tag = "auth",
    request_body = RevokeRequest,
    responses((status = 200, description = "the token is revoked", body = RevocationView)))]
pub(crate) async fn revoke<S: Store>(
    State(app): AppState<S>,
    _admin: Admin,
    JsonBody(request): JsonBody<RevokeRequest>,
) -> Result<Json<RevocationView>, ApiError> {
    let jti = request.jti;
    if jti.is_empty()
        || jti.chars().nth(cherga_auth::MAX_JTI_LEN).is_some()
        || jti.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(format!(
            "jti must be 1 to {} characters without control characters",
            cherga_auth::MAX_JTI_LEN
        )));
    }
    let revocation = app.revoke(jti, request.expires_at.map(|t| t.0)).await?;
    tracing::info!(jti = %revocation.jti, "token revoked");
    Ok(Json(RevocationView { jti: revocation.jti, expires_at: Timestamp(revocation.expires_at) }))
}

/// The revocations in force. Needs `admin`.
#[utoipa::path(get, path = "/v1/revocations", tag = "auth",
    responses((status = 200, description = "every revocation not yet expired", body = RevocationList)))]
pub(crate) async fn list_revocations<S: Store>(
    State(app): AppState<S>,
    _admin: Admin,
) -> Result<Json<RevocationList>, ApiError> {
    let list = app.store.revoked_tokens(now_ms()).await.map_err(ApiError::from_queue_error)?;
    let revocations = list
        .into_iter()
        .map(|r| RevocationView { jti: r.jti, expires_at: Timestamp(r.expires_at) })
        .collect();
    Ok(Json(RevocationList { revocations }))
}

/// The `{queue}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Read by the OpenAPI derive only.
pub(crate) struct QueueParam {
    /// The queue: `[A-Za-z0-9_.-]{1,128}`, but not `.` or `..`.
    #[param(
        pattern = "^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}|\\.[A-Za-z0-9_-][A-Za-z0-9_.-]{0,126}|\\.\\.[A-Za-z0-9_.-]{1,126})$"
    )]
    queue: String,
}

/// The `{id}` path parameter.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // Read by the OpenAPI derive only.
pub(crate) struct TaskIdParam {
    /// The task id, as the API gave it.
    #[param(
        pattern = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
    )]
    id: String,
}

/// The optional `Idempotency-Key` header of an enqueue.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Read by the OpenAPI derive only.
pub(crate) struct IdempotencyKeyParam {
    /// Makes the enqueue idempotent: the same key again within the queue's
    /// `dedup_window_ms` returns the first task. Same as the `idempotency_key` field.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 256, pattern = "^[\\x20-\\x7E]+$")]
    idempotency_key: Option<String>,
}

/// The optional `Prefer` header of an enqueue, an ack or a lease (RFC 7240).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // Read by the OpenAPI derive only.
pub(crate) struct PreferParam {
    /// `return=minimal`: answer an enqueue or an ack with the task's id and state
    /// (`TaskBrief`), and in a batch with each item's id instead of its task; answer
    /// a lease with each task's id, kind, payload, attempts, max_attempts and lease
    /// (`LeasedBrief`). The answer then carries `Preference-Applied: return=minimal`.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
}
