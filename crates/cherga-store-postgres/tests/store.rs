//! Integration tests of the PostgreSQL store: the shared conformance suite, each
//! test in a fresh schema of its own, then what only a shared database has to
//! show: several stores (nodes) on one schema racing for the same tasks, keys and
//! timers, notifications between them, migrations started at once, and lost
//! connections.
//!
//! The database comes from `CHERGA_TEST_POSTGRES_URL` (for example
//! `postgres://root@127.0.0.1:5432/test`). Without it every test skips
//! ([`cherga_store::testkit::postgres_url`]: it returns at once, and the skip is
//! counted as one by `test.sh`); CI sets it, and makes a skip a failure.

use cherga_core::{NewTask, QueueName, QueueSettingsPatch, Task, TaskId, TaskState};
use cherga_store::testkit::{Harness, T0};
use cherga_store::{Ack, Claim, Enqueued, ListTasks, Store, StoreError};
use cherga_store_postgres::{Options, PgStore};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `url` with one more query parameter.
fn with_param(url: &str, key: &str, value: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{key}={value}")
}

/// A fresh schema name: unique per test and per run.
fn fresh_schema() -> String {
    format!("cherga_t_{:016x}", fastrand::u64(..))
}

/// A schema of one test, dropped (with everything in it) when the value drops.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn fresh() -> Option<Self> {
        Some(Self { url: cherga_store::testkit::postgres_url()?, name: fresh_schema() })
    }

    /// Options for a store (a node) in this schema; `app` names its connections.
    fn options(&self, app: &str) -> Options {
        let url = with_param(&self.url, "application_name", app);
        Options { schema: Some(self.name.clone()), pool_size: 4, ..Options::new(&url) }
    }

    async fn open(&self, app: &str) -> PgStore {
        PgStore::open(self.options(app))
            .await
            .unwrap_or_else(|e| panic!("open a store in schema {} of {}: {e:?}", self.name, self.url))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A runtime of its own on a thread of its own: drop may run inside a test's
        // runtime, where blocking on another future is not allowed.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let client = admin(&url).await;
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).await
            })?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("could not drop test schema {}: {error}", self.name);
        }
    }
}

/// A plain client on the test database, for what the tests do behind the store's back.
async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// The conformance suite's harness: one schema, opened again on every `open`.
struct PgHarness {
    schema: Schema,
}

impl Harness for PgHarness {
    type Store = PgStore;

    async fn open(&mut self) -> PgStore {
        self.schema.open("cherga_conformance").await
    }
}

