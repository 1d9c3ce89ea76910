//! The PostgreSQL store: several cherga nodes on one database, with the same
//! guarantees as one node on the embedded store.
//!
//! Every call is one transaction on a pooled connection (`ops`): rows are loaded
//! with `FOR UPDATE`, moved by the core's transitions and saved. Claims skip rows
//! other transactions hold (`FOR UPDATE SKIP LOCKED`), so racing nodes never lease
//! one task twice; groups and concurrency limits are kept with advisory locks and
//! a `head` flag (see `ops` for the lock order). `docs/storage.md` has the schema.
//!
//! Invariants:
//! - no caller hears `Ok` from a state-changing call before its `COMMIT` returned
//!   (with `synchronous_commit = on`, forced for every connection);
//! - a call whose transaction certainly did not commit (the server refused a
//!   statement, or the connection was lost before `COMMIT` went out) changed
//!   nothing, and runs again on a fresh connection when the cause was a lost
//!   connection, a terminated backend or a deadlock; a call whose `COMMIT` outcome
//!   is unknown is reported as unavailable and never run again;
//! - the statements of a transaction go out pipelined (`BEGIN` with the first
//!   reads, the last writes with `COMMIT`), so most calls take two round trips;
//! - this node hears about work other nodes made leasable through LISTEN/NOTIFY:
//!   after each commit that made tasks leasable it sends `pg_notify` (coalesced,
//!   from a background task: a NOTIFY inside the transaction would serialise all
//!   commits on PostgreSQL's notify lock), and a dedicated connection listens and
//!   calls the `on_remote_work` callback, reconnecting when lost.

mod events;
mod ops;
mod pool;
mod rows;
mod schema;

use cherga_core::{Millis, NewPayload, NewTask, QueueName, QueueSettingsPatch, Task, TaskId};
use cherga_store::limits;
use cherga_store::stats::StatGauge;
use cherga_store::{
    Ack, AckedAndLeased, BulkPage, BulkStep, Changed, Claim, Effects, Enqueued, EventId, EventPage,
    ListTasks, Nack, QueueInfo, QueueStats, Revocation, SchemaChange, SchemaVersion, Store, StoreError,
    StoreStats, TickReport,
};
use ops::{Keys, TxError};
use pool::{OwnPids, Pool, PoolError};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;

/// Longest one call may take before it is abandoned (and its transaction rolled
/// back by closing its connection): a database that stopped answering gives 503s,
/// not hung requests.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a call waits for a free pooled connection.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a new connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per call when a statement fails in a way that a fresh connection or a
/// second run fixes (lost connection, deadlock).
const MAX_TRIES: u32 = 3;
/// Shortest time between two notifications from this node: under load, one
/// statement announces many commits.
const NOTIFY_EVERY: Duration = Duration::from_millis(2);
/// The default number of pooled connections.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// How to open the store.
#[derive(Debug, Clone)]
pub struct Options {
    /// A libpq-style URL or key=value string, e.g. `postgres://cherga@db/cherga`.
    pub url: String,
    /// A schema of its own (created if missing), for several brokers or test runs
    /// in one database: `[a-z_][a-z0-9_]*`, at most 48 bytes. `None` uses the
    /// connection's `search_path`.
    pub schema: Option<String>,
    /// Most connections open at once (the listener's is extra).
    pub pool_size: usize,
    /// How long events are kept in the event log; `None` keeps no log.
    pub event_retention_ms: Option<Millis>,
}

pub use cherga_store::limits::DEFAULT_EVENT_RETENTION_MS;

