//! The HTTP server: axum routes over a [`Store`], long-poll waiters, and the timer
//! that promotes scheduled tasks, expires leases and purges old ones.
//!
//! **Boundary:** this crate translates HTTP to store calls and back. It holds no
//! task state of its own: only who is waiting for which queue.
//!
//! The one entry point is [`serve`], which takes a listener, a store, a config and
//! a shutdown future, so `main` and tests differ only in arguments.
//!
//! Security lives in [`auth`] (bearer tokens, scopes, revocations), [`browser`]
//! (what web pages may not make the server do: content types, hosts, origins),
//! [`listen`] (the accept loop and its limits, TLS) and [`tls`]; SECURITY.md has
//! the threat model.

mod auth;
mod browser;
mod bulk;
mod contract;
mod error;
mod events;
mod extract;
mod listen;
mod observe;
pub mod openapi;
mod payload_schemas;
mod routes;
mod timer;
mod tls;
mod ui;
mod waiters;

#[cfg(test)]
mod tests;

use cherga_api::Limits;
use cherga_core::Millis;
use cherga_store::{Changed, Effects, Store, StoreError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use timer::Timer;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use auth::{AuthConfig, ClientAddr, REVOCATIONS_REFRESH_MS, REVOCATIONS_STALE_MS, TokenKeys};
pub use browser::{AllowedHosts, InvalidHost};
pub use error::ApiError;
pub use routes::router;
pub use tls::{TlsCerts, TlsError};
use waiters::Waiters;

/// Server settings, validated by the binary before they get here.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest payload or result in bytes.
    pub max_payload_bytes: usize,
    /// Deepest nesting of arrays and objects in a request body, the body's own
    /// braces included; deeper bodies are refused before they are parsed.
    pub max_json_depth: usize,
    /// Connection and request limits.
    pub http: HttpLimits,
    /// Bearer-token authentication; `None` lets every request through (the binary
    /// allows that on loopback addresses only, or with `--insecure`).
    pub auth: Option<AuthConfig>,
    /// Hosts besides the loopback ones that requests may be addressed to with
    /// auth off, and that web pages sending requests may come from.
    pub allowed_hosts: AllowedHosts,
    /// TLS; `None` serves plain HTTP.
    pub tls: Option<Arc<TlsCerts>>,
}

impl ServerConfig {
    /// Settings for an embedded or test server: the given body and payload
    /// limits, [`DEFAULT_MAX_JSON_DEPTH`], [`HttpLimits::DEFAULT`], no
    /// authentication (so requests only to loopback hosts), no TLS.
    pub fn unauthenticated(max_body_bytes: usize, max_payload_bytes: usize) -> Self {
        Self {
            max_body_bytes,
            max_payload_bytes,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            http: HttpLimits::DEFAULT,
            auth: None,
            allowed_hosts: AllowedHosts::default(),
            tls: None,
        }
    }
}

/// The default of [`ServerConfig::max_json_depth`]: deeper than any real task
/// needs, shallow enough that no parser of a payload (in cherga or in a client)
/// runs out of stack on it.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;

/// Limits that keep slow or greedy clients from starving the others.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Most connections open at once; more are closed as soon as accepted.
    pub max_connections: usize,
    /// Most connections open at once from one client address (IPv6: one /64).
    pub max_connections_per_client: usize,
    /// Longest wait for a request head (and between requests on a kept-alive
    /// connection), and for a TLS handshake.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Longest a request may take, body and long poll included. Long polls wait at
    /// most this less one second.
    pub request_timeout: Duration,
    /// Most long polls waiting at once; more get 429.
    pub max_waiting_leases: usize,
}

impl HttpLimits {
    /// The defaults of `cherga serve`.
    pub const DEFAULT: HttpLimits = HttpLimits {
        max_connections: 4096,
        max_connections_per_client: 1024,
        header_read_timeout: Duration::from_secs(30),
        max_header_bytes: 32 * 1024,
        request_timeout: Duration::from_secs(90),
        max_waiting_leases: 1024,
    };
}

/// Longest the timer sleeps without looking, so purges run even when idle.
const TIMER_IDLE_MS: Millis = 1_000;

