//! The HTTP wire types of the v1 API and its error codes. This is the only crate
//! that derives serde: the core stays free of it, and its types are converted by
//! hand here, so the wire format can only change on purpose.
//!
//! Times on the wire are RFC 3339 UTC strings with milliseconds
//! (`2026-11-28T04:35:00.123Z`); requests may also give integer milliseconds since
//! the Unix epoch.

pub mod auth;
pub mod bulk;
pub mod contract;
pub mod error;
pub mod event;
mod number;
mod object;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod render;
pub mod time;

use cherga_core::{QueueSettings, QueueSettingsPatch, Task, TaskState};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

pub use bulk::{BulkRequest, BulkResponse, DeleteQueueQuery, DeleteQueueResponse, MAX_BULK_LIMIT};
pub use contract::{PutSchemaRequest, SchemaQuery, SchemaVersionView, SchemasView, Violation};
pub use error::{ErrorBody, ErrorCode, WireError};
pub use time::Timestamp;

/// Limits on what a request may carry.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest payload or result, in bytes of JSON text.
    pub max_payload_bytes: usize,
}

/// Longest `kind`, `group`, idempotency key and worker name, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Longest `delay_ms`: 100 years.
pub const MAX_DELAY_MS: i64 = 100 * 365 * 24 * 3600 * 1000 + 25 * 24 * 3600 * 1000;
/// Longest `retry_in_ms` of a nack: 30 days.
pub const MAX_RETRY_IN_MS: i64 = 30 * 24 * 3600 * 1000;
/// Longest error text kept with a nack; longer text is cut at this many bytes.
pub const MAX_ERROR_LEN: usize = 64 * 1024;
/// Longest a lease may be waited for.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Most tasks in one lease or one page.
pub const MAX_BATCH: usize = 1000;

/// `POST /v1/queues/{queue}/tasks`, and each item of a batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnqueueRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub payload: Option<Box<RawValue>>,
    /// Higher runs first; `null` or left out: 0.
    #[serde(deserialize_with = "number::or_default", default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i32>))]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<Timestamp>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 3155760000000_i64))]
    pub delay_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub group: Option<String>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub max_attempts: Option<u32>,
}

impl EnqueueRequest {
    /// A request for a task of `kind` with `payload`, everything else default.
    pub fn new(kind: impl Into<String>, payload: &impl Serialize) -> Result<Self, serde_json::Error> {
        Ok(Self {
            kind: kind.into(),
            payload: Some(serde_json::value::to_raw_value(payload)?),
            priority: 0,
            run_at: None,
            delay_ms: None,
            idempotency_key: None,
            group: None,
            max_attempts: None,
        })
    }

    /// Validates the request and turns it into a core [`cherga_core::NewTask`].
    /// `header_key` is the `Idempotency-Key` header, which must agree with the field
    /// when both are given.
    ///
    /// # Errors
    /// A [`WireError`] naming the field at fault.
    pub fn into_new_task(
        self,
        header_key: Option<&str>,
        now: cherga_core::Millis,
        limits: &Limits,
    ) -> Result<cherga_core::NewTask, WireError> {
        check_name("kind", &self.kind)?;
        let payload = match &self.payload {
            Some(raw) => minify(raw.get()),
            None => "null".to_owned(),
        };
        if payload.len() > limits.max_payload_bytes {
            return Err(WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("payload is {} bytes; the limit is {}", payload.len(), limits.max_payload_bytes),
            ));
        }
        let key = match (header_key, self.idempotency_key) {
            (Some(h), Some(f)) if h != f => {
                return Err(WireError::invalid("idempotency_key differs from the Idempotency-Key header"));
            }
            (Some(h), _) => Some(h.to_owned()),
            (None, f) => f,
        };
        if let Some(key) = &key {
            check_name("idempotency_key", key)?;
        }
        if let Some(group) = &self.group {
            check_name("group", group)?;
        }
        if self.max_attempts == Some(0) || self.max_attempts.is_some_and(|m| m > 10_000) {
            return Err(WireError::invalid("max_attempts must be between 1 and 10000"));
        }
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(_), Some(_)) => return Err(WireError::invalid("give run_at or delay_ms, not both")),
            (Some(at), None) => Some(at.0),
            (None, Some(delay)) if !(0..=MAX_DELAY_MS).contains(&delay) => {
                return Err(WireError::invalid(format!(
                    "delay_ms must be between 0 and {MAX_DELAY_MS} (100 years)"
                )));
            }
            (None, Some(delay)) if now.saturating_add(delay) > time::MAX_MILLIS => {
                return Err(WireError::invalid("delay_ms puts run_at after the year 9999"));
            }
            (None, Some(delay)) => Some(now.saturating_add(delay)),
            (None, None) => None,
        };
        Ok(cherga_core::NewTask {
            kind: self.kind,
            payload,
            priority: self.priority,
            run_at,
            idempotency_key: key,
            group: self.group,
            max_attempts: self.max_attempts,
        })
    }
}