impl Options {
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            schema: None,
            pool_size: DEFAULT_POOL_SIZE,
            event_retention_ms: Some(DEFAULT_EVENT_RETENTION_MS),
        }
    }

    /// Checks the URL and the schema name and builds the connection settings:
    /// `application_name` `cherga` (unless the URL names one), `synchronous_commit
    /// = on` whatever the server's default, a one-minute
    /// `idle_in_transaction_session_timeout`, and the schema as `search_path`.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn connection_config(&self) -> Result<tokio_postgres::Config, String> {
        let mut config: tokio_postgres::Config =
            self.url.parse().map_err(|e| format!("invalid PostgreSQL URL: {e}"))?;
        if let Some(schema) = &self.schema {
            check_schema(schema)?;
        }
        if self.pool_size == 0 {
            return Err("the pool size must be at least 1".into());
        }
        if config.get_application_name().is_none() {
            config.application_name("cherga");
        }
        let mut options = config.get_options().unwrap_or_default().to_owned();
        options.push_str(" -c synchronous_commit=on");
        // A node frozen or cut off in the middle of a transaction must not hold
        // its row and advisory locks against the other nodes for long.
        options.push_str(" -c idle_in_transaction_session_timeout=60000");
        if let Some(schema) = &self.schema {
            options.push_str(&format!(" -c search_path={schema}"));
        }
        config.options(options.trim());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        Ok(config)
    }
}

fn check_schema(schema: &str) -> Result<(), String> {
    let valid = !schema.is_empty()
        && schema.len() <= 48
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid { Ok(()) } else { Err(format!("schema {schema:?} must be [a-z_][a-z0-9_]*, at most 48 bytes")) }
}

/// Everything a PostgreSQL failure can be, as the source of
/// [`StoreError::Unavailable`].
#[derive(Debug, thiserror::Error)]
enum PgError {
    #[error("PostgreSQL: {0}")]
    Db(String),
    #[error("PostgreSQL: the connection was lost during COMMIT, so its outcome is unknown: {0}")]
    CommitUnknown(String),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Pool(PoolError),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Migrate(schema::MigrateError),
}

fn unavailable(error: PgError) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

/// An error with its causes, each once: the driver's own `Display` says only "db
/// error", and the pool's leaves the driver's error to its `source()`.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a transaction that certainly did not commit is worth running again.
fn retryable(error: &tokio_postgres::Error) -> bool {
    let transient = [
        SqlState::T_R_DEADLOCK_DETECTED,
        SqlState::T_R_SERIALIZATION_FAILURE,
        SqlState::ADMIN_SHUTDOWN,
        SqlState::CRASH_SHUTDOWN,
        SqlState::CANNOT_CONNECT_NOW,
    ];
    error.is_closed() || error.as_db_error().is_none() || error.code().is_some_and(|c| transient.contains(c))
}

fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Closed => StoreError::Closed,
        other => unavailable(PgError::Pool(other)),
    }
}

/// Runs `$body` (an `ops` function given `&mut $conn`) on a pooled connection
/// within [`CALL_TIMEOUT`], running it again on a fresh connection when its
/// transaction certainly did not commit, for a reason a retry can fix. (The few
/// single statements that run outside a transaction — promotion, purges, a
/// revocation — are idempotent, so running one again after its answer was lost
/// is harmless.)
macro_rules! transact {
    ($inner:expr, $conn:ident => $body:expr) => {{
        let inner: &Inner = $inner;
        let mut tries = 0;
        loop {
            tries += 1;
            if inner.closed.load(Ordering::Acquire) {
                break Err(StoreError::Closed);
            }
            let mut $conn = match inner.pool.get().await {
                Ok(conn) => conn,
                Err(error) => break Err(pool_error(error)),
            };
            match tokio::time::timeout(CALL_TIMEOUT, $body).await {
                Ok(Ok(value)) => break Ok(value),
                Ok(Err(TxError::Store(error))) => {
                    $conn.rollback().await;
                    break Err(error);
                }
                Ok(Err(TxError::Statement(error))) => {
                    $conn.discard();
                    if tries < MAX_TRIES && retryable(&error) {
                        tracing::debug!(error = %describe(&error), tries, "statement failed; retrying");
                        continue;
                    }
                    // disk_full (53100): the server's disk; the same call
                    // succeeds once space is freed there.
                    if error.code() == Some(&SqlState::DISK_FULL) {
                        break Err(StoreError::StorageFull(Box::new(PgError::Db(describe(&error)))));
                    }
                    break Err(unavailable(PgError::Db(describe(&error))));
                }
                Ok(Err(TxError::Commit(error))) => {
                    $conn.discard();
                    break Err(unavailable(PgError::CommitUnknown(describe(&error))));
                }
                Err(_elapsed) => {
                    $conn.discard();
                    break Err(unavailable(PgError::Timeout(CALL_TIMEOUT)));
                }
            }
        }
    }};
}