mod conformance {
    use super::{PgHarness, Schema};
    // Without a database the harness expression returns from the test at once.
    cherga_store::conformance_tests!(match Schema::fresh() {
        Some(schema) => PgHarness { schema },
        None => return,
    });
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn queue_name(name: &str) -> QueueName {
    QueueName::new(name).expect("valid test queue name")
}

fn new_task(kind: &str) -> NewTask {
    NewTask {
        kind: kind.to_owned(),
        payload: "{}".to_owned(),
        priority: 0,
        run_at: None,
        idempotency_key: None,
        group: None,
        max_attempts: None,
    }
}

fn token(task: &Task) -> String {
    task.lease.as_ref().unwrap_or_else(|| panic!("no lease: {task:?}")).token.as_str().to_owned()
}

async fn list_all<S: Store>(store: &S, queue: &str) -> Vec<Task> {
    let request = ListTasks {
        queue: queue_name(queue),
        filter: Default::default(),
        key: None,
        after: None,
        limit: 100_000,
    };
    store.list_tasks(request).await.unwrap_or_else(|e| panic!("list_tasks {queue}: {e:?}"))
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

/// Opens `n` stores (nodes) on one schema.
async fn nodes(schema: &Schema, n: usize) -> Vec<Arc<PgStore>> {
    let mut stores = Vec::new();
    for i in 0..n {
        stores.push(Arc::new(schema.open(&format!("cherga_node_{i}")).await));
    }
    stores
}

// ---------------------------------------------------------------------------
// Several nodes on one database.
// ---------------------------------------------------------------------------

/// Workers on three nodes race for grouped and ungrouped tasks of a queue with a
/// concurrency limit. Every task is delivered exactly once (no nacks, long
/// leases), no group ever has two tasks running, groups run in enqueue order, and
/// the queue never goes over its limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_nodes_keep_groups_limits_and_single_delivery() {
    let Some(schema) = Schema::fresh() else { return };
    let stores = nodes(&schema, 3).await;
    let limit = 4;
    let patch = QueueSettingsPatch { concurrency: Some(Some(limit)), ..Default::default() };
    stores[0]
        .put_queue(queue_name("race"), patch, T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("put_queue");
    let (n_groups, per_group, n_free) = (6, 20, 60);
    let mut batch = Vec::new();
    for i in 0..per_group {
        for g in 0..n_groups {
            batch.push(NewTask {
                payload: format!(r#"{{"g":{g},"i":{i}}}"#),
                group: Some(format!("g{g}")),
                ..new_task("step")
            });
        }
    }
    for i in 0..n_free {
        batch.push(NewTask { payload: format!(r#"{{"g":-1,"i":{i}}}"#), ..new_task("free") });
    }
    let total = batch.len();
    // Enqueued through all three nodes, in three slices, so numbering interleaves.
    let third = total.div_ceil(3);
    for (node, slice) in batch.chunks(third).enumerate() {
        let items = stores[node]
            .enqueue(queue_name("race"), slice.to_vec(), T0)
            .await
            .map(cherga_store::Changed::into_value)
            .expect("enqueue");
        assert!(items.iter().all(|i| matches!(i, Ok(Enqueued::Created(_)))), "{items:?}");
    }

    #[derive(Default)]
    struct Seen {
        running: usize,
        max_running: usize,
        running_groups: HashMap<String, usize>,
        order: HashMap<String, Vec<i64>>,
        delivered: HashSet<TaskId>,
        acked: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut workers = Vec::new();
    for w in 0..9 {
        let store = stores[w % 3].clone();
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            let mut idle_rounds = 0;
            loop {
                let claim = Claim {
                    queue: queue_name("race"),
                    max: 2,
                    lease_ms: Some(3_600_000),
                    worker: Some(format!("w{w}")),
                };
                let leased =
                    store.claim(claim, T0 + 1).await.map(cherga_store::Changed::into_value).expect("claim");
                if leased.is_empty() {
                    if seen.lock().unwrap().acked == total {
                        return;
                    }
                    idle_rounds += 1;
                    assert!(idle_rounds < 20_000, "worker {w} starved while tasks remain");
                    // A worker's poll interval: the tasks left are held by other workers.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                {
                    let mut s = seen.lock().unwrap();
                    for task in &leased {
                        assert!(s.delivered.insert(task.id), "task {} delivered twice", task.id);
                        s.running += 1;
                        s.max_running = s.max_running.max(s.running);
                        if let Some(group) = &task.group {
                            let n = s.running_groups.entry(group.clone()).or_default();
                            *n += 1;
                            assert_eq!(*n, 1, "two tasks of group {group} running at once");
                            let i: i64 = task
                                .payload
                                .split("\"i\":")
                                .nth(1)
                                .unwrap()
                                .trim_end_matches('}')
                                .parse()
                                .unwrap();
                            s.order.entry(group.clone()).or_default().push(i);
                        }
                    }
                }
                // Work a little (the work itself, 1-5 ms), so that leases overlap and
                // the limit is tested.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..6))).await;
                {
                    // Marked finished before the ack lands: the store frees the
                    // group and the slot only after.
                    let mut s = seen.lock().unwrap();
                    for task in &leased {
                        s.running -= 1;
                        if let Some(group) = &task.group {
                            *s.running_groups.get_mut(group).unwrap() -= 1;
                        }
                    }
                }
                let acks = leased
                    .iter()
                    .map(|t| Ack { task_id: t.id, token: token(t), result: Some("1".into()) })
                    .collect();
                let results =
                    store.complete(acks, T0 + 2).await.map(cherga_store::Changed::into_value).expect("ack");
                for result in &results {
                    assert!(result.is_ok(), "ack refused: {result:?}");
                }
                seen.lock().unwrap().acked += results.len();
            }
        }));
    }
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(120), worker).await.expect("workers finish").unwrap();
    }
    let max_running = {
        let s = seen.lock().unwrap();
        assert_eq!(s.delivered.len(), total);
        assert!(s.max_running <= limit as usize, "{} running at once with a limit of {limit}", s.max_running);
        assert!(s.max_running >= 2, "the leases never overlapped: the test proves nothing");
        for g in 0..n_groups {
            let order = &s.order[&format!("g{g}")];
            assert_eq!(order, &(0..per_group).collect::<Vec<_>>(), "group g{g} out of order");
        }
        s.max_running
    };
    let info = stores[1].get_queue(queue_name("race")).await.expect("get_queue");
    assert_eq!(info.count(TaskState::Succeeded), total as u64, "{info:?}");
    eprintln!("3 nodes, 9 workers: {total} tasks, at most {max_running} running at once");
}

/// Duplicates racing through three nodes, singly and in batches whose keys come in
/// opposite orders, make one task per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicates_through_several_nodes_make_one_task_per_key() {
    let Some(schema) = Schema::fresh() else { return };
    let stores = nodes(&schema, 3).await;
    let keys: Vec<String> = (0..20).map(|i| format!("pay-{i}")).collect();
    let mut producers = Vec::new();
    for p in 0..12 {
        let store = stores[p % 3].clone();
        let mut batch: Vec<NewTask> = keys
            .iter()
            .map(|k| NewTask {
                idempotency_key: Some(k.clone()),
                group: Some("g".into()),
                ..new_task("charge")
            })
            .collect();
        if p % 2 == 1 {
            batch.reverse();
        }
        producers.push(tokio::spawn(async move {
            if p % 4 == 0 {
                let mut out = Vec::new();
                for task in batch {
                    out.extend(
                        store
                            .enqueue(queue_name("pay"), vec![task], T0)
                            .await
                            .map(cherga_store::Changed::into_value)
                            .expect("enqueue"),
                    );
                }
                out
            } else {
                store
                    .enqueue(queue_name("pay"), batch, T0)
                    .await
                    .map(cherga_store::Changed::into_value)
                    .expect("batch enqueue")
            }
        }));
    }
    let mut id_of_key: HashMap<String, TaskId> = HashMap::new();
    let mut created = 0;
    for producer in producers {
        for item in producer.await.unwrap() {
            let (task, is_new) = match item {
                Ok(Enqueued::Created(task)) => (task, true),
                Ok(Enqueued::Replayed(task)) => (task, false),
                Err(e) => panic!("expected Created or Replayed, got {e:?}"),
            };
            created += usize::from(is_new);
            let key = task.idempotency_key.clone().expect("keyed");
            let id = *id_of_key.entry(key.clone()).or_insert(task.id);
            assert_eq!(id, task.id, "key {key} names two tasks");
        }
    }
    assert_eq!(created, keys.len(), "one task created per key");
    let stored = list_all(&*stores[2], "pay").await;
    assert_eq!(stored.len(), keys.len());
    // One group: exactly one head, so exactly one task leasable.
    let claim = Claim { queue: queue_name("pay"), max: 100, lease_ms: None, worker: None };
    assert_eq!(
        stores[0].claim(claim, T0).await.map(cherga_store::Changed::into_value).expect("claim").len(),
        1,
        "one task of the group at a time"
    );
}

/// Three nodes run the timers at once over many expired leases and due tasks:
/// each lease is expired once and each task promoted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timers_running_on_several_nodes_move_each_task_once() {
    let Some(schema) = Schema::fresh() else { return };
    let stores = nodes(&schema, 3).await;
    let patch = QueueSettingsPatch { max_attempts: Some(5), ..Default::default() };
    stores[0]
        .put_queue(queue_name("t"), patch, T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("put_queue");
    let n = 600;
    let batch: Vec<NewTask> = (0..n)
        .map(|i| NewTask { group: (i % 3 == 0).then(|| format!("g{}", i % 30)), ..new_task("x") })
        .collect();
    stores[0]
        .enqueue(queue_name("t"), batch, T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("enqueue");
    let claim = Claim { queue: queue_name("t"), max: 1000, lease_ms: Some(1_000), worker: None };
    let leased = stores[1].claim(claim, T0).await.map(cherga_store::Changed::into_value).expect("claim");
    let delayed: Vec<NewTask> =
        (0..n).map(|_| NewTask { run_at: Some(T0 + 500), ..new_task("later") }).collect();
    stores[2]
        .enqueue(queue_name("t"), delayed, T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("enqueue delayed");

    let mut tickers = Vec::new();
    for store in &stores {
        let store = store.clone();
        tickers.push(tokio::spawn(async move {
            store.tick(T0 + 2_000).await.map(cherga_store::Changed::into_value).expect("tick")
        }));
    }
    let (mut promoted, mut expired) = (0, 0);
    for ticker in tickers {
        let report = ticker.await.unwrap();
        promoted += report.promoted;
        expired += report.expired;
    }
    assert_eq!(expired, leased.len(), "every lease expired exactly once");
    assert_eq!(promoted, n, "every delayed task promoted exactly once");
    for task in list_all(&*stores[0], "t").await {
        assert!(task.attempts <= 1, "{task:?}");
        if task.kind == "x" && leased.iter().any(|l| l.id == task.id) {
            assert_eq!(task.state, TaskState::Scheduled, "{task:?}");
        }
    }
}

/// Opening many stores on a fresh schema at once migrates it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_at_once_migrate_once() {
    let Some(schema) = Schema::fresh() else { return };
    let schema = Arc::new(schema);
    let mut opening = Vec::new();
    for i in 0..6 {
        let schema = schema.clone();
        opening.push(tokio::spawn(async move { schema.open(&format!("cherga_start_{i}")).await }));
    }
    let mut stores = Vec::new();
    for open in opening {
        stores.push(open.await.expect("open"));
    }
    let client = admin(&schema.url).await;
    let versions: Vec<i32> = client
        .query(&format!("SELECT version FROM {}.cherga_schema ORDER BY version", schema.name), &[])
        .await
        .expect("read versions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let expected: Vec<i32> = (1..=versions.len() as i32).collect();
    assert_eq!(versions, expected, "each version applied once, none skipped");
    let created = stores[3]
        .enqueue(queue_name("q"), vec![new_task("a")], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("enqueue");
    assert!(matches!(created[0], Ok(Enqueued::Created(_))));
    for store in stores {
        store.close().await;
    }
}

/// Tasks stored before schema version 3 have no history: the migration adds the
/// columns, the attempt of a task running then started, as far as the store
/// knows, at its last change, and the attempts that end are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_stored_before_histories_get_one_from_then_on() {
    let Some(schema) = Schema::fresh() else { return };
    let store = schema.open("cherga_v2").await;
    store
        .enqueue(queue_name("old"), vec![new_task("a"), new_task("b")], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("enqueue");
    let claim = Claim { queue: queue_name("old"), max: 2, lease_ms: Some(60_000), worker: Some("w".into()) };
    let leased = store.claim(claim, T0 + 5).await.map(cherga_store::Changed::into_value).expect("claim");
    assert_eq!(leased.len(), 2);
    let updated = store
        .extend_lease(leased[1].id, token(&leased[1]), 60_000, T0 + 7)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("extend");
    store.close().await;
    // Back to version 2, as a store of that version left it.
    let client = admin(&schema.url).await;
    client
        .batch_execute(&format!(
            "ALTER TABLE {0}.tasks DROP COLUMN leased_at, DROP COLUMN history; \
             DROP TABLE {0}.events, {0}.event_horizon, {0}.payload_schemas; \
             DELETE FROM {0}.cherga_schema WHERE version >= 3",
            schema.name
        ))
        .await
        .expect("make the schema version 2");

    let store = schema.open("cherga_v3").await;
    let a = store.get_task(leased[0].id).await.expect("a");
    assert_eq!(a, leased[0], "a lease that was not extended started at the task's last change");
    let b = store.get_task(leased[1].id).await.expect("b");
    let entry = b.attempt_history().last().expect("the running attempt");
    assert_eq!((entry.attempt, entry.started_at, entry.worker), (1, updated.updated_at, Some("w")));
    let acked = store
        .complete(vec![Ack { task_id: b.id, token: token(&b), result: None }], T0 + 10)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("ack")
        .pop()
        .expect("one")
        .expect("acked");
    assert_eq!(acked.history.len(), 1);
    assert_eq!(acked.history.entries()[0].finished_at, T0 + 10);
    assert_eq!(store.get_task(b.id).await.expect("b"), acked, "the history is stored from then on");
    store.close().await;
}

// ---------------------------------------------------------------------------
// Notifications and lost connections.
// ---------------------------------------------------------------------------

/// Registers a callback that sends each woken queue on a channel.
fn listen(store: &PgStore) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    store.on_remote_work(Arc::new(move |queue: &str| {
        let _ = sender.send(queue.to_owned());
    }));
    receiver
}

/// Waits for `queue` among the woken queues.
async fn woken(receiver: &mut tokio::sync::mpsc::UnboundedReceiver<String>, queue: &str, within: Duration) {
    let found = tokio::time::timeout(within, async {
        while let Some(name) = receiver.recv().await {
            if name == queue {
                return;
            }
        }
        panic!("the callback was dropped");
    })
    .await;
    assert!(found.is_ok(), "queue {queue} not woken within {within:?}");
}

/// Work made leasable on one node wakes the other node's callback: an enqueue, an
/// ack that frees a group, a tick that promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn work_on_one_node_wakes_the_other() {
    let Some(schema) = Schema::fresh() else { return };
    let stores = nodes(&schema, 2).await;
    // The listener wakes every queue when it connects: once it has woken this
    // one, it listens, and what follows can only reach it as a notification.
    stores[0].enqueue(queue_name("connected"), vec![new_task("x")], T0).await.unwrap();
    let mut wakes = listen(&stores[1]);
    woken(&mut wakes, "connected", Duration::from_secs(5)).await;
    while wakes.try_recv().is_ok() {}

    stores[0]
        .enqueue(queue_name("n"), vec![NewTask { group: Some("g".into()), ..new_task("a") }], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .unwrap();
    woken(&mut wakes, "n", Duration::from_secs(2)).await;

    stores[0]
        .enqueue(queue_name("n"), vec![NewTask { group: Some("g".into()), ..new_task("b") }], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .unwrap();
    let claim = Claim { queue: queue_name("n"), max: 10, lease_ms: None, worker: None };
    let leased = stores[0].claim(claim, T0).await.map(cherga_store::Changed::into_value).unwrap();
    assert_eq!(leased.len(), 1);
    while wakes.try_recv().is_ok() {}
    stores[0]
        .complete(vec![Ack { task_id: leased[0].id, token: token(&leased[0]), result: None }], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .unwrap();
    woken(&mut wakes, "n", Duration::from_secs(2)).await;

    stores[0]
        .enqueue(queue_name("later"), vec![NewTask { run_at: Some(T0 + 10), ..new_task("c") }], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .unwrap();
    stores[0].tick(T0 + 10).await.map(cherga_store::Changed::into_value).unwrap();
    woken(&mut wakes, "later", Duration::from_secs(2)).await;
}

/// Terminating every backend of a node (as a database restart or failover does)
/// costs it nothing it acknowledged: calls in the gap fail with `Unavailable` or
/// succeed on a fresh connection, later calls succeed, and the listener comes
/// back and hears the other node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_recovers_when_its_connections_are_killed() {
    let Some(schema) = Schema::fresh() else { return };
    let app = format!("cherga_kill_{:08x}", fastrand::u32(..));
    let victim = Arc::new(schema.open(&app).await);
    let other = schema.open("cherga_other").await;
    let mut wakes = listen(&victim);
    let client = admin(&schema.url).await;

    let created = victim
        .enqueue(queue_name("k"), vec![new_task("before")], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .unwrap();
    let before = created[0].as_ref().unwrap().task().clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Enqueues the producer had acknowledged so far.
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acknowledged_so_far = || progress.load(std::sync::atomic::Ordering::Relaxed);
    // A producer keeps writing through the victim while its connections die.
    let producer = {
        let (victim, stop, progress) = (victim.clone(), stop.clone(), progress.clone());
        tokio::spawn(async move {
            let (mut ok, mut unavailable, mut acknowledged) = (0, 0, Vec::new());
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                match victim
                    .enqueue(queue_name("k"), vec![new_task(&format!("t{i}"))], T0)
                    .await
                    .map(cherga_store::Changed::into_value)
                {
                    Ok(items) => {
                        ok += 1;
                        progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        acknowledged.push(items[0].as_ref().unwrap().task().id);
                    }
                    Err(StoreError::Unavailable(_)) => unavailable += 1,
                    Err(other) => panic!("expected Ok or Unavailable, got {other:?}"),
                }
            }
            (ok, unavailable, acknowledged)
        })
    };
    wait_until(Duration::from_secs(10), "the producer's first enqueues", || async {
        acknowledged_so_far() >= 10
    })
    .await;
    for round in 0..3 {
        // Each round once the node has connected again and serves.
        let what = format!("connections of the node to kill (round {round})");
        wait_until(Duration::from_secs(10), &what, || async {
            let killed = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await
                .expect("terminate");
            !killed.is_empty()
        })
        .await;
        let from = acknowledged_so_far();
        wait_until(Duration::from_secs(10), "an enqueue after the kill", || async {
            acknowledged_so_far() > from
        })
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, unavailable, acknowledged) = producer.await.unwrap();
    eprintln!("while connections were killed: {ok} enqueues succeeded, {unavailable} got Unavailable");

    // The node serves again without being reopened, and lost nothing it acknowledged.
    let after = victim
        .enqueue(queue_name("k"), vec![new_task("after")], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("enqueue after");
    assert!(matches!(after[0], Ok(Enqueued::Created(_))));
    assert_eq!(victim.get_task(before.id).await.expect("get").id, before.id);
    let stored: HashSet<TaskId> = list_all(&other, "k").await.iter().map(|t| t.id).collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged enqueue {id} lost");
    }
    // The listener reconnected: work on the other node wakes the victim again. (A
    // new queue: only a notification, or the wake-up of every queue when the
    // listener connects again, can wake it.)
    other.enqueue(queue_name("k2"), vec![new_task("x")], T0).await.unwrap();
    woken(&mut wakes, "k2", Duration::from_secs(5)).await;
}

/// A database that cannot be reached gives `Unavailable` with a clear message,
/// quickly, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable() {
    // Port 1 on localhost refuses connections.
    let options =
        Options { schema: Some(fresh_schema()), ..Options::new("postgres://cherga@127.0.0.1:1/none") };
    let started = std::time::Instant::now();
    match PgStore::open(options).await {
        Err(StoreError::Unavailable(e)) => {
            assert!(e.to_string().contains("cannot connect to PostgreSQL"), "{e}");
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let bad = Options { schema: Some("Bad-Name".into()), ..Options::new("postgres://x@127.0.0.1/y") };
    assert!(matches!(PgStore::open(bad).await, Err(StoreError::Unavailable(_))));
}

// ---------------------------------------------------------------------------
// The event log across nodes.
// ---------------------------------------------------------------------------

/// Reads every event after `after` from `store`, page by page, until nothing is
/// left and nothing is pending (with a deadline).
async fn read_all_events(store: &PgStore, mut after: u64) -> Vec<cherga_store::Event> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    loop {
        let page = store.read_events(after, 500).await.expect("read events");
        if let Some(last) = page.events.last() {
            after = last.id;
        }
        let empty = page.events.is_empty();
        events.extend(page.events);
        if empty && !page.pending {
            return events;
        }
        if empty {
            assert!(std::time::Instant::now() < deadline, "events stayed pending for 30 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A transaction that began writing first but commits last: its events must
/// not be skipped by a reader that saw a later transaction's events first. The
/// later events stay unread (pending) until the earlier transaction ends; then
/// both are read, the earlier first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_late_is_read_before_later_ones() {
    let Some(schema) = Schema::fresh() else { return };
    let store = schema.open("cherga_events").await;
    // Behind the store's back: a transaction that writes an event row and waits.
    let slow = admin(&schema.url).await;
    slow.batch_execute(&format!("SET search_path = {}", schema.name)).await.expect("search path");
    let mut batch = cherga_store::events::EventBatch::default();
    let early = cherga_core::Transition {
        task_id: TaskId::new(T0, 1),
        queue: "slow".into(),
        kind: "early".into(),
        change: cherga_core::Change::Enqueued,
        from: None,
        to: Some(TaskState::Ready),
        attempt: 0,
        at: T0,
        due: None,
        payload_edited: false,
    };
    batch.push(&early);
    let record = batch.take();
    slow.batch_execute("BEGIN").await.expect("begin");
    slow.execute("INSERT INTO events (at, n, records) VALUES ($1, 1, $2)", &[&T0, &record])
        .await
        .expect("insert the early event");

    // The store commits a later transaction meanwhile.
    store.enqueue(queue_name("fast"), vec![new_task("late")], T0 + 1).await.expect("enqueue");
    let page = store.read_events(0, 100).await.expect("read");
    assert!(page.events.is_empty(), "nothing after the running transaction is read: {page:?}");
    assert!(page.pending, "the reader is told events are pending");

    slow.batch_execute("COMMIT").await.expect("commit");
    let kinds: Vec<String> =
        read_all_events(&store, 0).await.into_iter().map(|e| e.transition.kind).collect();
    assert_eq!(kinds, ["early", "late"], "the earlier transaction's event comes first");
}

/// Three nodes enqueue, lease and ack at once while a reader on one of them
/// follows the log, resuming after the last event it got each time. The reader
/// gets every event exactly once, in the order a fresh read from the start
/// gives, and the log holds every transition the calls reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_following_three_busy_nodes_misses_no_event() {
    let Some(schema) = Schema::fresh() else { return };
    let stores = nodes(&schema, 3).await;
    let reported = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, done) = (stores[0].clone(), done.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::Acquire);
                let page = store.read_events(after, 64).await.expect("read");
                if let Some(last) = page.events.last() {
                    after = last.id;
                }
                let empty = page.events.is_empty();
                seen.extend(page.events);
                if finished && empty && !page.pending {
                    return seen;
                }
                if empty {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let mut workers = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        let (store, reported) = (store.clone(), reported.clone());
        workers.push(tokio::spawn(async move {
            for round in 0..40 {
                let now = T0 + round;
                let tasks = (0..5).map(|i| new_task(&format!("n{n}-r{round}-{i}"))).collect();
                let enqueued = store.enqueue(queue_name("busy"), tasks, now).await.expect("enqueue");
                reported.lock().unwrap().extend(enqueued.effects.transitions);
                let claim = Claim { queue: queue_name("busy"), max: 5, lease_ms: Some(60_000), worker: None };
                let leased = store.claim(claim, now).await.expect("claim");
                reported.lock().unwrap().extend(leased.effects.transitions);
                let acks = leased
                    .value
                    .iter()
                    .map(|t| Ack { task_id: t.id, token: token(t), result: None })
                    .collect();
                let acked = store.complete(acks, now).await.expect("ack");
                reported.lock().unwrap().extend(acked.effects.transitions);
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
    // A claim skips tasks another node's claim holds locked, so some may be left
    // ready: lease and ack them too, so that every task has its three events.
    loop {
        let now = T0 + 40;
        let claim = Claim { queue: queue_name("busy"), max: 100, lease_ms: Some(60_000), worker: None };
        let leased = stores[0].claim(claim, now).await.expect("claim");
        if leased.value.is_empty() {
            break;
        }
        reported.lock().unwrap().extend(leased.effects.transitions);
        let acks =
            leased.value.iter().map(|t| Ack { task_id: t.id, token: token(t), result: None }).collect();
        let acked = stores[0].complete(acks, now).await.expect("ack");
        reported.lock().unwrap().extend(acked.effects.transitions);
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let followed = reader.await.expect("reader");
    let fresh = read_all_events(&stores[1], 0).await;

    let ids: Vec<u64> = followed.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "the follower saw ids in growing order, none twice");
    assert_eq!(followed, fresh, "the follower saw exactly what a read from the start sees");
    let key = |t: &cherga_core::Transition| (t.task_id, t.change);
    let mut logged: Vec<_> = fresh.iter().map(|e| key(&e.transition)).collect();
    let mut expected: Vec<_> = reported.lock().unwrap().iter().map(key).collect();
    logged.sort();
    expected.sort();
    assert_eq!(logged.len(), 3 * 40 * 5 * 3, "enqueued, leased and acked, for every task");
    assert_eq!(logged, expected, "the log holds every transition the calls reported, once");
}