fn check_name(field: &str, value: &str) -> Result<(), WireError> {
    if value.is_empty() || value.chars().nth(MAX_NAME_LEN).is_some() {
        return Err(WireError::invalid(format!("{field} must be 1 to {MAX_NAME_LEN} characters long")));
    }
    if value.chars().any(char::is_control) {
        return Err(WireError::invalid(format!("{field} must not contain control characters")));
    }
    Ok(())
}

/// Checks an optional worker name.
///
/// # Errors
/// A [`WireError`] when the name is empty, too long or has control characters.
pub fn check_worker(worker: Option<&str>) -> Result<(), WireError> {
    worker.map_or(Ok(()), |w| check_name("worker", w))
}

/// Removes the insignificant whitespace of valid JSON text, keeping everything
/// else (key order, number spelling) exactly as written. Works on bytes, copies
/// runs between whitespace and skips through strings with `memchr`: JSON's
/// whitespace, quote and backslash are ASCII, and no byte of a multi-byte UTF-8
/// character is, so every cut is on a character boundary.
pub fn minify(json: &str) -> String {
    let bytes = json.as_bytes();
    let mut out = String::with_capacity(json.len());
    // Where the run not yet copied starts.
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // To the closing quote, stepping over escaped characters; an
                // unclosed string (never valid JSON) runs to the end.
                i += 1;
                loop {
                    match bytes.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
                        Some(at) if bytes[i + at] == b'"' => {
                            i += at + 1;
                            break;
                        }
                        Some(at) => i += at + 2,
                        None => {
                            i = bytes.len();
                            break;
                        }
                    }
                }
                continue;
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&json[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&json[start..]);
    out
}

/// `POST /v1/queues/{queue}/tasks/batch`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnqueueBatchRequest {
    /// Each item is checked on its own: one out of range gets its own error in
    /// the answer, not a 400 for the batch.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<openapi::BatchItemRequest>))]
    #[serde(deserialize_with = "object::objects")]
    pub tasks: Vec<EnqueueRequest>,
}

/// One item of a batch answer: the task, or the error for that item.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchItem {
    /// The HTTP status this item would have had alone.
    pub status: u16,
    /// Only in short answers (`Prefer: return=minimal`): the task's id, in place
    /// of the whole task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchResponse {
    pub results: Vec<BatchItem>,
}

/// The `Prefer` request header that asks for short answers (RFC 7240): enqueues
/// and acks then answer [`TaskBrief`]s, batch items carry the task's id instead
/// of the whole task, and leases answer [`LeasedBrief`]s. Errors are never
/// shortened. An answer that was shortened carries
/// `Preference-Applied: return=minimal`.
pub const PREFER_MINIMAL: &str = "return=minimal";

/// A task in a short answer (`Prefer: return=minimal`): its id and state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskBrief {
    pub id: String,
    pub state: String,
}

impl TaskBrief {
    pub fn from_task(task: &Task) -> Self {
        Self { id: task.id.to_string(), state: task.state.as_str().to_owned() }
    }
}

/// A task in a short lease answer (`Prefer: return=minimal`): what a worker needs
/// to run it and report back.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeasedBrief {
    pub id: String,
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub payload: Box<RawValue>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub lease: LeaseView,
}

