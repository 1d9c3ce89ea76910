//! A fixed store-level workload, without HTTP, for profiling the writer thread:
//! `tasks` tasks of 200 bytes enqueued in calls of 100, then (unless the mode is
//! `enqueue`) leased 100 at a time and acked in calls of 100, one call at a time.
//!
//! Instruction counts are repeatable whatever the machine is doing, so compare
//! builds with callgrind; the drain's share is the difference of the two modes:
//!
//! ```text
//! cargo build --profile profiling -p cherga-store-sqlite --example store_load
//! valgrind --tool=callgrind target/profiling/examples/store_load enqueue 20000
//! valgrind --tool=callgrind target/profiling/examples/store_load drain 20000
//! ```
//!
//! With a directory as third argument the database is kept there, and the mode
//! `reopen` opens it again, timing the rebuild of the index, and prints the
//! process's memory (the pending-tasks goal: 10 M tasks, RSS and restart time):
//!
//! ```text
//! target/profiling/examples/store_load enqueue 10000000 /tmp/pending
//! target/profiling/examples/store_load reopen 0 /tmp/pending
//! ```
//!
//! The mode `retry` makes every task dead (one attempt, nacked) and then times a
//! bulk retry of all of them, in steps of `BULK_BATCH` as the server runs it:
//!
//! ```text
//! target/release/examples/store_load retry 1000000
//! ```
//!
//! The mode `list` times the dashboard's reads of the queue (`list_tasks` pages:
//! the first, one by state, one in the middle, a search by kind that matches
//! three tasks, a search by key), the median of five of each, with the tasks in
//! memory right after the enqueue and again in their rows after a reopen:
//!
//! ```text
//! target/release/examples/store_load list 1000000
//! ```

use cherga_core::{NewTask, QueueName};
use cherga_store::{Ack, Claim, Store};
use cherga_store_sqlite::{Options, SqliteStore};
use std::time::Instant;

const BATCH: usize = 100;
/// Nacks in flight at once while `retry` makes its tasks dead: about one writer
/// batch, so that setting up a million dead tasks takes a few hundred commits.
const DEAD_BATCH: usize = 2000;

/// The allocator of the `cherga` binary, so that the counts are the server's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "drain".into());
    let tasks: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let kept = args.next().map(std::path::PathBuf::from);
    let dir = kept.clone().unwrap_or_else(tempfile_dir);
    let started = Instant::now();
    let store = SqliteStore::open(Options::in_dir(&dir)).expect("open the store");
    if mode == "reopen" {
        println!("open: {:.2?}, {}", started.elapsed(), memory());
        let info = store.get_queue(QueueName::new("load").expect("a valid name")).await.expect("the queue");
        println!("ready tasks: {}", info.count(cherga_core::TaskState::Ready));
        store.close().await;
        return;
    }
    let queue = QueueName::new("load").expect("a valid name");
    let now = 1_700_000_000_000;

    let started = Instant::now();
    for call in 0..tasks.div_ceil(BATCH) {
        let batch = (0..BATCH.min(tasks - call * BATCH))
            .map(|i| NewTask {
                kind: if mode == "list" && (call * BATCH + i) % (tasks / 3).max(1) == 5 {
                    "rare".into()
                } else {
                    "load".into()
                },
                payload: payload(call * BATCH + i),
                priority: 0,
                run_at: None,
                idempotency_key: (mode == "list" && (call * BATCH + i) % 1000 == 7)
                    .then(|| format!("key-{}", call * BATCH + i)),
                group: None,
                max_attempts: (mode == "retry").then_some(1),
            })
            .collect();
        for result in store
            .enqueue(queue.clone(), batch, now)
            .await
            .map(cherga_store::Changed::into_value)
            .expect("enqueue")
        {
            result.expect("enqueued");
        }
    }
    let enqueued = started.elapsed();
    println!("enqueue: {tasks} tasks in {enqueued:.2?}, {}", memory());
    if mode == "enqueue" {
        store.close().await;
        if kept.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return;
    }

    if mode == "list" {
        list_times(&store, &queue, tasks, "in memory").await;
        store.close().await;
        let started = Instant::now();
        let store = SqliteStore::open(Options::in_dir(&dir)).expect("reopen the store");
        println!("reopen: {:.2?}", started.elapsed());
        list_times(&store, &queue, tasks, "in rows").await;
        store.close().await;
        if kept.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return;
    }

    if mode == "retry" {
        bulk_retry(store, queue, tasks, now).await;
        if kept.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return;
    }

    let started = Instant::now();
    let mut drained = 0;
    loop {
        let claim =
            Claim { queue: queue.clone(), max: BATCH, lease_ms: Some(300_000), worker: Some("w".into()) };
        let leased = store.claim(claim, now).await.map(cherga_store::Changed::into_value).expect("claim");
        if leased.is_empty() {
            break;
        }
        let acks = leased
            .iter()
            .map(|t| Ack {
                task_id: t.id,
                token: t.lease.as_ref().expect("leased").token.as_str().to_owned(),
                result: None,
            })
            .collect();
        for result in
            store.complete(acks, now).await.map(cherga_store::Changed::into_value).expect("complete")
        {
            result.expect("acked");
        }
        drained += leased.len();
    }
    assert_eq!(drained, tasks, "every task drained once");
    println!("drain: {drained} tasks in {:.2?}", started.elapsed());
    store.close().await;
    if kept.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Times pages of `list_tasks` as the dashboard asks for them.
