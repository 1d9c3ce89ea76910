//! The worker runtime: leases the tasks of one queue, runs the handler registered
//! for each task's kind, keeps the lease alive while the handler runs, and acks or
//! nacks the outcome.
//!
//! Invariants:
//! - The worker never holds more than `concurrency` tasks: a lease asks for at most
//!   the free slots, and every leased task takes a slot until it is reported or
//!   its ack is handed to the lease loop.
//! - A handler that succeeds while the lease loop waits for a free slot hands its
//!   ack to the loop, which sends it in the lease request that slot allows (one
//!   round trip and one commit for both; the server stores acks before a lease
//!   waits). When that request fails or is cut off by shutdown, each handed ack
//!   is sent again on its own (acks are idempotent).
//! - Every leased task is reported (ack or nack) with the token of the lease it was
//!   delivered under, and only with that token. A token the server no longer
//!   honours (`lease_lost`) is never retried: the task belongs to someone else now.
//! - A task leased after shutdown began is handed back at once (nack, retry in
//!   0 ms) rather than started, unless that would use up its last attempt.
//!
//! What is not kept: when the future returned by [`Worker::run`] is dropped
//! instead of being shut down, running handlers are aborted and their tasks come
//! back only when their leases expire. A lease request cut off by shutdown may
//! likewise have leased tasks whose answer never arrived.

use std::any::Any;
use std::collections::HashMap;
use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use cherga_api::{
    AckRequest, BatchAck, ExtendRequest, LeaseRequest, MAX_BATCH, MAX_WAIT_MS, NackRequest, TaskView,
};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, sleep};
use tracing::Instrument;

use crate::{Client, Error};

/// Default lease the worker asks for, renewed every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Default long-poll wait of one lease request.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);
/// An empty lease answer faster than this (or than the wait asked for) makes the
/// worker back off, so a wait of zero or a server in shutdown does not spin it.
const MIN_POLL: Duration = Duration::from_millis(50);

/// Why a handler failed, and what to do with the task.
///
/// Any error that can be displayed converts into it with `?` or `.into()`: its
/// text becomes the task's `last_error`. By default the task is retried after the
/// queue's backoff; [`HandlerError::dead`] and [`HandlerError::retry_in`] change
/// that.
///
/// It deliberately does not implement `Display` or `std::error::Error`: that is
/// what lets every displayable error convert into it.
#[derive(Debug)]
pub struct HandlerError {
    message: String,
    retry_in: Option<Duration>,
    dead: bool,
}

impl HandlerError {
    /// A failure explained by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), retry_in: None, dead: false }
    }

    /// Do not retry: the task becomes dead at once (nack with `dead: true`).
    #[must_use]
    pub fn dead(mut self) -> Self {
        self.dead = true;
        self
    }

    /// Retry after `delay` instead of the queue's backoff.
    #[must_use]
    pub fn retry_in(mut self, delay: Duration) -> Self {
        self.retry_in = Some(delay);
        self
    }

    /// The text stored as the task's `last_error`.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn to_nack(&self, lease: &str) -> NackRequest {
        NackRequest {
            lease: lease.to_owned(),
            error: Some(self.message.clone()),
            retry_in_ms: self.retry_in.map(duration_ms),
            dead: self.dead,
        }
    }
}

impl<E: fmt::Display> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::new(error.to_string())
    }
}

/// What a handler produced: the result to ack with, or why to nack.
type Outcome = Result<Option<Box<RawValue>>, HandlerError>;
type HandlerFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;
type Handler = Arc<dyn Fn(TaskView) -> HandlerFuture + Send + Sync>;

/// Builds a [`Worker`]; start with [`Worker::builder`].
pub struct WorkerBuilder {
    client: Client,
    queue: String,
    concurrency: usize,
    lease: Duration,
    wait: Duration,
    name: String,
    handlers: HashMap<String, Handler>,
}

