//! A fixed store-level workload, without HTTP, for profiling the writer thread:
//! `tasks` tasks of 200 bytes enqueued in calls of 100, then (unless the mode is
//! `enqueue`) leased 100 at a time and acked in calls of 100, one call at a time.
//!
//! Instruction counts are repeatable whatever the machine is doing, so compare
//! builds with callgrind; the drain's share is the difference of the two modes:
//!
//! ```text
//! cargo build --release -p cherga-store-sqlite --example store_load
//! valgrind --tool=callgrind target/release/examples/store_load enqueue 20000
//! valgrind --tool=callgrind target/release/examples/store_load drain 20000
//! ```

use cherga_core::{NewTask, QueueName};
use cherga_store::{Ack, Claim, Store};
use cherga_store_sqlite::{Options, SqliteStore};
use std::time::Instant;

const BATCH: usize = 100;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "drain".into());
    let tasks: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let dir = tempfile_dir();
    let store = SqliteStore::open(Options::in_dir(&dir)).expect("open the store");
    let queue = QueueName::new("load").expect("a valid name");
    let now = 1_700_000_000_000;

    let started = Instant::now();
    for call in 0..tasks.div_ceil(BATCH) {
        let batch = (0..BATCH.min(tasks - call * BATCH))
            .map(|i| NewTask {
                kind: "load".into(),
                payload: payload(call * BATCH + i),
                priority: 0,
                run_at: None,
                idempotency_key: None,
                group: None,
                max_attempts: None,
            })
            .collect();
        for result in store.enqueue(queue.clone(), batch, now).await.expect("enqueue") {
            result.expect("enqueued");
        }
    }
    let enqueued = started.elapsed();
    println!("enqueue: {tasks} tasks in {enqueued:.2?}");
    if mode == "enqueue" {
        return;
    }

    let started = Instant::now();
    let mut drained = 0;
    loop {
        let claim =
            Claim { queue: queue.clone(), max: BATCH, lease_ms: Some(300_000), worker: Some("w".into()) };
        let leased = store.claim(claim, now).await.expect("claim");
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
        for result in store.complete(acks, now).await.expect("complete") {
            result.expect("acked");
        }
        drained += leased.len();
    }
    assert_eq!(drained, tasks, "every task drained once");
    println!("drain: {drained} tasks in {:.2?}", started.elapsed());
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
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