/// The callback `on_remote_work` registers.
type Wake = Arc<dyn Fn(&str) + Send + Sync>;

struct Inner {
    pool: Pool,
    keys: Keys,
    /// The NOTIFY channel: per schema, so brokers in other schemas are not woken.
    channel: String,
    closed: AtomicBool,
    shutdown: watch::Sender<bool>,
    /// Queues to NOTIFY about, collected until the notifier sends them.
    pending: Mutex<BTreeSet<String>>,
    kick: tokio::sync::Notify,
    last_purge: AtomicI64,
    event_retention_ms: Option<Millis>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    listening: AtomicBool,
    /// Called when another node announces new events (`on_remote_events`).
    events_wake: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

/// The payload that announces new events rather than a queue's work: queue
/// names are never empty.
const EVENTS_PAYLOAD: &str = "";

impl Inner {
    /// Has the notifier tell other nodes that `queues` may have leasable work.
    fn notify<'a>(&self, queues: impl IntoIterator<Item = &'a str>) {
        let mut any = false;
        {
            let mut pending = self.pending.lock().expect("pending lock");
            for queue in queues {
                pending.insert(queue.to_owned());
                any = true;
            }
        }
        if any {
            self.kick.notify_one();
        }
    }

    fn shut_down(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
        self.pool.close();
    }
}

/// The PostgreSQL store. Cheap to share behind an `Arc`.
pub struct PgStore {
    inner: Arc<Inner>,
}

impl PgStore {
    /// Connects, migrates the schema (waiting for another node migrating at the
    /// same time) and starts the notifier.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the options are invalid, the database
    /// cannot be reached or the schema cannot be migrated.
    pub async fn open(options: Options) -> Result<Self, StoreError> {
        let config = options.connection_config().map_err(|e| unavailable(PgError::Config(e)))?;
        let keys = Keys::new(options.schema.as_deref(), options.event_retention_ms.is_some());
        let channel = match &options.schema {
            Some(schema) => format!("cherga_work.{schema}"),
            None => "cherga_work".to_owned(),
        };
        let pool = Pool::new(config, options.pool_size, CHECKOUT_TIMEOUT);
        {
            let mut conn = pool.get().await.map_err(pool_error)?;
            let migrated = tokio::time::timeout(
                CALL_TIMEOUT * 4,
                schema::migrate(&mut conn, options.schema.as_deref(), &keys.migration()),
            )
            .await;
            match migrated {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    conn.discard();
                    return Err(unavailable(PgError::Migrate(error)));
                }
                Err(_) => {
                    conn.discard();
                    return Err(unavailable(PgError::Timeout(CALL_TIMEOUT * 4)));
                }
            }
        }
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            pool,
            keys,
            channel,
            closed: AtomicBool::new(false),
            shutdown,
            pending: Mutex::new(BTreeSet::new()),
            kick: tokio::sync::Notify::new(),
            last_purge: AtomicI64::new(Millis::MIN),
            event_retention_ms: options.event_retention_ms,
            tasks: Mutex::new(Vec::new()),
            listening: AtomicBool::new(false),
            events_wake: Mutex::new(None),
        });
        let notifier = tokio::spawn(run_notifier(inner.clone()));
        inner.tasks.lock().expect("tasks lock").push(notifier);
        Ok(Self { inner })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.inner.shut_down();
    }
}

