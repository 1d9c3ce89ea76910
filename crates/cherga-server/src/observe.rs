//! What the server tells about itself: `GET /metrics` (Prometheus text),
//! `GET /readyz`, and the request id and log line of every request.
//!
//! - Counters of task transitions are counted from the effects [`App::apply`]
//!   receives, the one place every committed change passes ([`Metrics::count`]);
//!   they are this node's since it started (on PostgreSQL, each node counts the
//!   changes it made).
//! - Tasks per state and the oldest ready task come from the store at scrape time
//!   ([`Store::queue_stats`]), so they hold for every node; the store's own
//!   machinery from [`Store::stats`].
//! - Request latency is labelled by route template (axum's `MatchedPath`), never
//!   by the path a client sent, so labels stay few whatever clients send.
//!
//! **Invariant:** counting a change takes no lock a scrape holds for long: per
//! queue counters are atomics behind a read lock taken once per queue a call
//! touches; a scrape copies the table of queues before it formats anything.

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{App, now_ms};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cherga_api::ErrorCode;
use cherga_auth::Access;
use cherga_core::{Change, TaskState, Transition};
use cherga_store::{QueueStats, Store, StoreStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest request id taken from a client; a longer or stranger one is replaced.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Longest `GET /readyz` waits for the store before it answers 503.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bounds, in seconds, of the request latency histogram.
const REQUEST_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Upper bounds, in seconds, of the enqueue → first lease histogram.
const FIRST_LEASE_BUCKETS: [f64; 10] = [0.005, 0.05, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

type RequestFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// One queue's counters: transitions this node made, by change.
#[derive(Debug)]
struct QueueCounters {
    changes: [AtomicU64; Change::ALL.len()],
    /// Transitions into `dead` (by a nack or an expired lease).
    dead: AtomicU64,
    /// From enqueue (the task id's time) to the first lease.
    first_lease: Histogram,
    /// Observations in `first_lease` (the histogram does not tell).
    first_leases: AtomicU64,
}

impl QueueCounters {
    fn new() -> Self {
        Self {
            changes: std::array::from_fn(|_| AtomicU64::new(0)),
            dead: AtomicU64::new(0),
            first_lease: Histogram::new(FIRST_LEASE_BUCKETS),
            first_leases: AtomicU64::new(0),
        }
    }

    fn count(&self, transition: &Transition) {
        self.changes[usize::from(transition.change.code())].fetch_add(1, Ordering::Relaxed);
        if transition.to == Some(TaskState::Dead) && transition.from != Some(TaskState::Dead) {
            self.dead.fetch_add(1, Ordering::Relaxed);
        }
        if transition.change == Change::Leased && transition.attempt == 1 {
            let waited_ms = (transition.at - transition.task_id.created_at()).max(0);
            self.first_lease.observe(waited_ms as f64 / 1000.0);
            self.first_leases.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The server's own metrics, kept as it works.
#[derive(Debug)]
pub(crate) struct Metrics {
    queues: RwLock<HashMap<String, Arc<QueueCounters>>>,
    requests: RequestFamily,
    /// Connections open now (`listen` adds and removes them).
    pub(crate) open_connections: Gauge,
    /// [`crate::HttpLimits::max_waiting_leases`]: waiting long polls are the
    /// permits taken from `App::lease_waits`.
    max_waiting_leases: usize,
}

impl Metrics {
    pub(crate) fn new(max_waiting_leases: usize) -> Self {
        Self {
            queues: RwLock::new(HashMap::new()),
            requests: Family::new_with_constructor(|| Histogram::new(REQUEST_BUCKETS)),
            open_connections: Gauge::default(),
            max_waiting_leases,
        }
    }

    /// Counts committed transitions (from `App::apply`).
    pub(crate) fn count(&self, transitions: &[Transition]) {
        let mut current: Option<(&str, Arc<QueueCounters>)> = None;
        for transition in transitions {
            let counters = match &current {
                Some((queue, counters)) if *queue == transition.queue => counters,
                _ => &current.insert((&transition.queue, self.queue(&transition.queue))).1,
            };
            counters.count(transition);
        }
    }

    fn queue(&self, queue: &str) -> Arc<QueueCounters> {
        if let Some(counters) = self.queues.read().expect("metrics lock").get(queue) {
            return counters.clone();
        }
        let mut queues = self.queues.write().expect("metrics lock");
        queues.entry(queue.to_owned()).or_insert_with(|| Arc::new(QueueCounters::new())).clone()
    }

    fn observe_request(&self, method: &str, route: &str, status: StatusCode, elapsed: Duration) {
        let labels =
            RequestLabels { method: method.to_owned(), route: route.to_owned(), status: status.as_u16() };
        self.requests.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }
}

/// Everything one scrape writes, gathered before any of it is formatted.
#[derive(Debug)]
struct Scrape {
    now: cherga_core::Millis,
    queues: Vec<QueueStats>,
    counters: Vec<(String, Arc<QueueCounters>)>,
    store: StoreStats,
    long_polls_waiting: usize,
    event_stream_readers: usize,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut tasks = encoder.encode_descriptor(
            "cherga_queue_tasks",
            "Tasks in each queue by state",
            None,
            MetricType::Gauge,
        )?;
        for queue in &self.queues {
            for state in TaskState::ALL {
                let labels = [("queue", queue.name.as_str()), ("state", state.as_str())];
                ConstGauge::new(queue.count(state) as i64).encode(tasks.encode_family(&labels)?)?;
            }
        }
        let mut oldest = encoder.encode_descriptor(
            "cherga_queue_oldest_ready_age_seconds",
            "How long the oldest ready task of each queue has waited since its run_at (0: none ready)",
            None,
            MetricType::Gauge,
        )?;
        for queue in &self.queues {
            let age_ms = queue.oldest_ready_at.map_or(0, |at| (self.now - at).max(0));
            ConstGauge::new(age_ms as f64 / 1000.0)
                .encode(oldest.encode_family(&[("queue", queue.name.as_str())])?)?;
        }
        let mut changes = encoder.encode_descriptor(
            "cherga_task_transitions",
            "Task transitions this node committed, by queue and change",
            None,
            MetricType::Counter,
        )?;
        for (queue, counters) in &self.counters {
            for change in Change::ALL {
                let n = counters.changes[usize::from(change.code())].load(Ordering::Relaxed);
                let labels = [("queue", queue.as_str()), ("change", change.as_str())];
                ConstCounter::new(n).encode(changes.encode_family(&labels)?)?;
            }
        }
        let mut dead = encoder.encode_descriptor(
            "cherga_tasks_dead",
            "Tasks this node moved to dead (out of attempts or nacked as dead), by queue",
            None,
            MetricType::Counter,
        )?;
        for (queue, counters) in &self.counters {
            let n = counters.dead.load(Ordering::Relaxed);
            ConstCounter::new(n).encode(dead.encode_family(&[("queue", queue.as_str())])?)?;
        }
        let mut first_lease = encoder.encode_descriptor(
            "cherga_task_first_lease_seconds",
            "Time from enqueue to a task's first lease on this node (a delayed task's delay included)",
            None,
            MetricType::Histogram,
        )?;
        // A queue's histogram appears with its first observation, as labelled
        // series do: most of a scrape of many idle queues would be empty buckets.
        for (queue, counters) in
            self.counters.iter().filter(|(_, c)| c.first_leases.load(Ordering::Relaxed) > 0)
        {
            counters.first_lease.encode(first_lease.encode_family(&[("queue", queue.as_str())])?)?;
        }
        for (name, help, value) in [
            ("cherga_long_polls_waiting", "Lease requests waiting for tasks now", self.long_polls_waiting),
            (
                "cherga_event_stream_readers",
                "Clients following GET /v1/events now",
                self.event_stream_readers,
            ),
        ] {
            ConstGauge::new(value as i64).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        for gauge in &self.store.gauges {
            let metric = encoder.encode_descriptor(gauge.name, gauge.help, None, MetricType::Gauge)?;
            ConstGauge::new(gauge.value).encode(metric)?;
        }
        for histogram in &self.store.histograms {
            let mut metric =
                encoder.encode_descriptor(histogram.name, histogram.help, None, MetricType::Histogram)?;
            metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                histogram.sum,
                histogram.count,
                &histogram.buckets,
                None,
            )?;
        }
        Ok(())
    }
}

/// `GET /metrics`: Prometheus text format. With auth on it needs a token that
/// may read every queue (`admin`, `read:*`, `produce:*` or `consume:*`).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "the metrics, in the Prometheus text format (version 0.0.4): \
        tasks per queue and state, the age of each queue's oldest ready task, this node's task transitions, \
        request latencies per route, long polls waiting, open connections, event stream readers, and the \
        store's own figures", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics<S: Store>(
    State(app): State<Arc<App<S>>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    if !caller.allows_everywhere(Access::Read) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this needs a token that may read every queue: admin, read:*, produce:* or consume:*",
        ));
    }
    let queues = app.store.queue_stats().await.map_err(ApiError::from_queue_error)?;
    let metrics = &app.metrics;
    let mut counters: Vec<(String, Arc<QueueCounters>)> = {
        let table = metrics.queues.read().expect("metrics lock");
        table.iter().map(|(queue, counters)| (queue.clone(), counters.clone())).collect()
    };
    counters.sort_by(|a, b| a.0.cmp(&b.0));
    let scrape = Scrape {
        now: now_ms(),
        queues,
        counters,
        store: app.store.stats(),
        long_polls_waiting: metrics.max_waiting_leases.saturating_sub(app.lease_waits.available_permits()),
        // Each stream's follower holds one receiver of the signal.
        event_stream_readers: app.events_signal.receiver_count(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    registry.register(
        "cherga_http_request_duration_seconds",
        "Time to answer each request (to the response head; long polls include their wait), by route",
        metrics.requests.clone(),
    );
    registry.register(
        "cherga_http_connections_open",
        "HTTP connections open now",
        metrics.open_connections.clone(),
    );
    let mut text = String::with_capacity(64 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the metrics could not be written"))?;
    let content_type = HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE);
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// `GET /readyz`: whether this node can serve, which it can while its store can
/// commit. Open to everyone, like `/healthz`.
#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "the store can commit: the node is ready", body = cherga_api::Health),
        (status = 503, description = "the store cannot commit now (database unreachable, disk failing) or \
            did not answer within 3 s; the message says why", body = cherga_api::ErrorBody)))]
