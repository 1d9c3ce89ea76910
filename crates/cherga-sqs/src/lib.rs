//! An endpoint that speaks Amazon SQS's wire protocols over cherga's store, so
//! that code written for SQS (boto3, the AWS SDKs) works against cherga.
//!
//! The semantics are cherga's, mapped rather than imitated: a receive is a
//! lease, a receipt handle carries the task id and the lease's fencing token
//! (so a stale handle cannot delete a message another consumer holds now), the
//! visibility timeout is the lease, `RedrivePolicy.maxReceiveCount` is the
//! queue's `max_attempts`, a FIFO queue's `MessageGroupId` is the task's group
//! and its deduplication id the task's idempotency key. `docs/sqs.md` has the
//! table.
//!
//! **Boundary:** this crate knows the [`Store`] trait and the core, not the v1
//! API. The server that mounts it implements [`Host`]: every state-changing
//! store call's effects go to [`Host::apply`], the server's one apply path, so
//! long polls of either API wake and the event log is followed.

mod actions;
mod attributes;
mod meta;
mod protocol;
mod receipt;
pub mod sigv4;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use cherga_store::{Changed, Effects, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Notify, Semaphore, watch};

pub use protocol::SqsError;
pub use sigv4::{AccessKey, AccessKeys};

/// What the server that mounts the endpoint gives it.
pub trait Host: Send + Sync + 'static {
    type Store: Store;
    /// The store every action calls.
    fn store(&self) -> &Self::Store;
    /// The server's one apply path for the effects of a store call.
    fn apply(&self, effects: &Effects);
    /// The wake-up of `queue`'s long polls (shared with the server's own).
    fn long_polls(&self, queue: &str) -> Arc<Notify>;
    /// Becomes `true` when the server starts shutting down.
    fn shutting_down(&self) -> watch::Receiver<bool>;
    /// Longest a long poll may wait here (below the server's request timeout).
    fn max_wait_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// Settings of the endpoint.
#[derive(Clone, Debug, Default)]
pub struct SqsConfig {
    /// Access keys whose SigV4 signatures are accepted; `None` accepts unsigned
    /// requests (the binary allows that on loopback addresses only).
    pub keys: Option<Arc<AccessKeys>>,
    /// The region named in queue ARNs.
    pub region: String,
    /// Without keys on a loopback address: answer only requests addressed to a
    /// loopback host and not sent by a web page (`Origin`), so that no page
    /// the machine's browser shows can use the endpoint (a form post is a
    /// query-protocol request; DNS rebinding gives a page a name of its own).
    pub loopback_only: bool,
}

/// The account id in queue URLs and ARNs: there is one account.
pub const ACCOUNT: &str = "000000000000";

/// Most long polls waiting at once on the endpoint; more are answered at once.
const MAX_WAITING_RECEIVES: usize = 1024;

/// Largest request body: ten messages of 256 KiB and their attributes.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The shared state of the endpoint's handlers.
pub(crate) struct Sqs<H> {
    host: Arc<H>,
    config: SqsConfig,
    meta: meta::Meta,
    waits: Arc<Semaphore>,
}

impl<H: Host> Sqs<H> {
    /// Awaits a state-changing store call and hands its effects to the host.
    async fn change<T>(
        &self,
        call: impl Future<Output = Result<Changed<T>, StoreError>>,
    ) -> Result<T, StoreError> {
        let changed = call.await?;
        self.host.apply(&changed.effects);
        Ok(changed.value)
    }

    fn store(&self) -> &H::Store {
        self.host.store()
    }
}

/// The endpoint's router: every path and method goes to one handler, which reads
/// the action from `X-Amz-Target` (JSON 1.0) or the `Action` parameter (query).
pub fn router<H: Host>(host: Arc<H>, config: SqsConfig) -> Router {
    let sqs = Arc::new(Sqs {
        host,
        config,
        meta: meta::Meta::default(),
        waits: Arc::new(Semaphore::new(MAX_WAITING_RECEIVES)),
    });
    Router::new()
        .fallback(handle::<H>)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(sqs)
}

/// Checks that a request is addressed to a loopback host and does not come
/// from a web page.
///
/// # Errors
/// `AccessDenied` (403) naming the header at fault.
fn loopback_request(headers: &HeaderMap) -> Result<(), SqsError> {
    let refuse = |message: &str| SqsError::auth(axum::http::StatusCode::FORBIDDEN, "AccessDenied", message);
    if headers.contains_key(axum::http::header::ORIGIN) {
        return Err(refuse("Requests from web pages (with an Origin header) are refused."));
    }
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let loopback = name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(refuse("Without access keys the endpoint answers only requests addressed to a loopback host."))
    }
}

async fn handle<H: Host>(
    State(sqs): State<Arc<Sqs<H>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match protocol::Request::read(&method, &uri, &headers, &body) {
        Ok(request) => request,
        Err((error, wire)) => return protocol::error_response(wire, &error),
    };
    let wire = request.wire;
    if sqs.config.loopback_only
        && let Err(error) = loopback_request(&headers)
    {
        return protocol::error_response(wire, &error);
    }
    let now = sqs.host.now_ms();
    let scopes = match sigv4::check(sqs.config.keys.as_deref(), &method, &uri, &headers, &body, now) {
        Ok(scopes) => scopes,
        Err(error) => return protocol::error_response(wire, &error),
    };
    if let Err(error) = actions::authorize(scopes.as_ref(), &request) {
        return protocol::error_response(wire, &error);
    }
    let base = protocol::base_url(&headers);
    match actions::run(&sqs, &request, scopes.as_ref(), &base).await {
        Ok(answer) => protocol::answer(wire, &request.action, answer),
        Err(error) => protocol::error_response(wire, &error),
    }
}

#[cfg(test)]
mod tests;
