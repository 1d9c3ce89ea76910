//! The client and the worker against the real server (in process, on port 0, with
//! a SQLite store in a temporary directory).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cherga_client::api::{
    AckRequest, BatchAck, BatchAckRequest, EnqueueBatchRequest, EnqueueRequest, ExtendRequest, LeaseRequest,
    ListQuery, NackRequest, QueueSettingsBody, RetryRequest, TaskView,
};
use cherga_client::{Client, Error, HandlerError, Worker, testing};
use cherga_core::{Millis, NewPayload, NewTask, QueueName, QueueSettingsPatch, Task, TaskId};
use cherga_server::ServerConfig;
use cherga_store::{
    Ack, AckedAndLeased, Changed, Claim, Enqueued, ListTasks, Nack, QueueInfo, Store, StoreError, TickReport,
};
use cherga_store_sqlite::{Options, SqliteStore};
use serde_json::json;
use tokio::sync::{Notify, oneshot};

/// A server running for one test; stopped gracefully by [`Server::stop`].
struct Server {
    client: Client,
    shutdown: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        Self::start_counting().await.0
    }

    /// A server whose store counts the acks it is asked to store, by how they came.
    async fn start_counting() -> (Self, Arc<AckCounts>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        // Durability is not under test here; skipping fsync keeps the suite fast.
        let options = Options { durable: false, ..Options::in_dir(dir.path()) };
        let counts = Arc::new(AckCounts::default());
        let store = Arc::new(Counting {
            inner: SqliteStore::open(options).expect("store opens"),
            counts: Arc::clone(&counts),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local address");
        let config = ServerConfig::unauthenticated(1 << 20, 64 << 10);
        let (shutdown, stop) = oneshot::channel::<()>();
        let served = tokio::spawn(cherga_server::serve(listener, store, config, async {
            stop.await.ok();
        }));
        let client = Client::new(&format!("http://{address}")).expect("client");
        (Self { client, shutdown: Some(shutdown), served, _dir: dir }, counts)
    }

    async fn stop(mut self) {
        self.shutdown.take().map(|tx| tx.send(()));
        self.served.await.expect("server task").expect("server ran");
    }
}

/// Acks the store was asked to store: alone (`complete`) or with a lease.
#[derive(Default)]
struct AckCounts {
    alone: AtomicUsize,
    with_lease: AtomicUsize,
}

/// The SQLite store, counting acks on the way through.
struct Counting {
    inner: SqliteStore,
    counts: Arc<AckCounts>,
}

impl Store for Counting {
    async fn enqueue(
        &self,
        queue: QueueName,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> Result<Changed<Vec<Result<Enqueued, StoreError>>>, StoreError> {
        self.inner.enqueue(queue, tasks, now).await
    }
    async fn claim(&self, claim: Claim, now: Millis) -> Result<Changed<Vec<Task>>, StoreError> {
        self.inner.claim(claim, now).await
    }
    async fn complete(
        &self,
        acks: Vec<Ack>,
        now: Millis,
    ) -> Result<Changed<Vec<Result<Task, StoreError>>>, StoreError> {
        self.counts.alone.fetch_add(acks.len(), Ordering::SeqCst);
        self.inner.complete(acks, now).await
    }
    async fn complete_and_claim(
        &self,
        acks: Vec<Ack>,
        claim: Claim,
        now: Millis,
    ) -> Result<Changed<AckedAndLeased>, StoreError> {
        self.counts.with_lease.fetch_add(acks.len(), Ordering::SeqCst);
        self.inner.complete_and_claim(acks, claim, now).await
    }
    async fn fail(&self, nack: Nack, now: Millis) -> Result<Changed<Task>, StoreError> {
        self.inner.fail(nack, now).await
    }
    async fn extend_lease(
        &self,
        id: TaskId,
        token: String,
        ms: i64,
        now: Millis,
    ) -> Result<Changed<Task>, StoreError> {
        self.inner.extend_lease(id, token, ms, now).await
    }
    async fn cancel(&self, id: TaskId, now: Millis) -> Result<Changed<Task>, StoreError> {
        self.inner.cancel(id, now).await
    }
    async fn retry_dead(
        &self,
        id: TaskId,
        new_payload: Option<NewPayload>,
        now: Millis,
    ) -> Result<Changed<Task>, StoreError> {
        self.inner.retry_dead(id, new_payload, now).await
    }
    async fn act_on_tasks(
        &self,
        step: cherga_store::BulkStep,
        now: Millis,
    ) -> Result<Changed<cherga_store::BulkPage>, StoreError> {
        self.inner.act_on_tasks(step, now).await
    }
    async fn delete_queue(&self, queue: QueueName, now: Millis) -> Result<Changed<()>, StoreError> {
        self.inner.delete_queue(queue, now).await
    }
    async fn get_task(&self, id: TaskId) -> Result<Task, StoreError> {
        self.inner.get_task(id).await
    }
    async fn list_tasks(&self, list: ListTasks) -> Result<Vec<Task>, StoreError> {
        self.inner.list_tasks(list).await
    }
    async fn put_queue(
        &self,
        queue: QueueName,
        patch: QueueSettingsPatch,
        now: Millis,
    ) -> Result<Changed<QueueInfo>, StoreError> {
        self.inner.put_queue(queue, patch, now).await
    }
    async fn get_queue(&self, queue: QueueName) -> Result<QueueInfo, StoreError> {
        self.inner.get_queue(queue).await
    }
    async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.inner.list_queues().await
    }
    async fn tick(&self, now: Millis) -> Result<Changed<TickReport>, StoreError> {
        self.inner.tick(now).await
    }
    async fn close(&self) {
        self.inner.close().await;
    }
}

fn request(kind: &str, payload: serde_json::Value) -> EnqueueRequest {
    EnqueueRequest::new(kind, &payload).expect("payload encodes")
}

/// A request for a task that is dead after one failed attempt, so that tests see
/// final states without waiting for backoff.
fn one_shot(kind: &str, payload: serde_json::Value) -> EnqueueRequest {
    EnqueueRequest { max_attempts: Some(1), ..request(kind, payload) }
}

fn result_of(task: &TaskView) -> serde_json::Value {
    task.result
        .as_ref()
        .map_or(serde_json::Value::Null, |raw| serde_json::from_str(raw.get()).expect("result JSON"))
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(answer: Result<T, Error>, code: &str) {
    match answer {
        Err(error) => assert_eq!(error.code(), Some(code), "{error}"),
        Ok(value) => panic!("expected error {code}, got {value:?}"),
    }
}

fn lease(max: usize) -> LeaseRequest {
    LeaseRequest {
        max: Some(max),
        wait_ms: Some(0),
        lease_ms: Some(30_000),
        worker: Some("test".into()),
        acks: Vec::new(),
    }
}

#[tokio::test]
async fn every_endpoint_round_trips() {
    let server = Server::start().await;
    let client = &server.client;
    assert_eq!(client.health().await.unwrap().status, "ok");

    // Enqueue with an idempotency key: the second time is a replay of the first.
    let first =
        client.enqueue("pay", &request("charge", json!({"order": 1})), Some("order-1")).await.unwrap();
    assert!(!first.replayed);
    assert_eq!((first.task.state.as_str(), first.task.kind.as_str()), ("ready", "charge"));
    let again =
        client.enqueue("pay", &request("charge", json!({"order": 1})), Some("order-1")).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.task.id, first.task.id);
    let reused = client.enqueue("pay", &request("charge", json!({"order": 2})), Some("order-1")).await;
    assert!(reused.as_ref().is_err_and(Error::is_idempotency_key_reused), "{reused:?}");

    // Lease, extend, ack; the same ack again succeeds; a stale token is refused.
    let leased = client.lease("pay", &lease(10)).await.unwrap().tasks;
    assert_eq!(leased.len(), 1);
    let token = leased[0].lease.as_ref().expect("leased task has a lease").token.clone();
    let extended = client
        .extend(&first.task.id, &ExtendRequest { lease: token.clone(), lease_ms: Some(60_000) })
        .await
        .unwrap();
    assert!(extended.lease_expires_at.is_some());
    let ack = AckRequest {
        lease: token.clone(),
        result: Some(serde_json::value::to_raw_value(&json!(7)).unwrap()),
    };
    let acked = client.ack(&first.task.id, &ack).await.unwrap();
    assert_eq!((acked.state.as_str(), result_of(&acked)), ("succeeded", json!(7)));
    assert_eq!(client.ack(&first.task.id, &ack).await.unwrap().state, "succeeded");
    let stale = NackRequest { lease: "not-the-lease".into(), error: None, retry_in_ms: None, dead: false };
    let refused = client.nack(&first.task.id, &stale).await;
    assert!(refused.as_ref().is_err_and(Error::is_lease_lost), "{refused:?}");
    assert_eq!(result_of(&client.get_task(&first.task.id).await.unwrap()), json!(7));

    // Batch enqueue: one item per task, a bad one fails alone.
    let batch = EnqueueBatchRequest {
        tasks: vec![request("a", json!(1)), request("", json!(2)), one_shot("b", json!(3))],
    };
    let results = client.enqueue_batch("pay", &batch).await.unwrap().results;
    assert_eq!(results.iter().map(|item| item.status).collect::<Vec<_>>(), [201, 400, 201]);

    // Nack to dead, retry by hand, cancel.
    let leased = client.lease("pay", &lease(10)).await.unwrap().tasks;
    assert_eq!(leased.len(), 2);
    let dead_one = leased.iter().find(|task| task.kind == "b").unwrap();
    let nack = NackRequest {
        lease: dead_one.lease.as_ref().unwrap().token.clone(),
        error: Some("boom".into()),
        retry_in_ms: None,
        dead: true,
    };
    let dead = client.nack(&dead_one.id, &nack).await.unwrap();
    assert_eq!((dead.state.as_str(), dead.last_error.as_deref()), ("dead", Some("boom")));
    assert_code(client.cancel(&dead.id).await, "invalid_state");
    let fixed =
        RetryRequest { payload: Some(serde_json::value::to_raw_value(&json!({"fixed": 3})).unwrap()) };
    let retried = client.retry_with(&dead.id, &fixed).await.unwrap();
    assert_eq!((retried.state.as_str(), retried.payload.get()), ("ready", r#"{"fixed":3}"#));
    let edit = retried.history[0].payload_edit.as_ref().expect("the edit is in the history");
    assert_eq!((edit.at, edit.by.as_deref()), (retried.updated_at, None), "auth is off: no subject");
    assert_code(client.retry(&dead.id).await, "invalid_state");
    assert_eq!(client.cancel(&dead.id).await.unwrap().state, "cancelled");
    assert_eq!(client.cancel(&dead.id).await.unwrap().state, "cancelled");

    // Batch ack of the other leased task.
    let other = leased.iter().find(|task| task.kind == "a").unwrap();
    let acks = BatchAckRequest {
        acks: vec![BatchAck {
            id: other.id.clone(),
            lease: other.lease.as_ref().unwrap().token.clone(),
            result: None,
        }],
    };
    let results = client.ack_batch(&acks).await.unwrap().results;
    assert_eq!(results[0].status, 200);
    assert_eq!(results[0].task.as_ref().unwrap().state, "succeeded");

    // Listing, one page at a time and all at once.
    let page = client.list_tasks("pay", &ListQuery { limit: Some(2), ..ListQuery::default() }).await.unwrap();
    assert_eq!(page.tasks.len(), 2);
    let all = testing::all_tasks(client, "pay", None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(testing::all_tasks(client, "pay", Some("cancelled")).await.unwrap().len(), 1);

    // Queues.
    let settings =
        QueueSettingsBody { max_attempts: Some(3), concurrency: Some(Some(2)), ..Default::default() };
    let queue = client.put_queue("pay", &settings).await.unwrap();
    assert_eq!((queue.settings.max_attempts, queue.settings.concurrency), (3, Some(2)));
    assert_eq!(client.queue("pay").await.unwrap().counts.succeeded, 2);
    assert!(client.queues().await.unwrap().queues.iter().any(|queue| queue.name == "pay"));

    // Errors carry status and code.
    assert_code(client.get_task("nonsense").await, "invalid_task_id");
    let error = client.queue("bad name!").await.unwrap_err();
    assert_eq!(
        (error.status(), error.code(), error.is_transient()),
        (Some(400), Some("invalid_queue_name"), false)
    );
    server.stop().await;
}

/// Every answer with a whole task carries its attempts; the client reads them.
#[tokio::test]
async fn a_task_shows_each_attempt() {
    let server = Server::start().await;
    let client = &server.client;
    let task = client.enqueue("hist", &request("a", json!(1)), None).await.unwrap().task;
    assert!(task.history.is_empty(), "{task:?}");
    let first = client.lease("hist", &lease(1)).await.unwrap().tasks.pop().unwrap();
    let running = &first.history;
    assert_eq!(running.len(), 1, "{first:?}");
    assert_eq!((running[0].attempt, running[0].outcome.as_str()), (1, "running"));
    assert_eq!((running[0].worker.as_deref(), running[0].finished_at), (Some("test"), None));
    let nack = NackRequest {
        lease: first.lease.as_ref().unwrap().token.clone(),
        error: Some("boom".into()),
        retry_in_ms: Some(0),
        dead: false,
    };
    let failed = client.nack(&task.id, &nack).await.unwrap();
    assert_eq!(failed.history[0].outcome, "failed");
    assert_eq!(failed.history[0].error.as_deref(), Some("boom"));
    assert!(failed.history[0].finished_at >= Some(failed.history[0].started_at), "{failed:?}");
    // The timer makes the task ready again; a lease that waits gets it.
    let again = LeaseRequest { wait_ms: Some(10_000), worker: Some("other".into()), ..lease(1) };
    let second = client.lease("hist", &again).await.unwrap().tasks.pop().expect("the retry");
    let ack = AckRequest { lease: second.lease.as_ref().unwrap().token.clone(), result: None };
    client.ack(&task.id, &ack).await.unwrap();
    let done = client.get_task(&task.id).await.unwrap();
    let seen: Vec<(u32, Option<&str>, &str, Option<&str>)> = done
        .history
        .iter()
        .map(|a| (a.attempt, a.worker.as_deref(), a.outcome.as_str(), a.error.as_deref()))
        .collect();
    assert_eq!(seen, [(1, Some("test"), "failed", Some("boom")), (2, Some("other"), "succeeded", None)]);
    assert_eq!(done.history[1].started_at, second.history[1].started_at);
    server.stop().await;
}

#[tokio::test]
async fn drain_reports_each_outcome() {
    let server = Server::start().await;
    let client = &server.client;
    let kinds = ["ok", "unit", "fail", "dead", "panic", "unknown"];
    for (n, kind) in kinds.iter().enumerate() {
        client.enqueue("jobs", &one_shot(kind, json!(n)), None).await.unwrap();
    }
    // Retried tasks have more attempts left: a failure sends them back to waiting.
    let retried = client.enqueue("jobs", &request("fail", json!(99)), None).await.unwrap().task;
    let worker = Worker::builder(client.clone(), "jobs")
        .concurrency(3)
        .handler("ok", |task| async move { Ok(json!({"double": task.payload_as::<u64>()? * 2})) })
        .handler("unit", |_task| async { Ok(()) })
        .handler("fail", |_task| async { Err::<(), _>("card declined".into()) })
        .handler("dead", |_task| async { Err::<(), _>(HandlerError::new("no such card").dead()) })
        .handler("panic", |task| async move {
            assert!(task.attempts > 100, "handler bug");
            Ok(())
        })
        .build();
    let drained = testing::drain(&worker).await.unwrap();
    assert_eq!(drained, testing::Drained { acked: 2, nacked: 5, lost: 0 });

    let tasks = testing::all_tasks(client, "jobs", None).await.unwrap();
    let summary: Vec<(String, String, serde_json::Value, Option<String>)> = tasks
        .iter()
        .map(|task| (task.kind.clone(), task.state.clone(), result_of(task), task.last_error.clone()))
        .collect();
    let expected = [
        ("ok", "succeeded", json!({"double": 0}), None),
        ("unit", "succeeded", json!(null), None),
        ("fail", "dead", json!(null), Some("card declined")),
        ("dead", "dead", json!(null), Some("no such card")),
        ("panic", "dead", json!(null), Some("panicked: handler bug")),
        (
            "unknown",
            "dead",
            json!(null),
            Some(r#"worker "w" has no handler for kind "unknown" of queue "jobs""#),
        ),
        ("fail", "scheduled", json!(null), Some("card declined")),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(kind, state, result, error)| {
            (kind.to_string(), state.to_string(), result.clone(), error.map(str::to_owned))
        })
        .collect();
    // The default worker name depends on the host: compare the no-handler text without it.
    let summary: Vec<_> = summary
        .into_iter()
        .map(|(kind, state, result, error)| {
            let error = error.map(|e| match e.split_once(" has no handler") {
                Some((_, rest)) => format!("worker \"w\" has no handler{rest}"),
                None => e,
            });
            (kind, state, result, error)
        })
        .collect();
    assert_eq!(summary, expected);
    assert_eq!(client.get_task(&retried.id).await.unwrap().attempts, 1);
    server.stop().await;
}

/// Waits until `condition` holds, looking every 10 ms; panics naming `what` when
/// it still does not hold after `within`.
async fn wait_until<F, Fut>(within: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !condition().await {
        assert!(started.elapsed() < within, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `worker` until `done` is notified, and returns what `run` returned.
async fn run_until(worker: &Worker, done: Arc<Notify>) -> Result<(), Error> {
    worker.run(async move { done.notified().await }).await
}

#[tokio::test]
async fn worker_keeps_to_its_concurrency_and_finishes_everything() {
    let server = Server::start().await;
    let client = &server.client;
    let batch = EnqueueBatchRequest { tasks: (0..12).map(|n| request("slow", json!(n))).collect() };
    client.enqueue_batch("work", &batch).await.unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let most_running = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let worker = {
        let (running, most_running, finished, done) =
            (running.clone(), most_running.clone(), finished.clone(), done.clone());
        Worker::builder(client.clone(), "work")
            .concurrency(3)
            .wait(Duration::from_millis(200))
            .handler("slow", move |task| {
                let (running, most_running, finished, done) =
                    (running.clone(), most_running.clone(), finished.clone(), done.clone());
                async move {
                    let now_running = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most_running.fetch_max(now_running, Ordering::SeqCst);
                    // Held until three run at once (the most the worker may run),
                    // which this test must then see, and never more.
                    wait_until(Duration::from_secs(10), "three handlers running at once", || async {
                        most_running.load(Ordering::SeqCst) >= 3
                    })
                    .await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    if finished.fetch_add(1, Ordering::SeqCst) + 1 == 12 {
                        done.notify_one();
                    }
                    Ok(task.payload_as::<u64>()?)
                }
            })
            .build()
    };
    run_until(&worker, done).await.unwrap();
    assert_eq!(most_running.load(Ordering::SeqCst), 3);
    let succeeded = testing::all_tasks(client, "work", Some("succeeded")).await.unwrap();
    assert_eq!(succeeded.len(), 12, "run returns only after every outcome is reported");
    assert!(succeeded.iter().all(
        |task| result_of(task) == serde_json::from_str::<serde_json::Value>(task.payload.get()).unwrap()
    ));
    server.stop().await;
}

#[tokio::test]
async fn a_busy_worker_acks_each_task_with_its_next_lease() {
    let (server, acks) = Server::start_counting().await;
    let client = &server.client;
    let batch = EnqueueBatchRequest { tasks: (0..10).map(|n| request("step", json!(n))).collect() };
    client.enqueue_batch("busy", &batch).await.unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let worker = {
        let (finished, done) = (finished.clone(), done.clone());
        Worker::builder(client.clone(), "busy")
            .concurrency(1)
            .wait(Duration::from_millis(200))
            .handler("step", move |task| {
                let (finished, done) = (finished.clone(), done.clone());
                async move {
                    // The lease loop already waits for this one slot: this test's
                    // runtime has one thread, and the loop runs up to that wait
                    // before a handler it spawned gets to run.
                    if finished.fetch_add(1, Ordering::SeqCst) + 1 == 10 {
                        done.notify_one();
                    }
                    Ok(task.payload_as::<u64>()? * 2)
                }
            })
            .build()
    };
    run_until(&worker, done).await.unwrap();
    let succeeded = testing::all_tasks(client, "busy", Some("succeeded")).await.unwrap();
    assert_eq!(succeeded.len(), 10, "every outcome is stored before run returns");
    for task in &succeeded {
        let n: u64 = serde_json::from_str(task.payload.get()).unwrap();
        assert_eq!(result_of(task), json!(n * 2));
    }
    let (alone, with_lease) = (acks.alone.load(Ordering::SeqCst), acks.with_lease.load(Ordering::SeqCst));
    // Each ack but perhaps the last (handed over as shutdown began) rode on a lease.
    assert!(with_lease >= 9 && alone + with_lease == 10, "{alone} acks alone, {with_lease} with a lease");
    server.stop().await;
}

#[tokio::test]
async fn worker_extends_the_lease_of_a_long_handler() {
    let server = Server::start().await;
    let client = &server.client;
    let task = client.enqueue("long", &request("nap", json!(null)), None).await.unwrap().task;
    let done = Arc::new(Notify::new());
    let worker = {
        let (done, client) = (done.clone(), client.clone());
        Worker::builder(client.clone(), "long")
            .lease_duration(Duration::from_millis(300))
            .handler("nap", move |task| {
                let (done, client) = (done.clone(), client.clone());
                async move {
                    // Runs until its lease was renewed three times (every 100 ms),
                    // so past its first lease, which would have expired by then
                    // without the renewals.
                    let expiries = std::sync::Mutex::new(std::collections::HashSet::new());
                    wait_until(Duration::from_secs(10), "three renewals of the lease", || async {
                        let now = client.get_task(&task.id).await.expect("get the running task");
                        let expiry = now.lease_expires_at.expect("a running task has a lease");
                        let mut expiries = expiries.lock().unwrap();
                        expiries.insert(expiry.to_rfc3339());
                        expiries.len() >= 4
                    })
                    .await;
                    done.notify_one();
                    Ok("rested")
                }
            })
            .build()
    };
    run_until(&worker, done).await.unwrap();
    let task = client.get_task(&task.id).await.unwrap();
    assert_eq!((task.state.as_str(), task.attempts, result_of(&task)), ("succeeded", 1, json!("rested")));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_running_tasks_and_leases_no_more() {
    let server = Server::start().await;
    let client = &server.client;
    let first = client.enqueue("drain", &request("block", json!(1)), None).await.unwrap().task;
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let worker = {
        let (started, release) = (started.clone(), release.clone());
        Worker::builder(client.clone(), "drain")
            .concurrency(4)
            .wait(Duration::from_millis(500))
            .handler("block", move |_task| {
                let (started, release) = (started.clone(), release.clone());
                async move {
                    started.notify_one();
                    release.notified().await;
                    Ok("finished")
                }
            })
            .build()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        worker
            .run(async {
                stopped.await.ok();
            })
            .await
    });
    started.notified().await;
    stop.send(()).unwrap();
    // Shutdown has begun: a task enqueued now is not run. Either the worker noticed
    // the shutdown first and never leased it, or a lease answer crossed the shutdown
    // and the task was handed straight back.
    let second = client.enqueue("drain", &request("block", json!(2)), None).await.unwrap().task;
    release.notify_one();
    running.await.unwrap().unwrap();
    assert_eq!(client.get_task(&first.id).await.unwrap().state, "succeeded");
    let second = client.get_task(&second.id).await.unwrap();
    match second.attempts {
        0 => assert_eq!(second.state, "ready"),
        _ => {
            let error = second.last_error.as_deref().unwrap_or_default();
            assert!(error.contains("shut down before starting the task"), "{second:?}");
            assert!(matches!(second.state.as_str(), "ready" | "scheduled"), "{second:?}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn worker_stops_when_its_lease_requests_are_refused() {
    let server = Server::start().await;
    let worker = Worker::builder(server.client.clone(), "no spaces allowed").build();
    let error = worker.run(std::future::pending()).await.unwrap_err();
    assert_eq!(error.code(), Some("invalid_queue_name"), "{error}");
    server.stop().await;
}