impl LeasedBrief {
    /// The short view of a task just leased; `None` if it holds no lease.
    pub fn from_task(task: &Task) -> Option<Self> {
        let lease = task.lease.as_ref()?;
        Some(Self {
            id: task.id.to_string(),
            kind: task.kind.clone(),
            payload: raw(&task.payload),
            attempts: task.attempts,
            max_attempts: task.max_attempts,
            lease: LeaseView {
                token: lease.token.as_str().to_owned(),
                expires_at: Timestamp(lease.expires_at),
            },
        })
    }
}

/// A task as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskView {
    pub id: String,
    pub queue: String,
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub payload: Box<RawValue>,
    pub priority: i32,
    pub run_at: Timestamp,
    pub idempotency_key: Option<String>,
    pub group: Option<String>,
    pub max_attempts: u32,
    pub attempts: u32,
    pub state: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub result: Option<Box<RawValue>>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// The task's attempts, oldest first: the first and the most recent (at
    /// most 100, fewer when their errors are long), so `attempt` numbers may
    /// skip.
    // Read as empty from the answers of servers that kept no history.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub history: Vec<AttemptView>,
    /// Present while the task is running: when its lease expires and who holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Only in lease answers: the lease the caller now holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseView>,
}

/// One attempt of a task: a lease, who held it, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptView {
    /// 1 for the first lease of the task, counting every lease.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub attempt: u32,
    /// The `worker` the lease request named.
    pub worker: Option<String>,
    /// When the lease was made (the server's clock).
    pub started_at: Timestamp,
    /// When the attempt ended: at the ack or nack, or when the lease ran out
    /// (its last `expires_at`) for `expired`. `null` while `running`.
    pub finished_at: Option<Timestamp>,
    /// `running` (the current attempt), `succeeded` (acked), `failed` (nacked;
    /// the task's `state` says whether it will run again) or `expired` (the
    /// lease ran out).
    #[cfg_attr(feature = "openapi", schema(value_type = openapi::AttemptOutcome))]
    pub outcome: String,
    /// The nack's error, or `lease expired`.
    pub error: Option<String>,
    /// Present when the payload was replaced after this attempt ended (a dead
    /// task retried with a new payload): the attempts after it ran with the new
    /// one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_edit: Option<PayloadEditView>,
}

/// Who replaced a task's payload, and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PayloadEditView {
    /// When the payload was replaced (the server's clock).
    pub at: Timestamp,
    /// The subject (`sub`) of the token of the request; `null` with auth off or
    /// a token without one.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub by: Option<String>,
}

impl AttemptView {
    pub fn from_attempt(attempt: cherga_core::AttemptRef<'_>) -> Self {
        Self {
            attempt: attempt.attempt,
            worker: attempt.worker.map(str::to_owned),
            started_at: Timestamp(attempt.started_at),
            finished_at: attempt.finished_at.map(Timestamp),
            outcome: attempt.outcome.as_str().to_owned(),
            error: attempt.error.map(str::to_owned),
            payload_edit: attempt
                .payload_edit
                .map(|edit| PayloadEditView { at: Timestamp(edit.at), by: edit.by.clone() }),
        }
    }
}

/// The lease a worker holds: present its token to ack, nack or extend.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseView {
    pub token: String,
    pub expires_at: Timestamp,
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned())
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"))
}

impl TaskView {
    /// The public view of a task. The lease token is never shown here.
    pub fn from_task(task: &Task) -> Self {
        let running = task.state == TaskState::Running;
        let lease = task.lease.as_ref().filter(|_| running);
        Self {
            id: task.id.to_string(),
            queue: task.queue.clone(),
            kind: task.kind.clone(),
            payload: raw(&task.payload),
            priority: task.priority,
            run_at: Timestamp(task.run_at),
            idempotency_key: task.idempotency_key.clone(),
            group: task.group.clone(),
            max_attempts: task.max_attempts,
            attempts: task.attempts,
            state: task.state.as_str().to_owned(),
            result: task.result.as_deref().map(raw),
            last_error: task.last_error.clone(),
            created_at: Timestamp(task.created_at),
            updated_at: Timestamp(task.updated_at),
            finished_at: task.finished_at.map(Timestamp),
            history: task.attempt_history().map(AttemptView::from_attempt).collect(),
            lease_expires_at: lease.map(|l| Timestamp(l.expires_at)),
            worker: lease.and_then(|l| l.worker.clone()),
            lease: None,
        }
    }