impl WorkerBuilder {
    /// Most tasks run at once (default 1; at least 1).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The lease asked for with each task and each heartbeat (default
    /// [`DEFAULT_LEASE`]). The worker extends it every third of this while the
    /// handler runs, so a worker that dies loses its tasks to others after at most
    /// this long.
    #[must_use]
    pub fn lease_duration(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(1));
        self
    }

    /// How long one lease request waits for a task before asking again (default
    /// [`DEFAULT_WAIT`], at most [`MAX_WAIT_MS`]). Longer means fewer idle requests.
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait.min(Duration::from_millis(MAX_WAIT_MS));
        self
    }

    /// The worker name shown on the tasks it holds (default `host:pid`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Runs `handler` for tasks of `kind`. `Ok(value)` acks the task with `value`
    /// (any `Serialize`; `()` gives a `null` result), `Err` nacks it with the
    /// error's text. A handler that panics has its task nacked with
    /// `panicked: <message>`. Registering a kind again replaces its handler.
    ///
    /// ```no_run
    /// # use cherga_client::{Client, Worker, HandlerError};
    /// # fn build(client: Client) -> Worker {
    /// Worker::builder(client, "payments")
    ///     .handler("charge", |task| async move {
    ///         let order: u64 = task.payload_as()?;
    ///         if order == 0 {
    ///             return Err(HandlerError::new("order 0 does not exist").dead());
    ///         }
    ///         Ok(serde_json::json!({ "charged": order }))
    ///     })
    ///     .build()
    /// # }
    /// ```
    #[must_use]
    pub fn handler<F, Fut, R>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskView) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
        R: Serialize,
    {
        let handler: Handler = Arc::new(move |task| {
            let future = handler(task);
            Box::pin(async move {
                let value = future.await?;
                serde_json::value::to_raw_value(&value).map(Some).map_err(|error| {
                    HandlerError::new(format!("cannot encode the handler's result as JSON: {error}"))
                })
            })
        });
        self.handlers.insert(kind.into(), handler);
        self
    }

    /// The worker, ready to [`Worker::run`].
    pub fn build(self) -> Worker {
        Worker {
            inner: Arc::new(Inner {
                client: self.client,
                queue: self.queue,
                concurrency: self.concurrency,
                lease: self.lease,
                wait: self.wait,
                name: self.name,
                handlers: self.handlers,
                saturated: AtomicBool::new(false),
            }),
        }
    }
}

/// Runs handlers for the tasks of one queue; see the module documentation.
/// Cloning is cheap and gives a handle to the same configuration.
#[derive(Clone)]
pub struct Worker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) queue: String,
    /// At least 1.
    pub(crate) concurrency: usize,
    lease: Duration,
    wait: Duration,
    name: String,
    handlers: HashMap<String, Handler>,
    /// Set while the lease loop waits for a free slot: a handler that succeeds
    /// then hands its ack to the loop instead of sending it.
    saturated: AtomicBool,
}

/// How the outcome of one task was reported.
#[derive(Debug)]
pub(crate) enum Reported {
    Acked,
    Nacked,
    /// The server refused the report or could not be reached in time; the task
    /// comes back when its lease expires (or already has).
    Lost,
    /// Succeeded; the ack goes with the lease loop's next lease request.
    Handed(HandedAck),
}

/// An ack handed to the lease loop, and until when its lease holds.
#[derive(Debug)]
pub(crate) struct HandedAck {
    ack: BatchAck,
    deadline: Instant,
}