/// What every handler shares.
pub struct App<S> {
    store: Arc<S>,
    limits: Limits,
    waiters: Arc<Waiters>,
    timer: Timer,
    /// Becomes `true` when the server starts shutting down: long polls return early.
    shutting_down: watch::Receiver<bool>,
    /// Authentication, when on.
    guard: Option<auth::Guard>,
    /// One permit per long poll allowed to wait.
    lease_waits: Arc<tokio::sync::Semaphore>,
    /// Longest a long poll waits: below the request timeout.
    max_wait_ms: u64,
    /// Raised whenever events may have been added to the log (by a change here,
    /// or another node's): event streams read the log again.
    events_signal: watch::Sender<u64>,
    /// Deepest nesting a request body may have ([`ServerConfig::max_json_depth`]).
    max_json_depth: usize,
    /// [`ServerConfig::allowed_hosts`].
    allowed_hosts: AllowedHosts,
    /// Counters and histograms for `GET /metrics`.
    metrics: observe::Metrics,
    /// The queues' compiled payload schemas (`contract.rs`).
    contracts: contract::Contracts,
}

impl<S: Store> App<S> {
    /// Applies what a store call changed, here: the one place that decides what a
    /// change means for this server. Tasks that may have become leasable wake as
    /// many waiting leases of their queue (every waiter of a queue whose settings
    /// changed), a timer earlier than the loop's plan wakes the loop, event
    /// streams look again, and the transitions are counted for `/metrics`.
    pub fn apply(&self, effects: &Effects) {
        self.metrics.count(&effects.transitions);
        for (queue, n) in effects.leasable() {
            self.waiters.wake_some(queue, n);
        }
        for queue in &effects.queues_changed {
            self.waiters.wake(queue);
        }
        if let Some(at) = effects.next_timer() {
            self.timer.due_by(at);
        }
        if !effects.transitions.is_empty() {
            self.events_signal.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Awaits a state-changing store call, applies its effects and answers its value.
    ///
    /// # Errors
    /// The store's error (which changed nothing).
    pub(crate) async fn change<T>(
        &self,
        call: impl Future<Output = Result<Changed<T>, StoreError>>,
    ) -> Result<T, StoreError> {
        let changed = call.await?;
        self.apply(&changed.effects);
        Ok(changed.value)
    }

    /// The store every handler calls. A caller that changes state hands the
    /// effects of the call to [`App::apply`].
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The wake-up of `queue`'s long polls: a waiter registers with
    /// `notified()` (and `enable()`s it) before it looks for work, so that a
    /// change [`App::apply`] reports in between is not missed.
    pub fn long_polls(&self, queue: &str) -> Arc<tokio::sync::Notify> {
        self.waiters.of(queue)
    }

    /// Becomes `true` when the server starts shutting down: long polls return early.
    pub fn shutting_down(&self) -> watch::Receiver<bool> {
        self.shutting_down.clone()
    }

    /// Longest a long poll may wait on this server, in milliseconds.
    pub fn max_wait_ms(&self) -> u64 {
        self.max_wait_ms
    }

    /// The shared state for a router over `store`. The returned sender starts a
    /// shutdown when it sends `true`.
    pub fn new(store: Arc<S>, config: &ServerConfig) -> (Arc<Self>, watch::Sender<bool>) {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let waiters = Arc::new(Waiters::default());
        let remote = waiters.clone();
        store.on_remote_work(Arc::new(move |queue: &str| remote.wake(queue)));
        let (events_signal, _) = watch::channel(0u64);
        let remote_events = events_signal.clone();
        store.on_remote_events(Arc::new(move || remote_events.send_modify(|n| *n = n.wrapping_add(1))));
        let request_ms = u64::try_from(config.http.request_timeout.as_millis()).unwrap_or(u64::MAX);
        let app = Arc::new(Self {
            store,
            limits: Limits { max_payload_bytes: config.max_payload_bytes },
            waiters,
            timer: Timer::new(),
            shutting_down: shutdown_rx,
            guard: config.auth.as_ref().map(auth::Guard::new),
            lease_waits: Arc::new(tokio::sync::Semaphore::new(config.http.max_waiting_leases)),
            max_wait_ms: cherga_api::MAX_WAIT_MS.min(request_ms.saturating_sub(1_000)),
            events_signal,
            max_json_depth: config.max_json_depth,
            allowed_hosts: config.allowed_hosts.clone(),
            metrics: observe::Metrics::new(config.http.max_waiting_leases),
            contracts: contract::Contracts::default(),
        });
        (app, shutdown_tx)
    }

    /// Reads the revocation set now (when auth is on). `serve` calls it before it
    /// accepts connections, so no revoked token slips through a restart.
    ///
    /// # Errors
    /// The store's error.
    pub async fn load_revocations(&self) -> Result<(), cherga_store::StoreError> {
        match &self.guard {
            Some(guard) => guard.refresh_revocations(self.store.as_ref(), now_ms()).await.map(drop),
            None => Ok(()),
        }
    }

    /// Reads the revocation set from the store every [`REVOCATIONS_REFRESH_MS`]
    /// until shutdown, so a revocation made on any node sharing the store applies
    /// here within about a second. Does nothing when auth is off.
    pub async fn run_revocations(self: Arc<Self>) {
        let Some(guard) = &self.guard else { return };
        let mut shutting_down = self.shutting_down.clone();
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(REVOCATIONS_REFRESH_MS as u64)) => {}
                _ = shutting_down.wait_for(|&s| s) => return,
            }
            match guard.refresh_revocations(self.store.as_ref(), now_ms()).await {
                Ok(_) => failures = 0,
                Err(error) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        let error = &error as &dyn std::error::Error;
                        tracing::error!(error, failures, "reading token revocations failed; retrying");
                    }
                }
            }
        }
    }

    /// Runs the timers until shutdown: promotes due tasks, expires leases, purges,
    /// and wakes the long polls of queues where something became leasable.
    pub async fn run_timers(self: Arc<Self>) {
        let mut shutting_down = self.shutting_down.clone();
        let mut failures = 0u32;
        loop {
            self.timer.tick_starts();
            let now = now_ms();
            let next = match self.change(self.store.tick(now)).await {
                Ok(report) => {
                    failures = 0;
                    if report.expired > 0 || report.purged > 0 {
                        tracing::debug!(
                            expired = report.expired,
                            promoted = report.promoted,
                            purged = report.purged,
                            "timers ran"
                        );
                    }
                    // A full tick may have left work behind: look again at once.
                    let busy = report.promoted + report.expired >= 10_000;
                    let idle_wake = now + TIMER_IDLE_MS;
                    if busy { now } else { report.next_timer.map_or(idle_wake, |t| t.min(idle_wake)) }
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(60) {
                        let error = &error as &dyn std::error::Error;
                        tracing::error!(error, failures, "timer tick failed; retrying");
                    }
                    now + TIMER_IDLE_MS
                }
            };
            // A lease made while the tick ran may be earlier than its report.
            let mut wake_at = self.timer.tick_ended(next);
            loop {
                let sleep_ms = (wake_at - now_ms()).max(0) as u64;
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(sleep_ms)) => break,
                    () = self.timer.kicked() => wake_at = self.timer.wake_at(),
                    _ = shutting_down.wait_for(|&s| s) => return,
                }
            }
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then stops accepting,
/// finishes the requests in flight (long polls return at once with what they
/// have), stops the timers and closes the store.
///
/// # Errors
/// When the revocation set cannot be read at start-up (with auth on).
pub async fn serve<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, store, config, shutdown, None).await
}