    /// The view handed to the worker that just leased the task, with its token.
    pub fn leased(task: &Task) -> Self {
        let mut view = Self::from_task(task);
        view.lease = task
            .lease
            .as_ref()
            .map(|l| LeaseView { token: l.token.as_str().to_owned(), expires_at: Timestamp(l.expires_at) });
        view
    }

    /// The payload decoded as `T`.
    ///
    /// # Errors
    /// When the payload does not fit `T`.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }
}

/// `GET /v1/queues/{queue}/tasks` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
}

/// `GET /v1/queues/{queue}/tasks` query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams), into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this state (empty: all).
    #[cfg_attr(
        feature = "openapi",
        param(pattern = "^(|scheduled|ready|running|succeeded|dead|cancelled)$")
    )]
    pub state: Option<String>,
    /// Most tasks in the page (default 100).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<usize>,
    /// The `next` of the previous page (empty: from the start).
    #[cfg_attr(
        feature = "openapi",
        param(
            pattern = "^$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
        )
    )]
    pub after: Option<String>,
    /// Only tasks of this kind.
    pub kind: Option<String>,
    /// Only tasks of this group.
    pub group: Option<String>,
    /// Only the task that holds this idempotency key (keys are kept for the
    /// queue's `dedup_window_ms`).
    pub key: Option<String>,
}

/// `POST /v1/queues/{queue}/lease`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max: Option<usize>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 60000))]
    pub wait_ms: Option<u64>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 43200000))]
    pub lease_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")
    )]
    pub worker: Option<String>,
    /// Acknowledgements of earlier leases, applied before the lease and made
    /// durable with it in one commit where the store can (the embedded store
    /// does): a worker that finished a task asks for the next one and acks the
    /// finished one in a single round trip. Each item succeeds or fails on its
    /// own, as in `POST /v1/tasks/ack`; their results are the answer's `acks`.
    #[serde(default, deserialize_with = "object::objects", skip_serializing_if = "Vec::is_empty")]
    pub acks: Vec<BatchAck>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseResponse {
    pub tasks: Vec<TaskView>,
    /// Only when the request carried `acks`: one result per ack, in order, as
    /// the `results` of a batch ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<Vec<BatchItem>>,
}

/// `POST /v1/tasks/{id}/ack`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub lease: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub result: Option<Box<RawValue>>,
}

/// `POST /v1/tasks/{id}/nack`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    pub lease: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2592000000_i64))]
    pub retry_in_ms: Option<i64>,
    #[serde(default)]
    pub dead: bool,
}

/// `POST /v1/tasks/{id}/retry`: the body is optional; without one (or with
/// `{}`) the task is retried as it is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// A new payload for the task, in place of its own (`null` too: the field
    /// given is the new payload). Limited as an enqueue's is. The edit is
    /// recorded on the entry of the attempt that ended dead (`payload_edit`).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub payload: Option<Box<RawValue>>,
}

/// A field that is there, `null` included, as `Some`; one left out is `None`
/// (by `#[serde(default)]`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

impl RetryRequest {
    /// The new payload the request gives, if any, checked and minified, edited by
    /// `by` (the subject of the caller's token).
    ///
    /// # Errors
    /// [`ErrorCode::PayloadTooLarge`] past the limit.
    pub fn into_new_payload(
        self,
        by: Option<String>,
        limits: &Limits,
    ) -> Result<Option<cherga_core::NewPayload>, WireError> {
        let Some(raw) = self.payload else { return Ok(None) };
        let payload = minify(raw.get());
        if payload.len() > limits.max_payload_bytes {
            return Err(WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("payload is {} bytes; the limit is {}", payload.len(), limits.max_payload_bytes),
            ));
        }
        Ok(Some(cherga_core::NewPayload { payload, by }))
    }
}

