//! The HTTP client: one typed method per endpoint of the v1 API.
//!
//! Every method builds its request with [`Client::request`] and sends it through
//! [`Client::send`], the one place that talks to the network and turns answers
//! into values or [`Error`]s. Bodies are the wire types of [`cherga_api`], used
//! as they are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cherga_api::{
    AckRequest, BatchAckRequest, BatchResponse, BulkRequest, BulkResponse, DeleteQueueResponse,
    EnqueueBatchRequest, EnqueueRequest, ExtendRequest, Health, LeaseRequest, LeaseResponse, ListQuery,
    NackRequest, QueueList, QueueSettingsBody, QueueView, RetryRequest, TaskList, TaskView,
};
use reqwest::{Method, RequestBuilder};
use serde::de::DeserializeOwned;

use crate::error::{Error, decode_answer};

/// Timeout of one request unless [`Client::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a TCP connection to cherga.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// A client of one cherga server. Cloning is cheap: clones share one connection
/// pool.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    /// `scheme://host[:port][/prefix]` without a trailing slash, so that paths,
    /// which start with `/`, join it with exactly one slash.
    base_url: Arc<str>,
    /// Timeout of a request. A lease gets its `wait_ms` on top, so a long poll is
    /// not cut short.
    timeout: Duration,
}

/// The answer to an enqueue.
#[derive(Clone, Debug)]
pub struct Enqueued {
    /// The task: new, or the one created earlier with the same idempotency key, as
    /// it is now (its state and result included).
    pub task: TaskView,
    /// `true` when the idempotency key had been seen and no task was created.
    pub replayed: bool,
}

/// An answer whose body decoded, with the headers callers may need.
struct Answer<T> {
    value: T,
    status: u16,
    replayed: Option<bool>,
}