/// Sends the pending notifications, coalesced: one transaction for every queue
/// collected while the previous one ran, at most one per [`NOTIFY_EVERY`]. Its
/// commit need not wait for the disk (`synchronous_commit = off`): a notification
/// is a hint. Best effort: a lost notification delays a remote long poll, it loses
/// no task.
async fn run_notifier(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        tokio::select! {
            () = inner.kick.notified() => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        let queues: Vec<String> =
            std::mem::take(&mut *inner.pending.lock().expect("pending lock")).into_iter().collect();
        // Queue names are [A-Za-z0-9_.-] and the channel [a-z0-9_.]: safe to quote.
        let calls: Vec<String> = queues
            .iter()
            .filter(|q| !q.contains(['\'', '\\']))
            .map(|q| format!("pg_notify('{}', '{q}')", inner.channel))
            .collect();
        if calls.is_empty() {
            continue;
        }
        let sql = format!("BEGIN; SET LOCAL synchronous_commit = off; SELECT {}; COMMIT", calls.join(", "));
        let sent = async {
            let mut conn = inner.pool.get().await.map_err(|e| describe(&e))?;
            conn.batch(&sql).await.map_err(|e| describe(&e))
        };
        match tokio::time::timeout(CALL_TIMEOUT, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "could not notify other nodes"),
            Err(_) => tracing::debug!("notifying other nodes timed out"),
        }
        tokio::time::sleep(NOTIFY_EVERY).await;
    }
}

/// Listens on a dedicated connection and calls `wake` with each queue another node
/// announces. When the connection is lost it reconnects with backoff, and after
/// each (re)connection wakes every queue, since announcements may have been missed.
async fn run_listener(inner: Arc<Inner>, wake: Wake, own_pids: OwnPids) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    loop {
        let session = listen_once(&inner, &wake, &own_pids);
        tokio::select! {
            outcome = session => {
                match outcome {
                    Ok(()) => {
                        backoff = Duration::from_millis(100);
                        failures = 0;
                    }
                    Err(error) => {
                        failures += 1;
                        if failures == 1 {
                            tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                        } else {
                            tracing::debug!(%error, failures, "LISTEN connection still down");
                        }
                    }
                }
            }
            _ = shutdown.wait_for(|&s| s) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|&s| s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One LISTEN session: returns when the connection ends.
async fn listen_once(inner: &Inner, wake: &Wake, own_pids: &OwnPids) -> Result<(), String> {
    let (client, mut connection) =
        inner.pool.config().connect(tokio_postgres::NoTls).await.map_err(|e| describe(&e))?;
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if sender.send(n).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(describe(&error)),
                None => return Ok(()),
            }
        }
    });
    let setup = async {
        // The channel name is quoted; it holds only [a-z0-9_.].
        client.batch_execute(&format!("LISTEN \"{}\"", inner.channel)).await?;
        client.query("SELECT name FROM queues", &[]).await
    };
    let queues = match setup.await {
        Ok(rows) => rows,
        Err(error) => {
            driver.abort();
            return Err(describe(&error));
        }
    };
    tracing::debug!(channel = %inner.channel, "listening for work from other nodes");
    let events_wake = || {
        if let Some(wake) = inner.events_wake.lock().expect("events wake lock").clone() {
            wake();
        }
    };
    for row in &queues {
        wake(row.get::<_, &str>(0));
    }
    events_wake();
    while let Some(notification) = notifications.recv().await {
        if own_pids.lock().expect("pids lock").contains(&notification.process_id()) {
            continue;
        }
        match notification.payload() {
            EVENTS_PAYLOAD => events_wake(),
            queue => wake(queue),
        }
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => Err("the connection closed".into()),
        Ok(Err(error)) => Err(error),
        Err(error) => Err(error.to_string()),
    }
}

impl PgStore {
    /// Tells other nodes about what a committed call made leasable, and passes its
    /// answer on.
    fn announce<T>(&self, changed: Changed<T>) -> Changed<T> {
        let effects = &changed.effects;
        let leasable = effects.leasable().into_iter().map(|(queue, _)| queue);
        let logged = self.inner.event_retention_ms.is_some() && !effects.transitions.is_empty();
        let events = logged.then_some(EVENTS_PAYLOAD);
        self.inner.notify(leasable.chain(effects.queues_changed.iter().map(String::as_str)).chain(events));
        changed
    }
}