/// `POST /v1/tasks/{id}/extend`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ExtendRequest {
    pub lease: String,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 43200000))]
    pub lease_ms: Option<i64>,
}

/// One acknowledgement in `POST /v1/tasks/ack`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchAck {
    pub id: String,
    pub lease: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Value>))]
    pub result: Option<Box<RawValue>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BatchAckRequest {
    #[serde(deserialize_with = "object::objects")]
    pub acks: Vec<BatchAck>,
}

/// Backoff settings on the wire.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct BackoffSettings {
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub initial_ms: Option<i64>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub max_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 100))]
    pub multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1))]
    pub jitter: Option<f64>,
}

/// `PUT /v1/queues/{queue}`: every field is optional; given fields replace the
/// current setting, so sending the same body twice changes nothing the second time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QueueSettingsBody {
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub max_attempts: Option<u32>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 43200000))]
    pub lease_ms: Option<i64>,
    #[serde(deserialize_with = "object::optional", default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSettings>,
    /// `null` removes the limit; leaving the field out keeps the current one.
    #[serde(default, deserialize_with = "double_option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>, minimum = 1, maximum = 4294967295_i64))]
    pub concurrency: Option<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub retention_ms: Option<i64>,
    #[serde(deserialize_with = "number::optional", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub dedup_window_ms: Option<i64>,
}

fn double_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    number::optional::<D, u32>(d).map(Some)
}

impl QueueSettingsBody {
    pub fn to_patch(&self) -> QueueSettingsPatch {
        let backoff = self.backoff.clone().unwrap_or_default();
        QueueSettingsPatch {
            max_attempts: self.max_attempts,
            lease_ms: self.lease_ms,
            backoff_initial_ms: backoff.initial_ms,
            backoff_max_ms: backoff.max_ms,
            backoff_multiplier: backoff.multiplier,
            backoff_jitter: backoff.jitter,
            concurrency: self.concurrency,
            paused: self.paused,
            retention_ms: self.retention_ms,
            dedup_window_ms: self.dedup_window_ms,
        }
    }
}

/// Queue settings as the API shows them: every field present.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueSettingsView {
    pub max_attempts: u32,
    pub lease_ms: i64,
    pub backoff: BackoffView,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>, minimum = 1, maximum = 4294967295_i64))]
    pub concurrency: Option<u32>,
    pub paused: bool,
    pub retention_ms: i64,
    pub dedup_window_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BackoffView {
    pub initial_ms: i64,
    pub max_ms: i64,
    pub multiplier: f64,
    pub jitter: f64,
}

impl From<&QueueSettings> for QueueSettingsView {
    fn from(s: &QueueSettings) -> Self {
        Self {
            max_attempts: s.max_attempts,
            lease_ms: s.lease_ms,
            backoff: BackoffView {
                initial_ms: s.backoff.initial_ms,
                max_ms: s.backoff.max_ms,
                multiplier: s.backoff.multiplier,
                jitter: s.backoff.jitter,
            },
            concurrency: s.concurrency,
            paused: s.paused,
            retention_ms: s.retention_ms,
            dedup_window_ms: s.dedup_window_ms,
        }
    }
}

/// Number of tasks in each state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counts {
    pub scheduled: u64,
    pub ready: u64,
    pub running: u64,
    pub succeeded: u64,
    pub dead: u64,
    pub cancelled: u64,
}

impl From<[u64; 6]> for Counts {
    fn from(c: [u64; 6]) -> Self {
        Self { scheduled: c[0], ready: c[1], running: c[2], succeeded: c[3], dead: c[4], cancelled: c[5] }
    }
}

/// A queue: settings and counts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueView {
    pub name: String,
    pub settings: QueueSettingsView,
    pub counts: Counts,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueList {
    pub queues: Vec<QueueView>,
}

/// `GET /healthz`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    pub status: String,
}

#[cfg(test)]
mod tests;