async fn list_times(store: &SqliteStore, queue: &QueueName, tasks: usize, label: &str) {
    use cherga_store::{ListTasks, TaskFilter};
    let page = |filter: TaskFilter, key: Option<String>, after: Option<cherga_core::TaskId>| ListTasks {
        queue: queue.clone(),
        filter,
        key,
        after,
        limit: 50,
    };
    let all = store.list_tasks(page(TaskFilter::default(), None, None)).await.expect("list");
    // A task in the middle of the queue: its id has the sequence number of the
    // first task's plus half the queue.
    let first = all[0].id;
    let middle = cherga_core::TaskId::new(first.created_at(), first.seq() + tasks as u64 / 2);
    let cases: [(&str, ListTasks, usize); 5] = [
        ("first page", page(TaskFilter::default(), None, None), 50),
        ("ready, first page", page(TaskFilter::in_state(cherga_core::TaskState::Ready), None, None), 50),
        ("page in the middle", page(TaskFilter::default(), None, Some(middle)), 50),
        (
            "kind search (3 matches)",
            page(TaskFilter { kind: Some("rare".into()), ..TaskFilter::default() }, None, None),
            3,
        ),
        (
            "key search",
            page(TaskFilter::default(), Some(format!("key-{}", tasks / 2 / 1000 * 1000 + 7)), None),
            1,
        ),
    ];
    for (name, list, expected) in cases {
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let found = store.list_tasks(list.clone()).await.expect("list");
            times.push(started.elapsed());
            assert_eq!(found.len(), expected.min(tasks), "{name}");
        }
        times.sort();
        println!("list {label}, {name}: median {:.2?} (of 5; max {:.2?})", times[2], times[4]);
    }
}

/// Leases every task and nacks it (dead: one attempt), [`DEAD_BATCH`] nacks at
/// a time (they share group commits), then retries them all with bulk steps and
/// reports the time.
async fn bulk_retry(store: SqliteStore, queue: QueueName, tasks: usize, now: i64) {
    use cherga_store::{BULK_BATCH, BulkAction, BulkStep, Nack, TaskFilter};
    let store = std::sync::Arc::new(store);
    let started = Instant::now();
    let mut dead = 0;
    loop {
        let claim = Claim { queue: queue.clone(), max: DEAD_BATCH, lease_ms: Some(300_000), worker: None };
        let leased = store.claim(claim, now).await.map(cherga_store::Changed::into_value).expect("claim");
        if leased.is_empty() {
            break;
        }
        let mut nacks = tokio::task::JoinSet::new();
        for task in leased {
            let store = store.clone();
            let token = task.lease.as_ref().expect("leased").token.as_str().to_owned();
            let nack = Nack { task_id: task.id, token, error: None, retry_in_ms: None, dead: false };
            nacks.spawn(async move { store.fail(nack, now).await.expect("nack") });
        }
        while let Some(nacked) = nacks.join_next().await {
            assert_eq!(nacked.expect("joined").value.state, cherga_core::TaskState::Dead);
            dead += 1;
        }
    }
    println!("dead: {dead} tasks in {:.2?}", started.elapsed());
    let started = Instant::now();
    let (mut retried, mut after) = (0, None);
    loop {
        let step = BulkStep {
            queue: queue.clone(),
            action: BulkAction::Retry,
            filter: TaskFilter::default(),
            after,
            max: BULK_BATCH,
        };
        let page = store.act_on_tasks(step, now + 1).await.expect("retry step").value;
        retried += page.changed;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(retried, tasks, "every dead task retried once");
    println!("bulk retry: {retried} tasks in {:.2?}", started.elapsed());
    let info = store.get_queue(queue).await.expect("the queue");
    assert_eq!(info.count(cherga_core::TaskState::Ready) as usize, tasks);
    store.close().await;
}

/// The resident set now and at its peak, from `/proc/self/status` (Linux).
fn memory() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map_or("?".to_owned(), |l| l[name.len()..].trim().to_owned())
    };
    format!("RSS {} (peak {})", field("VmRSS:"), field("VmHWM:"))
}

/// A distinct JSON payload of 200 bytes.
fn payload(n: usize) -> String {
    let head = format!("{{\"n\":{n},\"pad\":\"");
    format!("{head}{}\"}}", "x".repeat(200 - head.len() - 2))
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cherga-store-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}