impl Worker {
    /// A builder of a worker for `queue` that talks to cherga through `client`.
    pub fn builder(client: Client, queue: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            client,
            queue: queue.into(),
            concurrency: 1,
            lease: DEFAULT_LEASE,
            wait: DEFAULT_WAIT,
            name: default_name(),
            handlers: HashMap::new(),
        }
    }

    /// Leases and runs tasks until `shutdown` resolves, then stops leasing, lets
    /// running handlers finish and reports them, and returns.
    ///
    /// Transient failures (cherga unreachable, 5xx) are logged and retried with a
    /// backoff from 100 ms to 5 s, forever.
    ///
    /// # Errors
    /// When cherga refuses the lease request itself (4xx: a bad queue name, lease
    /// duration or worker name), which retrying cannot fix. Running handlers are
    /// still finished and reported before the error is returned.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let span = tracing::info_span!("worker", queue = %self.inner.queue, worker = %self.inner.name);
        self.run_inner(shutdown).instrument(span).await
    }

    async fn run_inner(&self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let inner = &self.inner;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut running: JoinSet<Reported> = JoinSet::new();
        let mut backoff = Backoff::new();
        tracing::info!(concurrency = inner.concurrency, "worker started");
        // Acks handed over by handlers, for the next lease request.
        let mut handed: Vec<HandedAck> = Vec::new();
        let result = loop {
            while let Some(joined) = running.try_join_next() {
                log_join(joined, &mut handed);
            }
            let free = inner.concurrency - running.len();
            if free == 0 {
                inner.saturated.store(true, Ordering::SeqCst);
                let woken = tokio::select! {
                    biased;
                    () = &mut shutdown => None,
                    Some(joined) = running.join_next() => Some(joined),
                };
                inner.saturated.store(false, Ordering::SeqCst);
                match woken {
                    None => break Ok(()),
                    Some(joined) => {
                        log_join(joined, &mut handed);
                        continue;
                    }
                }
            }
            let mut request = inner.lease_request(free, inner.wait);
            request.acks = handed.iter().map(|h| h.ack.clone()).collect();
            let sent_at = Instant::now();
            // The lease comes first so that an answer already received is used, not
            // dropped; shutdown is checked right after it.
            let leased = tokio::select! {
                biased;
                leased = inner.client.lease(&inner.queue, &request) => leased,
                () = &mut shutdown => break Ok(()),
            };
            match &leased {
                Ok(answer) => {
                    for (item, h) in answer.acks.iter().flatten().zip(&handed) {
                        match &item.error {
                            None => tracing::debug!(task = %h.ack.id, "task acked with the next lease"),
                            Some(error) => tracing::warn!(
                                task = %h.ack.id, code = %error.code, message = %error.message,
                                "outcome refused: the task will run again if its lease expired"
                            ),
                        }
                    }
                    handed.clear();
                }
                // Their fate is unknown: each is sent again on its own.
                Err(_) => inner.send_handed(&mut running, &mut handed),
            }
            match leased {
                Ok(answer) if answer.tasks.is_empty() && sent_at.elapsed() < inner.wait.max(MIN_POLL) => {
                    // An empty answer before the wait was over: the server is shutting
                    // down, or the wait is zero. Slow down rather than spin.
                    let delay = backoff.next_delay();
                    tracing::debug!(
                        delay_ms = duration_ms(delay),
                        "empty lease answer came early; slowing down"
                    );
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break Ok(()),
                        () = sleep(delay) => {}
                    }
                }
                Ok(answer) => {
                    backoff.reset();
                    let stopping = is_ready(&mut shutdown).await;
                    let deadline = sent_at + inner.lease;
                    for task in answer.tasks {
                        let span = task_span(&task);
                        if stopping && task.attempts < task.max_attempts {
                            running.spawn(Arc::clone(inner).hand_back(task, deadline).instrument(span));
                        } else {
                            running.spawn(Arc::clone(inner).process(task, deadline).instrument(span));
                        }
                    }
                    if stopping {
                        break Ok(());
                    }
                }
                Err(error) if error.is_transient() => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = &error as &dyn StdError,
                        delay_ms = duration_ms(delay),
                        "cannot lease; trying again"
                    );
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break Ok(()),
                        () = sleep(delay) => {}
                    }
                }
                Err(error) => {
                    tracing::error!(
                        error = &error as &dyn StdError,
                        "cherga refuses this worker's lease requests; stopping"
                    );
                    break Err(error);
                }
            }
        };
        tracing::info!(running = running.len(), "worker stopping; finishing the tasks it holds");
        // Acks handed over for a lease request that was not sent or not answered.
        inner.send_handed(&mut running, &mut handed);
        while let Some(joined) = running.join_next().await {
            log_join(joined, &mut handed);
            inner.send_handed(&mut running, &mut handed);
        }
        tracing::info!("worker stopped");
        result
    }
}