impl Client {
    /// A client of the server at `base_url`, such as `http://127.0.0.1:7700`.
    ///
    /// # Errors
    /// [`Error::BaseUrl`] when `base_url` is not an absolute `http` or `https` URL
    /// without query or fragment; [`Error::Http`] when the HTTP client cannot be
    /// built.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).build()?;
        Self::with_http_client(base_url, http)
    }

    /// A client that sends its requests through `http`, for callers that need their
    /// own connection settings.
    ///
    /// # Errors
    /// [`Error::BaseUrl`] when `base_url` is not an absolute `http` or `https` URL
    /// without query or fragment.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Result<Self, Error> {
        Ok(Self { http, base_url: normalize_base_url(base_url)?.into(), timeout: DEFAULT_TIMEOUT })
    }

    /// The same client with another per-request timeout (default
    /// [`DEFAULT_TIMEOUT`]). Leases wait their `wait_ms` on top of it.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /healthz`: whether the server is up.
    ///
    /// # Errors
    /// [`Error::Http`] when the server cannot be reached; [`Error::Api`] when it
    /// answers with an error.
    pub async fn health(&self) -> Result<Health, Error> {
        self.call(self.request(Method::GET, &["healthz"])).await
    }

    /// `POST /v1/queues/{queue}/tasks`: enqueues one task. With an idempotency key
    /// (here, or in `request.idempotency_key`), a key the queue has already seen
    /// creates nothing and returns the existing task with `replayed: true`.
    ///
    /// # Errors
    /// [`Error::Api`] with `idempotency_key_reused` when the key came before with a
    /// different request, `invalid_request` and friends when the request is refused;
    /// [`Error::Http`] when the server cannot be reached. After a transport error
    /// the task may or may not exist: retry with the same idempotency key to find
    /// out without creating a second one.
    pub async fn enqueue(
        &self,
        queue: &str,
        request: &EnqueueRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Enqueued, Error> {
        let mut builder = self.request(Method::POST, &["v1", "queues", queue, "tasks"]).json(request);
        if let Some(key) = idempotency_key {
            builder = builder.header(IDEMPOTENCY_KEY, key);
        }
        let answer: Answer<TaskView> = self.send(builder).await?;
        // The header is the contract; the status is the fallback when a proxy drops
        // unknown headers.
        let replayed = answer.replayed.unwrap_or(answer.status == 200);
        Ok(Enqueued { task: answer.value, replayed })
    }

    /// `POST /v1/queues/{queue}/tasks/batch`: enqueues many tasks in one request.
    /// Each item succeeds or fails alone: look at each [`cherga_api::BatchItem`].
    ///
    /// # Errors
    /// [`Error::Api`] when the batch as a whole is refused (too large, malformed);
    /// [`Error::Http`] when the server cannot be reached.
    pub async fn enqueue_batch(
        &self,
        queue: &str,
        request: &EnqueueBatchRequest,
    ) -> Result<BatchResponse, Error> {
        self.call(self.request(Method::POST, &["v1", "queues", queue, "tasks", "batch"]).json(request)).await
    }

    /// `GET /v1/queues/{queue}/tasks`: one page of the queue's tasks, oldest first.
    /// Pass the answer's `next` as `query.after` for the next page.
    ///
    /// # Errors
    /// [`Error::Api`] for a bad state name, limit or cursor; [`Error::Http`] when
    /// the server cannot be reached.
    pub async fn list_tasks(&self, queue: &str, query: &ListQuery) -> Result<TaskList, Error> {
        self.call(self.request(Method::GET, &["v1", "queues", queue, "tasks"]).query(query)).await
    }

    /// `POST /v1/queues/{queue}/lease`: leases up to `request.max` ready tasks,
    /// waiting up to `request.wait_ms` for the first one. Each task carries its
    /// lease in `task.lease`; an empty list means nothing became ready in time.
    ///
    /// # Errors
    /// [`Error::Api`] for out-of-range values; [`Error::Http`] when the server
    /// cannot be reached. A lease cut off by a transport error may have leased
    /// tasks whose answer was lost: they come back once their lease expires.
    pub async fn lease(&self, queue: &str, request: &LeaseRequest) -> Result<LeaseResponse, Error> {
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0));
        let builder = self.request(Method::POST, &["v1", "queues", queue, "lease"]).json(request);
        self.call(builder.timeout(self.timeout + wait)).await
    }

    /// `POST /v1/tasks/{id}/ack`: the task succeeded, with `request.result` as its
    /// result. Sending the same ack again succeeds again.
    ///
    /// # Errors
    /// [`Error::Api`] with `lease_lost` when the lease is not the task's current one
    /// (it expired; the task may run elsewhere); [`Error::Http`] when the server
    /// cannot be reached, in which case the ack can be sent again.
    pub async fn ack(&self, task_id: &str, request: &AckRequest) -> Result<TaskView, Error> {
        self.call(self.request(Method::POST, &["v1", "tasks", task_id, "ack"]).json(request)).await
    }

    /// `POST /v1/tasks/{id}/nack`: the attempt failed. The task is scheduled again
    /// after `request.retry_in_ms` (or the queue's backoff), or becomes dead when
    /// `request.dead` is set or its attempts are used up.
    ///
    /// # Errors
    /// [`Error::Api`] with `lease_lost` when the lease is not the task's current
    /// one; [`Error::Http`] when the server cannot be reached.
    pub async fn nack(&self, task_id: &str, request: &NackRequest) -> Result<TaskView, Error> {
        self.call(self.request(Method::POST, &["v1", "tasks", task_id, "nack"]).json(request)).await
    }

    /// `POST /v1/tasks/{id}/extend`: pushes the lease's expiry to `lease_ms` from
    /// now (a heartbeat). The answer's `lease_expires_at` is the new expiry.
    ///
    /// # Errors
    /// [`Error::Api`] with `lease_lost` when the lease is not the task's current
    /// one; [`Error::Http`] when the server cannot be reached.
    pub async fn extend(&self, task_id: &str, request: &ExtendRequest) -> Result<TaskView, Error> {
        self.call(self.request(Method::POST, &["v1", "tasks", task_id, "extend"]).json(request)).await
    }

    /// `POST /v1/tasks/ack`: acknowledges many tasks at once; each item succeeds or
    /// fails alone.
    ///
    /// # Errors
    /// [`Error::Api`] when the batch as a whole is refused; [`Error::Http`] when the
    /// server cannot be reached.
    pub async fn ack_batch(&self, request: &BatchAckRequest) -> Result<BatchResponse, Error> {
        self.call(self.request(Method::POST, &["v1", "tasks", "ack"]).json(request)).await
    }

    /// `GET /v1/tasks/{id}`: the task as it is now, with its result.
    ///
    /// # Errors
    /// [`Error::Api`] with `task_not_found` (see [`Error::is_not_found`]);
    /// [`Error::Http`] when the server cannot be reached.
    pub async fn get_task(&self, task_id: &str) -> Result<TaskView, Error> {
        self.call(self.request(Method::GET, &["v1", "tasks", task_id])).await
    }

    /// `DELETE /v1/tasks/{id}`: cancels a scheduled or ready task. Cancelling a
    /// cancelled task succeeds again.
    ///
    /// # Errors
    /// [`Error::Api`] with `invalid_state` when the task is running or finished,
    /// `task_not_found` when there is no such task; [`Error::Http`] when the server
    /// cannot be reached.
    pub async fn cancel(&self, task_id: &str) -> Result<TaskView, Error> {
        self.call(self.request(Method::DELETE, &["v1", "tasks", task_id])).await
    }

    /// `POST /v1/tasks/{id}/retry`: sends a dead task back to ready.
    ///
    /// # Errors
    /// [`Error::Api`] with `invalid_state` when the task is not dead,
    /// `task_not_found` when there is no such task; [`Error::Http`] when the server
    /// cannot be reached.
    pub async fn retry(&self, task_id: &str) -> Result<TaskView, Error> {
        self.call(self.request(Method::POST, &["v1", "tasks", task_id, "retry"])).await
    }

    /// `POST /v1/tasks/{id}/retry` with a body: sends a dead task back to ready
    /// with `request.payload`, when given, in place of its payload (the task's
    /// history records the edit).
    ///
    /// # Errors
    /// As [`Client::retry`], and [`Error::Api`] with `payload_too_large` past
    /// the server's limit.
    pub async fn retry_with(&self, task_id: &str, request: &RetryRequest) -> Result<TaskView, Error> {
        self.call(self.request(Method::POST, &["v1", "tasks", task_id, "retry"]).json(request)).await
    }

    /// `GET /v1/queues`: every queue with its settings and counts.
    ///
    /// # Errors
    /// [`Error::Http`] when the server cannot be reached; [`Error::Api`] when it
    /// answers with an error.
    pub async fn queues(&self) -> Result<QueueList, Error> {
        self.call(self.request(Method::GET, &["v1", "queues"])).await
    }

    /// `GET /v1/queues/{queue}`: one queue's settings and counts.
    ///
    /// # Errors
    /// [`Error::Api`] with `queue_not_found` or `invalid_queue_name`;
    /// [`Error::Http`] when the server cannot be reached.
    pub async fn queue(&self, queue: &str) -> Result<QueueView, Error> {
        self.call(self.request(Method::GET, &["v1", "queues", queue])).await
    }

    /// `PUT /v1/queues/{queue}`: replaces the settings given in `settings`, keeps the
    /// others, and creates the queue if needed. Idempotent.
    ///
    /// # Errors
    /// [`Error::Api`] for out-of-range settings or a bad queue name; [`Error::Http`]
    /// when the server cannot be reached.
    pub async fn put_queue(&self, queue: &str, settings: &QueueSettingsBody) -> Result<QueueView, Error> {
        self.call(self.request(Method::PUT, &["v1", "queues", queue]).json(settings)).await
    }

    /// `POST /v1/queues/{queue}/tasks/retry`: sends every dead task the filter
    /// matches back to ready (needs an `admin` token). A long run may need a
    /// longer timeout ([`Client::with_timeout`]).
    ///
    /// # Errors
    /// [`Error::Api`] with `invalid_request` for a bad filter, `queue_not_found`;
    /// [`Error::Http`] when the server cannot be reached.
    pub async fn retry_tasks(&self, queue: &str, filter: &BulkRequest) -> Result<BulkResponse, Error> {
        self.bulk(queue, "retry", filter).await
    }

    /// `POST /v1/queues/{queue}/tasks/cancel`: cancels every scheduled or ready
    /// task the filter matches (needs an `admin` token).
    ///
    /// # Errors
    /// As [`Client::retry_tasks`].
    pub async fn cancel_tasks(&self, queue: &str, filter: &BulkRequest) -> Result<BulkResponse, Error> {
        self.bulk(queue, "cancel", filter).await
    }

    /// `POST /v1/queues/{queue}/tasks/purge`: deletes every finished task the
    /// filter matches (needs an `admin` token).
    ///
    /// # Errors
    /// As [`Client::retry_tasks`].
    pub async fn purge_tasks(&self, queue: &str, filter: &BulkRequest) -> Result<BulkResponse, Error> {
        self.bulk(queue, "purge", filter).await
    }

    async fn bulk(&self, queue: &str, action: &str, filter: &BulkRequest) -> Result<BulkResponse, Error> {
        self.call(self.request(Method::POST, &["v1", "queues", queue, "tasks", action]).json(filter)).await
    }

    /// `DELETE /v1/queues/{queue}`: deletes the queue with its tasks; with
    /// `force`, even while it holds unfinished tasks (needs an `admin` token).
    ///
    /// # Errors
    /// [`Error::Api`] with `queue_not_empty` (unfinished tasks, no `force`),
    /// `queue_not_found`; [`Error::Http`] when the server cannot be reached.
    pub async fn delete_queue(&self, queue: &str, force: bool) -> Result<DeleteQueueResponse, Error> {
        let request = self.request(Method::DELETE, &["v1", "queues", queue]);
        let request = if force { request.query(&[("force", "true")]) } else { request };
        self.call(request).await
    }

    /// `POST /v1/revocations`: refuses the token with this `jti` on every node
    /// (needs an `admin` token). `expires_at`: when the revocation may be
    /// forgotten, normally the token's own expiry; `None` keeps it for ever.
    ///
    /// # Errors
    /// [`Error::Api`] with `unauthorized` or `forbidden` without an admin token;
    /// [`Error::Http`] when the server cannot be reached.
    pub async fn revoke(
        &self,
        request: &cherga_api::auth::RevokeRequest,
    ) -> Result<cherga_api::auth::RevocationView, Error> {
        self.call(self.request(Method::POST, &["v1", "revocations"]).json(request)).await
    }

    /// `GET /v1/revocations`: the revocations in force (needs an `admin` token).
    ///
    /// # Errors
    /// [`Error::Api`] with `unauthorized` or `forbidden` without an admin token;
    /// [`Error::Http`] when the server cannot be reached.
    pub async fn revocations(&self) -> Result<cherga_api::auth::RevocationList, Error> {
        self.call(self.request(Method::GET, &["v1", "revocations"])).await
    }

    /// Starts a request to the path made of `segments`, each percent-encoded.
    pub(crate) fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        self.http.request(method, build_url(&self.base_url, segments)).timeout(self.timeout)
    }

    /// Starts a request without the per-request timeout, for answers that last
    /// as long as the caller reads them (the event stream).
    pub(crate) fn stream_request(&self, segments: &[&str]) -> RequestBuilder {
        self.http.get(build_url(&self.base_url, segments))
    }

    /// Sends a request and decodes the answer's body as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<T, Error> {
        self.send(builder).await.map(|answer| answer.value)
    }

    /// The request/response core: every request goes out and comes back here.
    async fn send<T: DeserializeOwned>(&self, builder: RequestBuilder) -> Result<Answer<T>, Error> {
        let request = builder.build()?;
        let (method, url) = (request.method().clone(), request.url().clone());
        let started = Instant::now();
        let response = match self.http.execute(request).await {
            Ok(response) => response,
            Err(error) => {
                tracing::debug!(%method, %url, %error, "request failed");
                return Err(error.into());
            }
        };
        let status = response.status().as_u16();
        let replayed = response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.eq_ignore_ascii_case("true"));
        let body = response.bytes().await?;
        tracing::debug!(%method, %url, status, elapsed_ms = started.elapsed().as_millis() as u64, "request done");
        let value = decode_answer(status, &body)?;
        Ok(Answer { value, status, replayed })
    }
}