pub(crate) async fn ready<S: Store>(
    State(app): State<Arc<App<S>>>,
) -> Result<axum::Json<cherga_api::Health>, ApiError> {
    let unavailable = |message: String| ApiError::new(ErrorCode::Unavailable, message);
    if *app.shutting_down.borrow() {
        return Err(unavailable("the server is shutting down".into()));
    }
    match tokio::time::timeout(READY_TIMEOUT, app.store.check_ready()).await {
        Ok(Ok(())) => Ok(axum::Json(cherga_api::Health { status: "ready".into() })),
        Ok(Err(error)) => {
            let message = crate::with_causes(&error);
            tracing::warn!(error = %message, "not ready: the store cannot commit");
            Err(unavailable(format!("the store cannot commit: {message}")))
        }
        Err(_) => Err(unavailable(format!("the store did not answer within {} s", READY_TIMEOUT.as_secs()))),
    }
}

/// The request id to use: the client's `X-Request-Id` when it is a sane one
/// (1 to 128 characters of letters, digits and `._:/+=-`), else a new one.
fn request_id(sent: Option<&HeaderValue>) -> HeaderValue {
    let sane = |value: &&HeaderValue| {
        let bytes = value.as_bytes();
        (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len())
            && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || b"._:/+=-".contains(&b))
    };
    match sent.filter(sane) {
        Some(value) => value.clone(),
        None => {
            let id = format!("{:032x}", fastrand::u128(..));
            HeaderValue::from_str(&id).expect("hex is a valid header value")
        }
    }
}