impl Store for PgStore {
    async fn enqueue(
        &self,
        queue: QueueName,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> Result<Changed<Vec<Result<Enqueued, StoreError>>>, StoreError> {
        let inner = &*self.inner;
        let changed =
            transact!(inner, conn => ops::enqueue(&mut conn, &inner.keys, queue.as_str(), &tasks, now))?;
        Ok(self.announce(changed))
    }

    async fn claim(&self, claim: Claim, now: Millis) -> Result<Changed<Vec<Task>>, StoreError> {
        let inner = &*self.inner;
        transact!(inner, conn => ops::claim(&mut conn, &inner.keys, &claim, now))
    }

    async fn complete(
        &self,
        acks: Vec<Ack>,
        now: Millis,
    ) -> Result<Changed<Vec<Result<Task, StoreError>>>, StoreError> {
        let inner = &*self.inner;
        let changed = transact!(inner, conn => ops::complete(&mut conn, &inner.keys, &acks, now))?;
        Ok(self.announce(changed))
    }

    async fn complete_and_claim(
        &self,
        acks: Vec<Ack>,
        claim: Claim,
        now: Millis,
    ) -> Result<Changed<AckedAndLeased>, StoreError> {
        let inner = &*self.inner;
        if acks.is_empty() {
            return Ok(self.claim(claim, now).await?.map(|leased| (Vec::new(), leased)));
        }
        let changed =
            transact!(inner, conn => ops::complete_and_claim(&mut conn, &inner.keys, &acks, &claim, now))?;
        Ok(self.announce(changed))
    }

    async fn fail(&self, nack: Nack, now: Millis) -> Result<Changed<Task>, StoreError> {
        let inner = &*self.inner;
        let changed = transact!(inner, conn => ops::fail(&mut conn, &inner.keys, &nack, now))?;
        Ok(self.announce(changed))
    }

    async fn extend_lease(
        &self,
        task_id: TaskId,
        token: String,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Changed<Task>, StoreError> {
        let inner = &*self.inner;
        transact!(inner, conn => ops::extend_lease(&mut conn, &inner.keys, task_id, &token, lease_ms, now))
    }

    async fn cancel(&self, task_id: TaskId, now: Millis) -> Result<Changed<Task>, StoreError> {
        let inner = &*self.inner;
        let changed = transact!(inner, conn => ops::cancel(&mut conn, &inner.keys, task_id, now))?;
        Ok(self.announce(changed))
    }

    async fn retry_dead(
        &self,
        task_id: TaskId,
        new_payload: Option<NewPayload>,
        now: Millis,
    ) -> Result<Changed<Task>, StoreError> {
        let inner = &*self.inner;
        let new_payload = new_payload.as_ref();
        let changed =
            transact!(inner, conn => ops::retry_dead(&mut conn, &inner.keys, task_id, new_payload, now))?;
        Ok(self.announce(changed))
    }

    async fn act_on_tasks(&self, step: BulkStep, now: Millis) -> Result<Changed<BulkPage>, StoreError> {
        let inner = &*self.inner;
        let changed = transact!(inner, conn => ops::act_on_tasks(&mut conn, &inner.keys, &step, now))?;
        Ok(self.announce(changed))
    }

    async fn delete_queue(&self, queue: QueueName, _now: Millis) -> Result<Changed<()>, StoreError> {
        let inner = &*self.inner;
        let changed = transact!(inner, conn => ops::delete_queue(&mut conn, queue.as_str()))?;
        Ok(self.announce(changed))
    }

    async fn get_task(&self, task_id: TaskId) -> Result<Task, StoreError> {
        transact!(&*self.inner, conn => ops::get_task(&mut conn, task_id))
    }

    async fn list_tasks(&self, list: ListTasks) -> Result<Vec<Task>, StoreError> {
        transact!(&*self.inner, conn => ops::list_tasks(&mut conn, &list))
    }

    async fn put_queue(
        &self,
        queue: QueueName,
        patch: QueueSettingsPatch,
        now: Millis,
    ) -> Result<Changed<QueueInfo>, StoreError> {
        let inner = &*self.inner;
        let changed = transact!(inner, conn => ops::put_queue(&mut conn, queue.as_str(), &patch, now))?;
        Ok(self.announce(changed))
    }

    async fn get_queue(&self, queue: QueueName) -> Result<QueueInfo, StoreError> {
        transact!(&*self.inner, conn => ops::get_queue(&mut conn, queue.as_str()))
    }

    async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        transact!(&*self.inner, conn => ops::list_queues(&mut conn))
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        transact!(&*self.inner, conn => ops::queue_stats(&mut conn))
    }

    fn stats(&self) -> StoreStats {
        let (in_use, size) = self.inner.pool.in_use();
        StoreStats {
            gauges: vec![
                StatGauge {
                    name: "cherga_store_pool_connections_in_use",
                    help: "PostgreSQL connections of this node's pool checked out now",
                    value: in_use as f64,
                },
                StatGauge {
                    name: "cherga_store_pool_connections_max",
                    help: "Most PostgreSQL connections this node's pool opens",
                    value: size as f64,
                },
            ],
            histograms: Vec::new(),
        }
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        transact!(&*self.inner, conn => ops::check_commit(&mut conn))
    }

    async fn tick(&self, now: Millis) -> Result<Changed<TickReport>, StoreError> {
        let inner = &*self.inner;
        // Each step commits on its own: what a later one fails to do, the next tick does.
        let mut transitions = transact!(inner, conn => ops::promote(&mut conn, &inner.keys, now))?;
        let expired = transact!(inner, conn => ops::expire(&mut conn, &inner.keys, now))?;
        let mut report =
            TickReport { promoted: transitions.len(), expired: expired.len(), ..TickReport::default() };
        transitions.extend(expired);
        let last = inner.last_purge.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= limits::PURGE_EVERY_MS {
            inner.last_purge.store(now, Ordering::Relaxed);
            let retention = inner.event_retention_ms;
            let purged = transact!(inner, conn => ops::purge(&mut conn, &inner.keys, now, retention))?;
            report.purged = purged.len();
            transitions.extend(purged);
        }
        report.next_timer = transact!(inner, conn => ops::next_timer(&mut conn))?;
        Ok(self.announce(Changed::new(report, Effects { transitions, ..Effects::none() })))
    }

    async fn revoke_token(&self, revocation: Revocation, now: Millis) -> Result<(), StoreError> {
        transact!(&*self.inner, conn => ops::revoke_token(&mut conn, &revocation, now))
    }

    async fn revoked_tokens(&self, now: Millis) -> Result<Vec<Revocation>, StoreError> {
        transact!(&*self.inner, conn => ops::revoked_tokens(&mut conn, now))
    }

    async fn put_payload_schema(
        &self,
        queue: QueueName,
        change: SchemaChange,
        now: Millis,
    ) -> Result<SchemaVersion, StoreError> {
        transact!(&*self.inner, conn => ops::put_payload_schema(&mut conn, queue.as_str(), &change, now))
    }

    async fn payload_schemas(&self, queue: QueueName) -> Result<Vec<SchemaVersion>, StoreError> {
        transact!(&*self.inner, conn => ops::payload_schemas(&mut conn, queue.as_str()))
    }

    async fn payload_schema_version(&self, queue: &QueueName) -> Result<u64, StoreError> {
        transact!(&*self.inner, conn => ops::payload_schema_version(&mut conn, queue.as_str()))
    }

    async fn read_events(&self, after: EventId, limit: usize) -> Result<EventPage, StoreError> {
        let inner = &*self.inner;
        if inner.event_retention_ms.is_none() {
            return Err(StoreError::Unavailable("the event log is off".into()));
        }
        transact!(inner, conn => events::read(&mut conn, after, limit))
    }

    fn on_remote_events(&self, wake: Arc<dyn Fn() + Send + Sync>) {
        *self.inner.events_wake.lock().expect("events wake lock") = Some(wake);
    }

    fn on_remote_work(&self, wake: Wake) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                "on_remote_work needs a tokio runtime; other nodes' work will not wake long polls"
            );
            return;
        };
        if self.inner.listening.swap(true, Ordering::AcqRel) {
            tracing::warn!("on_remote_work called twice; the first callback stays");
            return;
        }
        let listener = runtime.spawn(run_listener(self.inner.clone(), wake, self.inner.pool.own_pids()));
        self.inner.tasks.lock().expect("tasks lock").push(listener);
    }

    async fn close(&self) {
        self.inner.shut_down();
    }
}