impl Inner {
    pub(crate) fn lease_duration(&self) -> Duration {
        self.lease
    }

    pub(crate) fn lease_request(&self, max: usize, wait: Duration) -> LeaseRequest {
        LeaseRequest {
            max: Some(max.min(MAX_BATCH)),
            wait_ms: Some(u64::try_from(wait.as_millis()).unwrap_or(MAX_WAIT_MS)),
            lease_ms: Some(duration_ms(self.lease)),
            worker: Some(self.name.clone()),
            acks: Vec::new(),
        }
    }

    /// Runs one leased task to its report. `deadline` is when the lease expires at
    /// the latest, as far as this worker knows.
    pub(crate) async fn process(self: Arc<Self>, task: TaskView, mut deadline: Instant) -> Reported {
        let Some(token) = task.lease.as_ref().map(|lease| lease.token.clone()) else {
            tracing::error!("a leased task came without a lease token; leaving it to expire");
            return Reported::Lost;
        };
        let task_id = task.id.clone();
        let Some(handler) = self.handlers.get(&task.kind).cloned() else {
            let error = HandlerError::new(format!(
                "worker {:?} has no handler for kind {:?} of queue {:?}",
                self.name, task.kind, self.queue
            ));
            tracing::warn!(error = error.message(), "no handler for this kind");
            return self.report(&task_id, &token, Err(error), deadline).await;
        };
        tracing::debug!("task started");
        // The handler runs in its own tokio task so that a panic is caught as a
        // JoinError instead of unwinding through this one.
        let mut handle = AbortOnDrop(tokio::spawn(async move { handler(task).await }));
        let joined = {
            let keep_alive = self.keep_alive(&task_id, &token, &mut deadline);
            tokio::select! {
                joined = &mut handle.0 => joined,
                never = keep_alive => match never {},
            }
        };
        let outcome = joined.unwrap_or_else(|error| Err(join_error(error)));
        match outcome {
            Ok(result) if self.saturated.load(Ordering::SeqCst) => {
                // The lease loop waits for this slot: the ack goes with its lease.
                Reported::Handed(HandedAck { ack: BatchAck { id: task_id, lease: token, result }, deadline })
            }
            outcome => self.report(&task_id, &token, outcome, deadline).await,
        }
    }

    /// Sends each of `handed` on its own (retrying as any report does), in `running`.
    fn send_handed(self: &Arc<Self>, running: &mut JoinSet<Reported>, handed: &mut Vec<HandedAck>) {
        for h in handed.drain(..) {
            running.spawn(Arc::clone(self).send_one(h).instrument(tracing::Span::current()));
        }
    }

    /// Sends a handed ack on its own.
    pub(crate) async fn send_one(self: Arc<Self>, handed: HandedAck) -> Reported {
        let HandedAck { ack: BatchAck { id, lease, result }, deadline } = handed;
        self.report(&id, &lease, Ok(result), deadline).await
    }

    /// Hands a task that was leased during shutdown back for another worker.
    async fn hand_back(self: Arc<Self>, task: TaskView, deadline: Instant) -> Reported {
        let Some(token) = task.lease.as_ref().map(|lease| lease.token.clone()) else {
            return Reported::Lost;
        };
        tracing::debug!("handing back a task leased during shutdown");
        let error = HandlerError::new(format!("worker {:?} shut down before starting the task", self.name))
            .retry_in(Duration::ZERO);
        self.report(&task.id, &token, Err(error), deadline).await
    }