/// Every request: gives it an id (returned in `X-Request-Id`), runs it in a
/// `request` span that carries the id, method and route (so every log line of
/// the request names them), logs its answer at debug level (target
/// `cherga_server::observe`), and times it into the latency histogram.
pub(crate) async fn observe<S: Store>(
    State(app): State<Arc<App<S>>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(request.headers().get(REQUEST_ID));
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned();
    let span = tracing::info_span!(
        "request",
        id = %id.to_str().unwrap_or(""),
        method = %method,
        route = %route,
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.in_scope(|| {
        tracing::debug!(status = status.as_u16(), micros = elapsed.as_micros() as u64, "answered");
    });
    app.metrics.observe_request(method.as_str(), &route, status, elapsed);
    response.headers_mut().insert(REQUEST_ID, id);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_request_id_is_kept_and_others_replaced() {
        let keep = HeaderValue::from_static("trace-1.2:abc/DEF+=_");
        assert_eq!(request_id(Some(&keep)), keep);
        for bad in ["", "has space", "quote\"", "semi;colon"] {
            let sent = HeaderValue::from_str(bad).unwrap();
            let made = request_id(Some(&sent));
            assert_ne!(made, sent, "{bad:?} is replaced");
            assert_eq!(made.len(), 32);
        }
        let long = HeaderValue::from_str(&"a".repeat(129)).unwrap();
        assert_ne!(request_id(Some(&long)), long);
        assert_eq!(request_id(None).len(), 32);
        assert_ne!(request_id(None), request_id(None), "new ids differ");
    }
}