/// Checks `base_url` and drops its trailing slashes.
pub(crate) fn normalize_base_url(base_url: &str) -> Result<String, Error> {
    let refuse = |reason: &str| Err(Error::BaseUrl { url: base_url.to_owned(), reason: reason.to_owned() });
    let url = match reqwest::Url::parse(base_url) {
        Ok(url) => url,
        Err(error) => return refuse(&error.to_string()),
    };
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return refuse("expected an http:// or https:// URL with a host, such as http://127.0.0.1:7700");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return refuse("a base URL has no query or fragment");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `base_url` followed by each segment, percent-encoded so that a queue name or a
/// task id is always exactly one path segment.
pub(crate) fn build_url(base_url: &str, segments: &[&str]) -> String {
    let mut url = String::with_capacity(base_url.len() + segments.iter().map(|s| s.len() + 1).sum::<usize>());
    url.push_str(base_url);
    for segment in segments {
        url.push('/');
        push_segment(&mut url, segment);
    }
    url
}

fn push_segment(url: &mut String, segment: &str) {
    // `.` and `..` would be resolved away as relative paths; encoding their dots
    // keeps them one segment, so the server refuses them as queue names (which
    // they cannot be) instead of answering for another path.
    let only_dots = !segment.is_empty() && segment.bytes().all(|b| b == b'.');
    for byte in segment.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~');
        if unreserved && !(only_dots && byte == b'.') {
            url.push(byte as char);
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
}