    /// Extends the lease every third of its duration, forever; the caller drops
    /// this future when the handler is done. `deadline` follows each extension.
    async fn keep_alive(&self, task_id: &str, token: &str, deadline: &mut Instant) -> Infallible {
        let request = ExtendRequest { lease: token.to_owned(), lease_ms: Some(duration_ms(self.lease)) };
        loop {
            sleep(self.lease / 3).await;
            let sent_at = Instant::now();
            match self.client.extend(task_id, &request).await {
                Ok(_) => *deadline = sent_at + self.lease,
                Err(error) if error.is_lease_lost() || error.is_invalid_state() || error.is_not_found() => {
                    tracing::warn!(
                        error = &error as &dyn StdError,
                        "lease lost while the handler runs; its outcome will be refused"
                    );
                    return std::future::pending().await;
                }
                Err(error) => {
                    tracing::warn!(error = &error as &dyn StdError, "cannot extend the lease; trying again")
                }
            }
        }
    }

    /// Acks or nacks, retrying transient failures while the lease may still hold.
    async fn report(&self, task_id: &str, token: &str, outcome: Outcome, deadline: Instant) -> Reported {
        let mut backoff = Backoff::new();
        loop {
            let (sent, reported) = match &outcome {
                Ok(result) => {
                    let request = AckRequest { lease: token.to_owned(), result: result.clone() };
                    (self.client.ack(task_id, &request).await, Reported::Acked)
                }
                Err(error) => (self.client.nack(task_id, &error.to_nack(token)).await, Reported::Nacked),
            };
            let error = match sent {
                Ok(view) => {
                    match &outcome {
                        Ok(_) => tracing::debug!(state = %view.state, "task acked"),
                        Err(error) => {
                            tracing::info!(state = %view.state, error = error.message(), "task nacked")
                        }
                    }
                    return reported;
                }
                Err(error) => error,
            };
            let delay = backoff.next_delay();
            if error.is_transient() && Instant::now() + delay < deadline {
                tracing::warn!(
                    error = &error as &dyn StdError,
                    delay_ms = duration_ms(delay),
                    "cannot report the task's outcome; trying again"
                );
                sleep(delay).await;
            } else if error.is_lease_lost() {
                tracing::warn!(
                    error = &error as &dyn StdError,
                    "outcome refused: the lease expired and the task will run again"
                );
                return Reported::Lost;
            } else {
                tracing::error!(
                    error = &error as &dyn StdError,
                    "cannot report the task's outcome; it will run again when its lease expires"
                );
                return Reported::Lost;
            }
        }
    }
}

fn task_span(task: &TaskView) -> tracing::Span {
    tracing::info_span!("task", id = %task.id, kind = %task.kind, attempt = task.attempts)
}

/// Takes a finished runner's outcome: a handed ack joins `handed`.
fn log_join(joined: Result<Reported, JoinError>, handed: &mut Vec<HandedAck>) {
    match joined {
        Ok(Reported::Handed(ack)) => handed.push(ack),
        Ok(_) => {}
        // Only the runtime's own code runs here, so this is a bug in it.
        Err(error) => tracing::error!(%error, "a task's runner failed"),
    }
}

/// Polls `future` once: whether it has already resolved.
async fn is_ready(future: &mut Pin<&mut impl Future<Output = ()>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_ready())).await
}

/// A handler's task, aborted when the runner holding it is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn join_error(error: JoinError) -> HandlerError {
    match error.try_into_panic() {
        Ok(payload) => HandlerError::new(format!("panicked: {}", panic_message(&*payload))),
        Err(_) => HandlerError::new("the handler was cancelled"),
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        message
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message
    } else {
        "a panic payload that is not a string"
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn default_name() -> String {
    let pid = std::process::id();
    match std::env::var("HOSTNAME") {
        Ok(host) if !host.is_empty() && !host.chars().any(char::is_control) => format!("{host}:{pid}"),
        _ => format!("pid-{pid}"),
    }
}

/// Exponential backoff with jitter between failed attempts: 100 ms doubling to at
/// most 5 s, each delay drawn from its upper half so that workers that failed
/// together do not retry together.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) const FIRST: Duration = Duration::from_millis(100);
    pub(crate) const MAX: Duration = Duration::from_secs(5);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (ceiling * 2).min(Self::MAX);
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}