/// Makes the router of another endpoint over the same [`App`] (the SQS one): its
/// store calls go through [`App::apply`] like the API's.
pub type MakeRouter<S> = Box<dyn FnOnce(Arc<App<S>>) -> axum::Router + Send>;

/// Another endpoint served beside the API, on its own listener, with the same
/// connection limits, TLS and shutdown.
pub struct Endpoint<S> {
    pub listener: TcpListener,
    pub router: MakeRouter<S>,
}

/// [`serve`], and `extra` beside it until the same shutdown.
///
/// # Errors
/// When the revocation set cannot be read at start-up (with auth on).
pub async fn serve_with<S: Store>(
    listener: TcpListener,
    store: Arc<S>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    extra: Option<Endpoint<S>>,
) -> std::io::Result<()> {
    let (app, shutdown_tx) = App::new(store.clone(), &config);
    if let Err(error) = app.load_revocations().await {
        store.close().await;
        let message = format!("cannot read token revocations from the store: {}", with_causes(&error));
        return Err(std::io::Error::other(message));
    }
    let timers = tokio::spawn(app.clone().run_timers());
    let revocations = tokio::spawn(app.clone().run_revocations());
    let open_connections = app.metrics.open_connections.clone();
    let extra = extra.map(|endpoint| {
        let router = (endpoint.router)(app.clone());
        let mut stop = app.shutting_down();
        let signal = async move {
            let _ = stop.wait_for(|&s| s).await;
        };
        let (http, tls, open) = (config.http.clone(), config.tls.clone(), open_connections.clone());
        tokio::spawn(async move {
            listen::serve_connections(endpoint.listener, router, &http, tls, open, signal).await;
        })
    });
    let router = router(app, &config);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing requests in flight");
        let _ = shutdown_tx.send(true);
    };
    listen::serve_connections(listener, router, &config.http, config.tls.clone(), open_connections, signal)
        .await;
    if let Some(extra) = extra {
        let _ = extra.await;
    }
    let _ = timers.await;
    let _ = revocations.await;
    store.close().await;
    tracing::info!("store closed");
    Ok(())
}

/// `error` and its causes in one line, each once (`Display` of an error leaves
/// out its `source()`): for a message that must carry them in one string.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}
