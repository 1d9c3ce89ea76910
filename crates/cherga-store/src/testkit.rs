//! The store conformance suite: the behaviour every [`Store`] adapter must show,
//! written once against the trait and run by each adapter against itself.
//!
//! An adapter implements [`Harness`] (how to open its store over fresh data, and
//! how to open it again over the same data) and expands
//! [`conformance_tests!`](crate::conformance_tests) in its integration tests. The
//! macro makes one `#[tokio::test]` per case, so a failure names the case; each
//! case also exists as a `pub async fn` here that takes the harness. The SQLite
//! store's `tests/store.rs` is a complete example; in short:
//!
//! ```text
//! struct Fresh { dir: tempfile::TempDir }
//! impl cherga_store::testkit::Harness for Fresh {
//!     type Store = MyStore;
//!     async fn open(&mut self) -> MyStore { MyStore::open(self.dir.path()).unwrap() }
//! }
//! mod conformance {
//!     use super::*;
//!     cherga_store::conformance_tests!(Fresh { dir: tempfile::tempdir().unwrap() });
//! }
//! ```
//!
//! Time is a parameter: every case uses fixed fake times counted from [`T0`] and
//! never sleeps. Where a case asserts exact retry times it sets the queue's backoff
//! jitter to 0, so the store's randomness cannot move them.
//!
//! What the suite allows a store, and what it pins down:
//! - tasks become ready only through [`Store::tick`]: a delayed task or a retry in
//!   backoff is not claimable before a tick at or after its `run_at` promotes it;
//! - a store may run its retention purge at most once per second of `now`, so the
//!   purge cases space their ticks more than a second apart;
//! - payloads, results and errors are stored verbatim, byte for byte;
//! - task ids sort in enqueue order, within one millisecond too.

use crate::{
    Ack, BulkAction, BulkStep, Changed, Claim, Enqueued, EventId, EventPage, ListTasks, Nack, QueueInfo,
    Revocation, SchemaChange, SchemaVersion, Store, StoreError, TaskFilter, TickReport,
};
use cherga_core::{
    AttemptOutcome, Backoff, Change, History, Millis, NewPayload, NewTask, QueueName, QueueSettings,
    QueueSettingsPatch, Refusal, Task, TaskId, TaskState,
};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

/// The suite's fixed "now": 2023-11-14T22:13:20Z. Cases count time from here.
pub const T0: Millis = 1_700_000_000_000;

/// How the suite gets a store.
pub trait Harness {
    type Store: Store;

    /// Opens the store over this harness's data: empty the first time, and the same
    /// data every later time. Before a later call the suite has closed and dropped
    /// the store it opened before.
    fn open(&mut self) -> impl Future<Output = Self::Store>;

    /// Opens the store again over its data as a crash of `store` would leave it
    /// (the power lost now, say), which every `Ok` the store answered survives.
    /// By default a clean close and [`Harness::open`]; a store that recovers
    /// from a crash differently from a close (the embedded store replays its
    /// journal) should open a copy of its files taken while `store` runs.
    fn crash(&mut self, store: Self::Store) -> impl Future<Output = Self::Store> {
        async move {
            store.close().await;
            drop(store);
            self.open().await
        }
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each running the case
/// against a harness built by evaluating `$harness` anew (so every test gets fresh
/// data). The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@cases $harness;
            enqueue_round_trips_every_field,
            queue_is_created_on_first_use_with_defaults,
            idempotency_replays_the_same_request,
            idempotency_refuses_a_reused_key,
            idempotency_keys_are_per_queue,
            idempotency_duplicates_in_one_batch_create_one_task,
            idempotency_key_expires_after_its_window,
            concurrent_duplicate_enqueues_create_one_task,
            claim_orders_by_priority_then_run_at_then_enqueue_order,
            delayed_task_is_claimable_only_after_tick_promotes_it,
            claim_sets_lease_and_attempts,
            ack_stores_result_and_replays,
            ack_refuses_wrong_token_and_unknown_task,
            nack_schedules_retry_with_backoff,
            nack_honours_retry_in_ms,
            nack_dead_then_retry_dead,
            nack_after_max_attempts_is_dead,
            expired_lease_returns_task_and_fences_old_token,
            extend_lease_moves_expiry,
            a_lease_ends_at_its_expiry_before_any_tick,
            group_runs_one_task_at_a_time_in_enqueue_order,
            concurrency_limit_holds,
            complete_and_claim_acks_first_then_leases,
            paused_queue_leases_nothing,
            cancel_scheduled_and_ready_is_idempotent,
            cancel_running_or_finished_is_refused,
            list_tasks_filters_and_pages,
            list_tasks_searches_by_kind_group_and_key,
            put_queue_validates_and_keeps_settings,
            get_queue_and_list_queues,
            queue_stats_count_and_find_the_oldest_ready_task,
            retention_purges_finished_tasks,
            retention_keeps_tasks_whose_key_is_in_window,
            retention_holds_across_a_reopen_and_a_retry,
            a_purged_tasks_number_is_not_given_again,
            reopen_keeps_every_task_and_queue,
            reopen_honours_leases_and_rebuilds_index,
            history_records_an_ack,
            history_records_nacks_and_is_kept_by_a_retry,
            history_ends_an_expired_attempt_when_its_lease_ran_out,
            history_survives_a_reopen_and_a_crash,
            history_keeps_the_first_attempt_and_the_latest,
            retry_dead_with_a_new_payload_records_the_edit,
            close_refuses_later_calls,
            revocations_are_listed_until_they_expire,
            revocations_survive_a_reopen,
            payload_schemas_are_versioned_per_queue,
            payload_schemas_survive_a_reopen_and_a_crash,
            every_change_reports_its_transitions,
            the_event_log_holds_every_transition_in_order,
            the_event_log_forgets_events_past_its_retention,
            bulk_retry_moves_the_matching_dead_tasks,
            bulk_cancel_leaves_running_tasks_alone,
            bulk_purge_and_queue_deletion,
        );
    };
    (@cases $harness:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::testkit::$case($harness).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// PostgreSQL tests without a database: skipped, and counted as skipped.
// ---------------------------------------------------------------------------

/// Names the PostgreSQL database where tests may create schemas of their own,
/// e.g. `postgres://root@127.0.0.1:5432/test`.
pub const POSTGRES_URL_VAR: &str = "CHERGA_TEST_POSTGRES_URL";
/// Set (to anything but `0`), no test may skip: one that would skip for want of
/// [`POSTGRES_URL_VAR`] fails instead (and `test.sh` fails when it counts a
/// skipped test). CI sets it.
pub const NO_SKIP_VAR: &str = "CHERGA_TEST_NO_SKIP";
/// Names a file each skipped test appends one line to (`test.sh` sets it, and
/// counts the lines as skipped rather than passed).
pub const SKIPS_FILE_VAR: &str = "CHERGA_TEST_SKIPS_FILE";

/// The test database's URL, or `None` when [`POSTGRES_URL_VAR`] is unset or
/// empty: the calling test then returns at once. libtest has no outcome for a
/// test that decides at run time to skip (it reports it as passed), so the skip
/// is also written to the file [`SKIPS_FILE_VAR`] names, with the test's name;
/// with [`NO_SKIP_VAR`] set this panics instead.
pub fn postgres_url() -> Option<String> {
    postgres_url_in(&|name| std::env::var(name).ok())
}

/// Records that the calling test skips for `reason` (a tool it needs is
/// missing, say) and returns; the test then returns at once. As for
/// [`postgres_url`]: the skip is written to the file [`SKIPS_FILE_VAR`] names,
/// and with [`NO_SKIP_VAR`] set this panics instead.
pub fn skip(reason: &str) {
    skip_in(&|name| std::env::var(name).ok(), reason);
}

fn skip_in(env: &dyn Fn(&str) -> Option<String>, reason: &str) {
    // libtest runs each test on a thread named after it.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("(unnamed test)");
    // The test binary, without the hash cargo appends (`e2e-0123456789abcdef`).
    let binary = std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
                name.to_owned()
            }
            _ => stem,
        })
        .unwrap_or_default();
    if env(NO_SKIP_VAR).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test}: {reason}, and {NO_SKIP_VAR} is set: this test must run, not skip");
    }
    eprintln!("skipped: {reason}");
    if let Some(path) = env(SKIPS_FILE_VAR).filter(|path| !path.is_empty()) {
        use std::io::Write as _;
        // One write of one line in append mode: the tests of every thread and
        // test binary of a run share the file.
        let line = format!("{binary} {test}: {reason}\n");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .unwrap_or_else(|e| panic!("recording the skip of {test} in {path}: {e}"));
    }
}

/// [`postgres_url`] with the environment as a parameter.
fn postgres_url_in(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(url) = env(POSTGRES_URL_VAR).filter(|url| !url.trim().is_empty()) {
        return Some(url);
    }
    skip_in(env, &format!("{POSTGRES_URL_VAR} not set"));
    None
}

// ---------------------------------------------------------------------------
// Helpers. Each panics with the operation, the queue and the time when the store
// fails where the case expects success, so a failure diagnoses itself.
// ---------------------------------------------------------------------------

/// `now` as an offset from [`T0`], for messages.
fn at(now: Millis) -> String {
    format!("T0{:+}", now - T0)
}

fn queue_name(name: &str) -> QueueName {
    QueueName::new(name).unwrap_or_else(|e| panic!("test queue name {name:?}: {e}"))
}

/// A task of `kind` with an empty object payload, priority 0, due now, no key, no
/// group, the queue's attempts.
fn task(kind: &str) -> NewTask {
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

fn keyed(kind: &str, key: &str) -> NewTask {
    NewTask { idempotency_key: Some(key.to_owned()), ..task(kind) }
}

fn grouped(kind: &str, group: &str, priority: i32) -> NewTask {
    NewTask { group: Some(group.to_owned()), priority, ..task(kind) }
}

fn prioritised(kind: &str, priority: i32) -> NewTask {
    NewTask { priority, ..task(kind) }
}

fn delayed(kind: &str, run_at: Millis) -> NewTask {
    NewTask { run_at: Some(run_at), ..task(kind) }
}

/// Backoff without jitter: attempt `n` waits `initial_ms * 2^(n-1)`, at most `max_ms`.
fn exact_backoff(initial_ms: i64, max_ms: i64) -> QueueSettingsPatch {
    QueueSettingsPatch {
        backoff_initial_ms: Some(initial_ms),
        backoff_max_ms: Some(max_ms),
        backoff_multiplier: Some(2.0),
        backoff_jitter: Some(0.0),
        ..QueueSettingsPatch::default()
    }
}

fn kinds(tasks: &[Task]) -> Vec<&str> {
    tasks.iter().map(|t| t.kind.as_str()).collect()
}

fn token(task: &Task) -> String {
    match &task.lease {
        Some(lease) => lease.token.as_str().to_owned(),
        None => panic!("task {:?} ({}) has no lease: {task:?}", task.kind, task.state),
    }
}

fn describe_counts(counts: [u64; 6]) -> String {
    TaskState::ALL.iter().zip(counts).map(|(state, n)| format!("{state}={n}")).collect::<Vec<_>>().join(" ")
}

#[track_caller]
fn assert_counts(info: &QueueInfo, expected: &[(TaskState, u64)]) {
    let mut want = [0u64; 6];
    for &(state, n) in expected {
        want[usize::from(state.code())] = n;
    }
    assert_eq!(
        info.counts,
        want,
        "counts of queue {}: got {}, want {}",
        info.name,
        describe_counts(info.counts),
        describe_counts(want)
    );
}

#[track_caller]
fn assert_lease_lost<T: Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Refused(Refusal::LeaseLost)) => {}
        other => panic!("{what}: expected Refused(LeaseLost), got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<T: Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::NotFound) => {}
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid_state<T: Debug>(result: Result<T, StoreError>, state: TaskState, what: &str) {
    match result {
        Err(StoreError::Refused(Refusal::InvalidState { state: got, .. })) if got == state => {}
        other => panic!("{what}: expected Refused(InvalidState {{ state: {state}, .. }}), got {other:?}"),
    }
}

/// An id no store has handed out: a sequence number far beyond any test's.
fn unknown_id() -> TaskId {
    TaskId::new(T0, 1 << 40)
}

/// Closes `store` and opens the harness's data again.
async fn reopen<H: Harness>(harness: &mut H, store: H::Store) -> H::Store {
    store.close().await;
    drop(store);
    harness.open().await
}

async fn enqueue<S: Store>(
    store: &S,
    queue: &str,
    new: NewTask,
    now: Millis,
) -> Result<Enqueued, StoreError> {
    let kind = new.kind.clone();
    let mut items =
        store.enqueue(queue_name(queue), vec![new], now).await.map(Changed::into_value).unwrap_or_else(|e| {
            panic!("enqueue {kind:?} into {queue} at {}: the call failed: {e:?}", at(now))
        });
    assert_eq!(items.len(), 1, "enqueue {kind:?} into {queue}: one task in, {} answers out", items.len());
    items.pop().expect("length checked")
}

async fn create<S: Store>(store: &S, queue: &str, new: NewTask, now: Millis) -> Task {
    let kind = new.kind.clone();
    match enqueue(store, queue, new, now).await {
        Ok(Enqueued::Created(task)) => task,
        other => panic!("enqueue {kind:?} into {queue} at {}: expected a new task, got {other:?}", at(now)),
    }
}

async fn claim_with<S: Store>(
    store: &S,
    queue: &str,
    max: usize,
    lease_ms: Option<i64>,
    now: Millis,
) -> Vec<Task> {
    let claim = Claim { queue: queue_name(queue), max, lease_ms, worker: Some("worker-1".to_owned()) };
    store
        .claim(claim, now)
        .await
        .map(Changed::into_value)
        .unwrap_or_else(|e| panic!("claim {max} from {queue} at {}: {e:?}", at(now)))
}

async fn claim<S: Store>(store: &S, queue: &str, max: usize, now: Millis) -> Vec<Task> {
    claim_with(store, queue, max, None, now).await
}

/// Claims exactly one task and checks it is the one of `kind`.
async fn claim_one<S: Store>(store: &S, queue: &str, kind: &str, now: Millis) -> Task {
    let mut leased = claim(store, queue, 1, now).await;
    assert_eq!(kinds(&leased), [kind], "claim 1 from {queue} at {}", at(now));
    leased.pop().expect("length checked")
}

async fn ack<S: Store>(
    store: &S,
    task_id: TaskId,
    token: &str,
    result: Option<&str>,
    now: Millis,
) -> Result<Task, StoreError> {
    let acks = vec![Ack { task_id, token: token.to_owned(), result: result.map(str::to_owned) }];
    let mut items = store
        .complete(acks, now)
        .await
        .map(Changed::into_value)
        .unwrap_or_else(|e| panic!("ack {task_id} at {}: the call failed: {e:?}", at(now)));
    assert_eq!(items.len(), 1, "ack of one task answered {} items", items.len());
    items.pop().expect("length checked")
}

/// Acks `task` with its current lease, expecting success.
async fn ack_ok<S: Store>(store: &S, task: &Task, result: Option<&str>, now: Millis) -> Task {
    ack(store, task.id, &token(task), result, now)
        .await
        .unwrap_or_else(|e| panic!("ack {:?} with its current lease at {}: {e:?}", task.kind, at(now)))
}

async fn nack<S: Store>(
    store: &S,
    task_id: TaskId,
    token: &str,
    retry_in_ms: Option<i64>,
    dead: bool,
    now: Millis,
) -> Result<Task, StoreError> {
    let nack = Nack { task_id, token: token.to_owned(), error: Some("boom".to_owned()), retry_in_ms, dead };
    store.fail(nack, now).await.map(Changed::into_value)
}

/// Nacks `task` with its current lease, expecting success.
async fn nack_ok<S: Store>(
    store: &S,
    task: &Task,
    retry_in_ms: Option<i64>,
    dead: bool,
    now: Millis,
) -> Task {
    nack(store, task.id, &token(task), retry_in_ms, dead, now)
        .await
        .unwrap_or_else(|e| panic!("nack {:?} with its current lease at {}: {e:?}", task.kind, at(now)))
}

async fn get<S: Store>(store: &S, task_id: TaskId) -> Task {
    store.get_task(task_id).await.unwrap_or_else(|e| panic!("get_task {task_id}: {e:?}"))
}

async fn info<S: Store>(store: &S, queue: &str) -> QueueInfo {
    store.get_queue(queue_name(queue)).await.unwrap_or_else(|e| panic!("get_queue {queue}: {e:?}"))
}

async fn tick<S: Store>(store: &S, now: Millis) -> TickReport {
    store.tick(now).await.map(Changed::into_value).unwrap_or_else(|e| panic!("tick at {}: {e:?}", at(now)))
}

async fn put<S: Store>(store: &S, queue: &str, patch: QueueSettingsPatch, now: Millis) -> QueueInfo {
    store
        .put_queue(queue_name(queue), patch.clone(), now)
        .await
        .map(Changed::into_value)
        .unwrap_or_else(|e| panic!("put_queue {queue} {patch:?}: {e:?}"))
}

async fn list<S: Store>(
    store: &S,
    queue: &str,
    state: Option<TaskState>,
    after: Option<TaskId>,
    limit: usize,
) -> Vec<Task> {
    let filter = state.map(TaskFilter::in_state).unwrap_or_default();
    let request = ListTasks { queue: queue_name(queue), filter, key: None, after, limit };
    store.list_tasks(request.clone()).await.unwrap_or_else(|e| panic!("list_tasks {request:?}: {e:?}"))
}

async fn list_all<S: Store>(store: &S, queue: &str) -> Vec<Task> {
    list(store, queue, None, None, 10_000).await
}

async fn list_queues<S: Store>(store: &S) -> Vec<QueueInfo> {
    store.list_queues().await.unwrap_or_else(|e| panic!("list_queues: {e:?}"))
}

// ---------------------------------------------------------------------------
// Enqueue.
// ---------------------------------------------------------------------------

/// Every field given at enqueue comes back from `enqueue` and from `get_task`.
pub async fn enqueue_round_trips_every_field<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let full = NewTask {
        kind: "send_email".to_owned(),
        payload: r#"{"to":"a@example.com","n":[1,2.5,null], "text":"привіт \"world\""}"#.to_owned(),
        priority: 7,
        run_at: None,
        idempotency_key: Some("order-1".to_owned()),
        group: Some("customer-42".to_owned()),
        max_attempts: Some(3),
    };
    let created = create(&store, "mail", full.clone(), T0).await;
    assert_eq!(created.queue, "mail");
    assert_eq!(created.kind, full.kind);
    assert_eq!(created.payload, full.payload, "the payload must be stored verbatim");
    assert_eq!(created.priority, 7);
    assert_eq!(created.run_at, T0, "a task without run_at is due at its enqueue time");
    assert_eq!(created.idempotency_key.as_deref(), Some("order-1"));
    assert_eq!(created.group.as_deref(), Some("customer-42"));
    assert_eq!(created.max_attempts, 3);
    assert_eq!(created.attempts, 0);
    assert_eq!(created.state, TaskState::Ready);
    assert_eq!(created.result, None);
    assert_eq!(created.last_error, None);
    assert_eq!(created.lease, None);
    assert_eq!((created.created_at, created.updated_at, created.finished_at), (T0, T0, None));
    assert_eq!(
        get(&store, created.id).await,
        created,
        "get_task must return the task exactly as enqueue did"
    );

    let later = create(&store, "mail", delayed("later", T0 + 60_000), T0 + 1).await;
    assert_eq!((later.state, later.run_at), (TaskState::Scheduled, T0 + 60_000), "{later:?}");
    let overdue = create(&store, "mail", delayed("overdue", T0 - 5_000), T0 + 2).await;
    assert_eq!((overdue.state, overdue.run_at), (TaskState::Ready, T0 - 5_000), "{overdue:?}");
    assert_eq!(
        overdue.max_attempts,
        QueueSettings::defaults().max_attempts,
        "max_attempts comes from the queue"
    );
    assert_eq!(get(&store, later.id).await, later);
    assert_eq!(get(&store, overdue.id).await, overdue);
    assert!(created.id < later.id && later.id < overdue.id, "ids sort in enqueue order across milliseconds");
    let same_ms: Vec<NewTask> = (0..20).map(|i| task(&format!("same-{i}"))).collect();
    let items = store
        .enqueue(queue_name("same"), same_ms, T0 + 3)
        .await
        .map(Changed::into_value)
        .expect("batch enqueue");
    let ids: Vec<TaskId> = items.iter().map(|item| item.as_ref().expect("created").task().id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids of one millisecond sort in enqueue order: {ids:#?}");

    let queue = info(&store, "mail").await;
    assert_eq!(queue.name, "mail");
    assert_eq!(
        queue.settings,
        QueueSettings::defaults(),
        "a queue created on first use has the default settings"
    );
    assert_counts(&queue, &[(TaskState::Ready, 2), (TaskState::Scheduled, 1)]);
    assert_not_found(store.get_task(unknown_id()).await, "get_task of an id never handed out");
}

/// Enqueue and claim both create an unknown queue with the defaults; reads do not.
pub async fn queue_is_created_on_first_use_with_defaults<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    assert_not_found(store.get_queue(queue_name("fresh")).await, "get_queue before any use");
    assert_not_found(
        store
            .list_tasks(ListTasks {
                queue: queue_name("fresh"),
                filter: TaskFilter::default(),
                key: None,
                after: None,
                limit: 10,
            })
            .await,
        "list_tasks of a queue never used",
    );
    assert_not_found(
        store.get_queue(queue_name("fresh")).await,
        "get_queue after list_tasks (reads create nothing)",
    );
    assert!(claim(&store, "fresh", 5, T0).await.is_empty(), "an empty queue leases nothing");
    let fresh = info(&store, "fresh").await;
    assert_eq!(fresh.settings, QueueSettings::defaults());
    assert_counts(&fresh, &[]);
    create(&store, "other", task("a"), T0).await;
    assert_counts(&info(&store, "other").await, &[(TaskState::Ready, 1)]);
    let names: Vec<String> = list_queues(&store).await.into_iter().map(|q| q.name).collect();
    assert_eq!(names, ["fresh", "other"]);
}

// ---------------------------------------------------------------------------
// Idempotency.
// ---------------------------------------------------------------------------

/// The same key with the same request returns the existing task, as it is now.
pub async fn idempotency_replays_the_same_request<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let request = NewTask { payload: r#"{"amount":100}"#.to_owned(), ..keyed("charge", "pay-1") };
    let first = create(&store, "payments", request.clone(), T0).await;

    // A client retrying after a timeout computes a new run_at from its delay: run_at
    // is not part of what the key identifies.
    let retry = NewTask { run_at: Some(T0 + 5_000), ..request.clone() };
    match enqueue(&store, "payments", retry, T0 + 4_000).await {
        Ok(Enqueued::Replayed(task)) => {
            assert_eq!(task, first, "a replay returns the existing task unchanged")
        }
        other => panic!("same key, same request: expected Replayed, got {other:?}"),
    }

    let leased = claim_one(&store, "payments", "charge", T0 + 5_000).await;
    let acked = ack_ok(&store, &leased, Some(r#"{"charge_id":"ch_1"}"#), T0 + 6_000).await;
    match enqueue(&store, "payments", request, T0 + 7_000).await {
        Ok(Enqueued::Replayed(task)) => {
            assert_eq!(task, acked, "a replay shows the task's state and result as they are now");
            assert_eq!(task.result.as_deref(), Some(r#"{"charge_id":"ch_1"}"#));
        }
        other => panic!("same key after the task succeeded: expected Replayed, got {other:?}"),
    }
    assert_eq!(list_all(&store, "payments").await.len(), 1, "replays create no task");
    assert_counts(&info(&store, "payments").await, &[(TaskState::Succeeded, 1)]);
}

/// The same key with a different request is refused and names the existing task.
pub async fn idempotency_refuses_a_reused_key<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let request = NewTask { payload: r#"{"amount":100}"#.to_owned(), ..keyed("charge", "pay-1") };
    let first = create(&store, "payments", request.clone(), T0).await;
    let different = [
        ("payload", NewTask { payload: r#"{"amount":200}"#.to_owned(), ..request.clone() }),
        ("kind", NewTask { kind: "refund".to_owned(), ..request.clone() }),
        ("priority", NewTask { priority: 1, ..request.clone() }),
        ("group", NewTask { group: Some("g".to_owned()), ..request.clone() }),
        ("max_attempts", NewTask { max_attempts: Some(2), ..request.clone() }),
    ];
    for (field, new) in different {
        match enqueue(&store, "payments", new, T0 + 1).await {
            Err(StoreError::KeyReused(id)) => {
                assert_eq!(id, first.id, "KeyReused names the task that holds the key")
            }
            other => panic!("same key, different {field}: expected KeyReused, got {other:?}"),
        }
    }
    match enqueue(&store, "payments", request, T0 + 2).await {
        Ok(Enqueued::Replayed(task)) => {
            assert_eq!(task.id, first.id, "a refused request must not take the key over")
        }
        other => panic!("the original request after refusals: expected Replayed, got {other:?}"),
    }
    assert_eq!(kinds(&list_all(&store, "payments").await), ["charge"], "refusals create no task");
}

/// A key belongs to its queue: the same key elsewhere is a different task.
pub async fn idempotency_keys_are_per_queue<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let a = create(&store, "a", keyed("job", "k"), T0).await;
    let b = create(&store, "b", keyed("job", "k"), T0).await;
    assert_ne!(a.id, b.id);
    for (queue, id) in [("a", a.id), ("b", b.id)] {
        match enqueue(&store, queue, keyed("job", "k"), T0 + 1).await {
            Ok(Enqueued::Replayed(task)) => {
                assert_eq!(task.id, id, "replay in {queue} returns {queue}'s task")
            }
            other => panic!("replay in {queue}: expected Replayed, got {other:?}"),
        }
    }
    // A different request under the same key in yet another queue is not a reuse.
    let c = create(&store, "c", NewTask { priority: 9, ..keyed("other", "k") }, T0 + 2).await;
    assert_eq!(c.queue, "c");
}

/// Duplicates inside one batch behave like duplicates across calls.
pub async fn idempotency_duplicates_in_one_batch_create_one_task<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let batch = vec![
        keyed("a", "k1"),
        task("b"),
        keyed("a", "k1"),
        NewTask { payload: r#"{"x":1}"#.to_owned(), ..keyed("a", "k1") },
        keyed("d", "k2"),
    ];
    let items =
        store.enqueue(queue_name("batch"), batch, T0).await.map(Changed::into_value).expect("batch enqueue");
    assert_eq!(items.len(), 5, "one answer per item: {items:?}");
    let first = match &items[0] {
        Ok(Enqueued::Created(task)) => task.clone(),
        other => panic!("item 0: expected Created, got {other:?}"),
    };
    assert!(matches!(&items[1], Ok(Enqueued::Created(t)) if t.kind == "b"), "item 1: {:?}", items[1]);
    match &items[2] {
        Ok(Enqueued::Replayed(task)) => assert_eq!(task, &first, "item 2 replays item 0"),
        other => panic!("item 2 (duplicate of item 0): expected Replayed, got {other:?}"),
    }
    match &items[3] {
        Err(StoreError::KeyReused(id)) => assert_eq!(*id, first.id),
        other => panic!("item 3 (same key, other payload): expected KeyReused, got {other:?}"),
    }
    assert!(matches!(&items[4], Ok(Enqueued::Created(t)) if t.kind == "d"), "item 4: {:?}", items[4]);
    assert_eq!(kinds(&list_all(&store, "batch").await), ["a", "b", "d"]);
    assert_counts(&info(&store, "batch").await, &[(TaskState::Ready, 3)]);
}

/// After `dedup_window_ms` a key is forgotten and creates a new task, whether or
/// not a tick ran in between.
pub async fn idempotency_key_expires_after_its_window<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let window = 10_000;
    put(&store, "dedup", QueueSettingsPatch { dedup_window_ms: Some(window), ..Default::default() }, T0)
        .await;
    let first = create(&store, "dedup", keyed("job", "k1"), T0).await;
    let other = create(&store, "dedup", keyed("job", "k2"), T0).await;
    match enqueue(&store, "dedup", keyed("job", "k1"), T0 + window - 1).await {
        Ok(Enqueued::Replayed(task)) => assert_eq!(task.id, first.id),
        other => panic!("k1 just inside the window: expected Replayed, got {other:?}"),
    }

    // k1 without a tick in between.
    let second = create(&store, "dedup", keyed("job", "k1"), T0 + window + 1).await;
    assert_ne!(second.id, first.id, "a key past its window creates a new task");
    match enqueue(&store, "dedup", keyed("job", "k1"), T0 + window + 2).await {
        Ok(Enqueued::Replayed(task)) => assert_eq!(task.id, second.id, "the key now names the new task"),
        other => panic!("k1 again after renewal: expected Replayed of the new task, got {other:?}"),
    }

    // k2 with a tick in between, which may forget the key for good.
    tick(&store, T0 + window + 1_000).await;
    let other_again = create(&store, "dedup", keyed("job", "k2"), T0 + window + 1_001).await;
    assert_ne!(other_again.id, other.id);

    assert_eq!(get(&store, first.id).await.state, TaskState::Ready, "the old task itself is untouched");
    assert_counts(&info(&store, "dedup").await, &[(TaskState::Ready, 4)]);
}

/// Fifty producers racing with one key create exactly one task.
pub async fn concurrent_duplicate_enqueues_create_one_task<H: Harness>(mut harness: H) {
    let store = Arc::new(harness.open().await);
    let request = NewTask { payload: r#"{"amount":100}"#.to_owned(), ..keyed("charge", "pay-once") };
    let mut handles = Vec::new();
    for i in 0..50 {
        let store = Arc::clone(&store);
        let request = request.clone();
        handles.push(tokio::spawn(async move {
            store.enqueue(queue_name("pay"), vec![request], T0 + i).await.map(Changed::into_value)
        }));
    }
    let mut created = Vec::new();
    let mut replayed = Vec::new();
    for (i, handle) in handles.into_iter().enumerate() {
        let mut items = handle
            .await
            .unwrap_or_else(|e| panic!("producer {i} panicked: {e}"))
            .unwrap_or_else(|e| panic!("producer {i}: the call failed: {e:?}"));
        match items.pop() {
            Some(Ok(Enqueued::Created(task))) => created.push(task.id),
            Some(Ok(Enqueued::Replayed(task))) => replayed.push(task.id),
            other => panic!("producer {i}: expected Created or Replayed, got {other:?}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one producer creates the task; created {created:?}");
    assert_eq!(replayed.len(), 49);
    assert!(replayed.iter().all(|id| *id == created[0]), "every replay names the created task: {replayed:?}");
    assert_eq!(list_all(&*store, "pay").await.len(), 1);
    assert_counts(&info(&*store, "pay").await, &[(TaskState::Ready, 1)]);
}

// ---------------------------------------------------------------------------
// Claim.
// ---------------------------------------------------------------------------

/// Ready tasks are leased by priority, then `run_at`, then enqueue order.
pub async fn claim_orders_by_priority_then_run_at_then_enqueue_order<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    create(&store, "order", prioritised("a", 0), T0).await;
    create(&store, "order", prioritised("b", 5), T0).await;
    create(&store, "order", NewTask { run_at: Some(T0 - 1_000), ..prioritised("c", 0) }, T0).await;
    create(&store, "order", prioritised("d", 5), T0).await;
    create(&store, "order", NewTask { run_at: Some(T0 + 5_000), ..prioritised("e", 9) }, T0).await;
    create(&store, "order", prioritised("f", -3), T0).await;
    assert_eq!(kinds(&claim(&store, "order", 2, T0).await), ["b", "d"], "priority first, then enqueue order");
    assert_eq!(kinds(&claim(&store, "order", 10, T0).await), ["c", "a", "f"], "then the earlier run_at");
    assert!(claim(&store, "order", 10, T0).await.is_empty(), "the delayed task is not ready yet");
    assert_counts(&info(&store, "order").await, &[(TaskState::Running, 5), (TaskState::Scheduled, 1)]);
}

/// A delayed task is leased only after a tick at or after its `run_at`.
pub async fn delayed_task_is_claimable_only_after_tick_promotes_it<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let later = create(&store, "later", delayed("e", T0 + 5_000), T0).await;
    assert!(claim(&store, "later", 1, T0).await.is_empty());
    let report = tick(&store, T0 + 4_999).await;
    assert_eq!(report.promoted, 0, "{report:?}");
    assert_eq!(report.next_timer, Some(T0 + 5_000), "the next timer is the task's run_at: {report:?}");
    assert!(claim(&store, "later", 1, T0 + 4_999).await.is_empty());

    let ticked = store.tick(T0 + 5_000).await.expect("tick");
    let report = &ticked.value;
    assert_eq!(report.promoted, 1, "{report:?}");
    assert_eq!(
        ticked.effects.leasable(),
        [("later", 1)],
        "one task of the queue became leasable: {ticked:?}"
    );
    let promoted = get(&store, later.id).await;
    assert_eq!((promoted.state, promoted.run_at), (TaskState::Ready, T0 + 5_000), "{promoted:?}");
    assert_counts(&info(&store, "later").await, &[(TaskState::Ready, 1)]);

    let leased = claim_one(&store, "later", "e", T0 + 5_000).await;
    assert_eq!(leased.id, later.id);
    let report = tick(&store, T0 + 5_001).await;
    assert_eq!(
        report.next_timer,
        Some(T0 + 5_000 + 30_000),
        "the next timer is the lease's expiry: {report:?}"
    );
}

/// A claim leases with a fresh token, counts the attempt and honours `lease_ms`.
pub async fn claim_sets_lease_and_attempts<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "lease", QueueSettingsPatch { lease_ms: Some(7_000), ..Default::default() }, T0).await;
    let a = create(&store, "lease", task("a"), T0).await;
    create(&store, "lease", task("b"), T0).await;
    assert!(claim(&store, "lease", 0, T0).await.is_empty(), "max 0 leases nothing");

    let leased = claim_with(&store, "lease", 1, Some(5_000), T0 + 10).await;
    assert_eq!(kinds(&leased), ["a"]);
    let first = &leased[0];
    assert_eq!(first.id, a.id);
    assert_eq!(
        (first.state, first.attempts, first.updated_at),
        (TaskState::Running, 1, T0 + 10),
        "{first:?}"
    );
    let lease = first.lease.as_ref().expect("a leased task has a lease");
    assert_eq!(lease.expires_at, T0 + 10 + 5_000, "lease_ms of the claim");
    assert_eq!(lease.worker.as_deref(), Some("worker-1"));
    assert!(!lease.token.as_str().is_empty());
    assert_eq!(&get(&store, a.id).await, first, "get_task shows the lease");

    let second = claim_one(&store, "lease", "b", T0 + 20).await;
    let lease_b = second.lease.as_ref().expect("leased");
    assert_eq!(lease_b.expires_at, T0 + 20 + 7_000, "no lease_ms in the claim: the queue's lease_ms");
    assert_ne!(lease_b.token, lease.token, "every delivery has its own token");
    assert_counts(&info(&store, "lease").await, &[(TaskState::Running, 2)]);
}

// ---------------------------------------------------------------------------
// Ack.
// ---------------------------------------------------------------------------

/// An ack stores the result; the same ack again succeeds and changes nothing.
pub async fn ack_stores_result_and_replays<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    create(&store, "acks", task("a"), T0).await;
    let leased = claim_one(&store, "acks", "a", T0).await;
    let acked = ack_ok(&store, &leased, Some(r#"{"ok": true}"#), T0 + 10).await;
    assert_eq!(acked.state, TaskState::Succeeded, "{acked:?}");
    assert_eq!(acked.result.as_deref(), Some(r#"{"ok": true}"#), "the result is stored verbatim");
    assert_eq!((acked.finished_at, acked.updated_at, acked.attempts), (Some(T0 + 10), T0 + 10, 1));
    assert_eq!(get(&store, leased.id).await, acked);

    let again = ack(&store, leased.id, &token(&leased), Some(r#"{"ok": true}"#), T0 + 20).await;
    match again {
        Ok(task) => assert_eq!(task, acked, "a replayed ack returns the task as the first ack left it"),
        Err(e) => panic!("the same ack sent twice must succeed both times: {e:?}"),
    }
    let different = ack(&store, leased.id, &token(&leased), Some(r#"{"ok": false}"#), T0 + 30).await;
    match different {
        Ok(task) => assert_eq!(task.result, acked.result, "the first result is kept"),
        Err(e) => panic!("a second ack with the token that succeeded: expected success, got {e:?}"),
    }
    assert_eq!(get(&store, leased.id).await, acked, "replays change nothing");
    assert_counts(&info(&store, "acks").await, &[(TaskState::Succeeded, 1)]);
}

/// Only the current lease may ack; each item of a batch ack is answered on its own.
pub async fn ack_refuses_wrong_token_and_unknown_task<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    create(&store, "acks", task("x"), T0).await;
    create(&store, "acks", task("y"), T0).await;
    let z = create(&store, "acks", task("z"), T0).await;
    let leased = claim(&store, "acks", 2, T0).await;
    assert_eq!(kinds(&leased), ["x", "y"]);
    let (x, y) = (&leased[0], &leased[1]);

    assert_lease_lost(ack(&store, y.id, &token(x), None, T0 + 1).await, "ack y with x's token");
    let acks = vec![
        Ack { task_id: x.id, token: token(x), result: Some("1".to_owned()) },
        Ack { task_id: y.id, token: "1.bogus".to_owned(), result: None },
        Ack { task_id: z.id, token: token(x), result: None },
        Ack { task_id: unknown_id(), token: token(x), result: None },
    ];
    let mut items =
        store.complete(acks, T0 + 2).await.map(Changed::into_value).expect("batch ack").into_iter();
    assert_eq!(items.len(), 4);
    match items.next().expect("4 items") {
        Ok(task) => assert_eq!((task.state, task.result.as_deref()), (TaskState::Succeeded, Some("1"))),
        Err(e) => panic!("batch item 0 (x, right token): {e:?}"),
    }
    assert_lease_lost(items.next().expect("4 items"), "batch item 1 (y, bogus token)");
    assert_lease_lost(items.next().expect("4 items"), "batch item 2 (z is ready, not leased)");
    assert_not_found(items.next().expect("4 items"), "batch item 3 (unknown id)");

    assert_eq!(&get(&store, y.id).await, y, "a refused ack leaves the task as it was");
    assert_eq!(get(&store, z.id).await, z);
    assert_counts(
        &info(&store, "acks").await,
        &[(TaskState::Succeeded, 1), (TaskState::Running, 1), (TaskState::Ready, 1)],
    );
}

// ---------------------------------------------------------------------------
// Nack, dead letters, retries.
// ---------------------------------------------------------------------------

/// A nack schedules the task again after the backoff; it is leased again only
/// after a tick promotes it. The same nack again is a replay.
pub async fn nack_schedules_retry_with_backoff<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "retry", exact_backoff(1_000, 3_000), T0).await;
    let created = create(&store, "retry", task("a"), T0).await;

    let first = claim_one(&store, "retry", "a", T0).await;
    let failed = nack_ok(&store, &first, None, false, T0 + 100).await;
    assert_eq!(failed.state, TaskState::Scheduled, "{failed:?}");
    assert_eq!(failed.run_at, T0 + 100 + 1_000, "attempt 1 waits backoff_initial_ms");
    assert_eq!((failed.attempts, failed.last_error.as_deref(), failed.finished_at), (1, Some("boom"), None));
    assert_eq!(get(&store, created.id).await, failed);
    assert_counts(&info(&store, "retry").await, &[(TaskState::Scheduled, 1)]);

    match nack(&store, first.id, &token(&first), None, false, T0 + 200).await {
        Ok(task) => assert_eq!(task, failed, "a replayed nack changes nothing"),
        Err(e) => panic!("the same nack sent twice must succeed: {e:?}"),
    }
    assert_lease_lost(
        nack(&store, first.id, "1.bogus", None, false, T0 + 200).await,
        "nack with a bogus token",
    );
    assert_not_found(
        nack(&store, unknown_id(), "1.bogus", None, false, T0 + 200).await,
        "nack of an unknown id",
    );

    assert!(
        claim(&store, "retry", 1, T0 + 1_100).await.is_empty(),
        "not claimable before a tick promotes it"
    );
    assert_eq!(tick(&store, T0 + 1_100).await.promoted, 1);
    let second = claim_one(&store, "retry", "a", T0 + 1_100).await;
    assert_eq!(second.attempts, 2);
    assert_ne!(token(&second), token(&first));
    let failed = nack_ok(&store, &second, None, false, T0 + 2_000).await;
    assert_eq!(failed.run_at, T0 + 2_000 + 2_000, "attempt 2 waits twice as long");

    assert_eq!(tick(&store, T0 + 4_000).await.promoted, 1);
    let third = claim_one(&store, "retry", "a", T0 + 4_000).await;
    let failed = nack_ok(&store, &third, None, false, T0 + 5_000).await;
    assert_eq!(failed.run_at, T0 + 5_000 + 3_000, "attempt 3 is capped at backoff_max_ms");
    assert_eq!(failed.attempts, 3);
}

/// `retry_in_ms` replaces the backoff.
pub async fn nack_honours_retry_in_ms<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "retry", exact_backoff(1_000, 1_000), T0).await;
    create(&store, "retry", task("a"), T0).await;
    let leased = claim_one(&store, "retry", "a", T0).await;
    let failed = nack_ok(&store, &leased, Some(60_000), false, T0 + 10).await;
    assert_eq!((failed.state, failed.run_at), (TaskState::Scheduled, T0 + 60_010), "{failed:?}");
    assert_eq!(tick(&store, T0 + 60_009).await.promoted, 0, "not due yet");
    assert_eq!(tick(&store, T0 + 60_010).await.promoted, 1, "due at run_at");
    let again = claim_one(&store, "retry", "a", T0 + 60_010).await;
    assert_eq!(again.attempts, 2);
}

/// A nack with `dead` ends the task at once; `retry_dead` brings it back with the
/// queue's attempts on top of those made.
pub async fn nack_dead_then_retry_dead<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    create(&store, "dlq", task("a"), T0).await;
    let leased = claim_one(&store, "dlq", "a", T0).await;
    let dead = nack_ok(&store, &leased, None, true, T0 + 10).await;
    assert_eq!(
        (dead.state, dead.attempts, dead.finished_at),
        (TaskState::Dead, 1, Some(T0 + 10)),
        "{dead:?}"
    );
    assert_eq!(dead.last_error.as_deref(), Some("boom"));
    assert_eq!(get(&store, leased.id).await, dead);
    assert_counts(&info(&store, "dlq").await, &[(TaskState::Dead, 1)]);
    match nack(&store, leased.id, &token(&leased), None, true, T0 + 11).await {
        Ok(task) => assert_eq!(task, dead, "a replayed dead nack changes nothing"),
        Err(e) => panic!("the same nack sent twice must succeed: {e:?}"),
    }
    tick(&store, T0 + 100_000).await;
    assert!(claim(&store, "dlq", 1, T0 + 100_000).await.is_empty(), "a dead task is never leased");

    let retried = store
        .retry_dead(leased.id, None, T0 + 100_001)
        .await
        .map(Changed::into_value)
        .expect("retry_dead of a dead task");
    assert_eq!((retried.state, retried.run_at, retried.finished_at), (TaskState::Ready, T0 + 100_001, None));
    assert_eq!(retried.attempts, 1, "attempts never go back");
    assert_eq!(
        retried.max_attempts,
        1 + QueueSettings::defaults().max_attempts,
        "the queue's attempts on top"
    );
    assert_eq!(get(&store, leased.id).await, retried);
    assert_counts(&info(&store, "dlq").await, &[(TaskState::Ready, 1)]);

    let again = claim_one(&store, "dlq", "a", T0 + 100_002).await;
    assert_eq!(again.attempts, 2);
    assert_lease_lost(
        ack(&store, leased.id, &token(&leased), None, T0 + 100_003).await,
        "ack with the dead lease",
    );
    assert_invalid_state(
        store.retry_dead(leased.id, None, T0 + 100_003).await.map(Changed::into_value),
        TaskState::Running,
        "retry_dead of a running task",
    );
    assert_not_found(
        store.retry_dead(unknown_id(), None, T0).await.map(Changed::into_value),
        "retry_dead of an unknown id",
    );
    ack_ok(&store, &again, None, T0 + 100_004).await;
}

/// The attempt that uses up `max_attempts` ends dead, from a nack or from an expiry.
pub async fn nack_after_max_attempts_is_dead<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "limit", QueueSettingsPatch { max_attempts: Some(2), ..exact_backoff(1_000, 1_000) }, T0)
        .await;
    create(&store, "limit", task("a"), T0).await;
    let first = claim_one(&store, "limit", "a", T0).await;
    assert_eq!(nack_ok(&store, &first, None, false, T0 + 1).await.state, TaskState::Scheduled);
    tick(&store, T0 + 1_001).await;
    let second = claim_one(&store, "limit", "a", T0 + 1_001).await;
    let dead = nack_ok(&store, &second, None, false, T0 + 1_002).await;
    assert_eq!(
        (dead.state, dead.attempts, dead.finished_at),
        (TaskState::Dead, 2, Some(T0 + 1_002)),
        "{dead:?}"
    );

    // The task's own max_attempts wins over the queue's.
    create(&store, "limit", NewTask { max_attempts: Some(1), ..task("b") }, T0 + 2_000).await;
    let only = claim_one(&store, "limit", "b", T0 + 2_000).await;
    assert_eq!(nack_ok(&store, &only, None, false, T0 + 2_001).await.state, TaskState::Dead);

    // An expired lease counts as an attempt too.
    create(&store, "limit", NewTask { max_attempts: Some(1), ..task("c") }, T0 + 3_000).await;
    let c = claim_with(&store, "limit", 1, Some(1_000), T0 + 3_000).await;
    assert_eq!(kinds(&c), ["c"]);
    let report = tick(&store, T0 + 4_001).await;
    assert_eq!(report.expired, 1, "{report:?}");
    assert_eq!(get(&store, c[0].id).await.state, TaskState::Dead, "the expiry used the last attempt");
    assert_counts(&info(&store, "limit").await, &[(TaskState::Dead, 3)]);
}

// ---------------------------------------------------------------------------
// Leases.
// ---------------------------------------------------------------------------

/// A lease that runs out sends the task back; its token is fenced off for good.
pub async fn expired_lease_returns_task_and_fences_old_token<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "lease", exact_backoff(1_000, 1_000), T0).await;
    create(&store, "lease", task("a"), T0).await;
    let first = claim_with(&store, "lease", 1, Some(10_000), T0).await.pop().expect("one task");
    let old = token(&first);

    let report = tick(&store, T0 + 9_999).await;
    assert_eq!(report.expired, 0, "not expired before its expiry: {report:?}");
    assert_eq!(get(&store, first.id).await.state, TaskState::Running);

    let ticked = store.tick(T0 + 10_001).await.expect("tick");
    assert_eq!(ticked.value.expired, 1, "{ticked:?}");
    assert_eq!(ticked.effects.leasable(), [("lease", 1)], "the expiry freed a slot: {ticked:?}");
    let expired = get(&store, first.id).await;
    assert_eq!(expired.state, TaskState::Scheduled, "{expired:?}");
    assert_eq!(expired.run_at, T0 + 10_001 + 1_000, "an expiry backs off like a nack");
    assert_eq!((expired.attempts, expired.lease.as_ref()), (1, None), "an expiry clears the lease");
    assert!(expired.last_error.is_some(), "an expiry records why the attempt failed");
    assert_counts(&info(&store, "lease").await, &[(TaskState::Scheduled, 1)]);

    assert_lease_lost(ack(&store, first.id, &old, None, T0 + 10_002).await, "ack with the expired token");
    assert_lease_lost(
        nack(&store, first.id, &old, None, false, T0 + 10_002).await,
        "nack with the expired token",
    );
    assert_lease_lost(
        store.extend_lease(first.id, old.clone(), 10_000, T0 + 10_002).await.map(Changed::into_value),
        "extend with the expired token",
    );
    assert_eq!(get(&store, first.id).await, expired, "refusals change nothing");

    assert_eq!(tick(&store, T0 + 11_001).await.promoted, 1);
    let second = claim_one(&store, "lease", "a", T0 + 11_001).await;
    assert_eq!(second.attempts, 2, "attempts count deliveries");
    assert_ne!(token(&second), old, "a new delivery has a new token");
    assert_lease_lost(
        ack(&store, first.id, &old, None, T0 + 11_002).await,
        "ack with the first token after redelivery",
    );
    assert_eq!(get(&store, first.id).await, second, "the stale ack did not touch the new delivery");
    let acked = ack_ok(&store, &second, Some("2"), T0 + 11_003).await;
    assert_eq!(acked.state, TaskState::Succeeded);
}

/// Extending a lease moves its expiry; a tick at the old expiry leaves it running.
pub async fn extend_lease_moves_expiry<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    create(&store, "hb", task("a"), T0).await;
    let leased = claim_with(&store, "hb", 1, Some(10_000), T0).await.pop().expect("one task");
    let extended = store
        .extend_lease(leased.id, token(&leased), 20_000, T0 + 5_000)
        .await
        .map(Changed::into_value)
        .expect("extend with the current lease");
    let lease = extended.lease.as_ref().expect("still leased");
    assert_eq!(lease.expires_at, T0 + 25_000, "now + lease_ms");
    assert_eq!(lease.token.as_str(), token(&leased), "extending keeps the token");
    assert_eq!((extended.state, extended.attempts), (TaskState::Running, 1));
    assert_eq!(get(&store, leased.id).await, extended);

    assert_lease_lost(
        store.extend_lease(leased.id, "1.bogus".to_owned(), 1, T0 + 5_001).await.map(Changed::into_value),
        "extend with a bogus token",
    );
    assert_not_found(
        store.extend_lease(unknown_id(), token(&leased), 1, T0 + 5_001).await.map(Changed::into_value),
        "extend of an unknown id",
    );
    assert_eq!(get(&store, leased.id).await, extended, "refused extends change nothing");

    let report = tick(&store, T0 + 10_001).await;
    assert_eq!(report.expired, 0, "the old expiry no longer applies: {report:?}");
    assert_eq!(report.next_timer, Some(T0 + 25_000), "{report:?}");
    assert_eq!(get(&store, leased.id).await.state, TaskState::Running);
    let report = tick(&store, T0 + 25_001).await;
    assert_eq!(report.expired, 1, "the extended lease expires at its new time: {report:?}");
}

/// A lease ends at its `expires_at`, whether or not a tick has expired the task
/// yet: an ack (alone, in a batch or with a claim), a nack or an extend at or
/// after it is refused with `LeaseLost` and changes nothing, however late the
/// store's timers run. An ack or a nack applied in time and sent again later is a
/// replay and succeeds.
pub async fn a_lease_ends_at_its_expiry_before_any_tick<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    for kind in ["a", "b", "c", "d", "e"] {
        create(&store, "late", task(kind), T0).await;
    }
    let leased = claim_with(&store, "late", 5, Some(1_000), T0).await;
    assert_eq!(kinds(&leased), ["a", "b", "c", "d", "e"]);
    let [a, b, c, d, e] = &leased[..] else { unreachable!("five checked") };
    let expiry = T0 + 1_000;

    // A millisecond before the expiry, the lease still holds.
    let acked = ack_ok(&store, a, Some("1"), expiry - 1).await;
    let nacked = nack_ok(&store, b, Some(60_000), false, expiry - 1).await;

    // From the expiry on, with no tick in between, it holds no more.
    assert_lease_lost(ack(&store, c.id, &token(c), Some("2"), expiry).await, "ack at expires_at");
    assert_lease_lost(nack(&store, c.id, &token(c), None, false, expiry).await, "nack at expires_at");
    assert_lease_lost(
        store.extend_lease(c.id, token(c), 10_000, expiry).await.map(Changed::into_value),
        "extend at expires_at",
    );
    let batch = vec![
        Ack { task_id: d.id, token: token(d), result: Some("3".to_owned()) },
        Ack { task_id: a.id, token: token(a), result: Some("1".to_owned()) },
    ];
    let mut items =
        store.complete(batch, expiry + 460).await.map(Changed::into_value).expect("batch ack").into_iter();
    assert_lease_lost(items.next().expect("two items"), "batch ack 460 ms after expires_at");
    match items.next().expect("two items") {
        Ok(task) => assert_eq!(task, acked, "an ack applied in time, replayed late, answers as before"),
        Err(error) => panic!("a replayed ack after the expiry: expected success, got {error:?}"),
    }
    let claim = Claim { queue: queue_name("late"), max: 5, lease_ms: None, worker: None };
    let late_ack = Ack { task_id: e.id, token: token(e), result: Some("4".to_owned()) };
    let (mut acks, more) = store
        .complete_and_claim(vec![late_ack], claim, expiry + 200)
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    assert_lease_lost(acks.pop().expect("one item"), "ack with a claim 200 ms after expires_at");
    assert!(more.is_empty(), "no task was ready: {more:?}");
    match nack(&store, b.id, &token(b), None, false, expiry + 460).await {
        Ok(task) => assert_eq!(task, nacked, "a nack applied in time, replayed late, answers as before"),
        Err(error) => panic!("a replayed nack after the expiry: expected success, got {error:?}"),
    }

    for task in [c, d, e] {
        assert_eq!(&get(&store, task.id).await, task, "refused requests leave {:?} as leased", task.kind);
    }
    assert_counts(
        &info(&store, "late").await,
        &[(TaskState::Succeeded, 1), (TaskState::Scheduled, 1), (TaskState::Running, 3)],
    );
    let report = tick(&store, expiry + 500).await;
    assert_eq!(report.expired, 3, "the timer ends the leases that ran out: {report:?}");
}

// ---------------------------------------------------------------------------
// Groups, concurrency, pauses.
// ---------------------------------------------------------------------------

/// One task of a group runs at a time, in enqueue order whatever the priorities;
/// other groups and ungrouped tasks are not held up.
pub async fn group_runs_one_task_at_a_time_in_enqueue_order<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "orders", exact_backoff(1_000, 1_000), T0).await;
    create(&store, "orders", grouped("g1", "cust-1", 0), T0).await;
    create(&store, "orders", grouped("g2", "cust-1", -5), T0).await;
    create(&store, "orders", grouped("g3", "cust-1", 10), T0).await;
    create(&store, "orders", grouped("h1", "cust-2", 0), T0).await;
    create(&store, "orders", prioritised("u", 1), T0).await;

    let leased = claim(&store, "orders", 10, T0).await;
    assert_eq!(kinds(&leased), ["u", "g1", "h1"], "one head per group, ordered with the ungrouped tasks");
    assert!(claim(&store, "orders", 10, T0).await.is_empty(), "cust-1 has g1 running; g2 and g3 wait");

    ack_ok(&store, &leased[1], None, T0 + 1).await;
    let g2 = claim(&store, "orders", 10, T0 + 2).await;
    assert_eq!(kinds(&g2), ["g2"], "g2 comes before g3 although g3 has the higher priority");

    nack_ok(&store, &g2[0], Some(1_000), false, T0 + 3).await;
    assert!(
        claim(&store, "orders", 10, T0 + 4).await.is_empty(),
        "g2 waits in backoff and is still the group's oldest task: g3 must not overtake it"
    );
    assert_eq!(tick(&store, T0 + 1_003).await.promoted, 1);
    let g2 = claim(&store, "orders", 10, T0 + 1_003).await;
    assert_eq!(kinds(&g2), ["g2"]);
    ack_ok(&store, &g2[0], None, T0 + 1_004).await;
    let g3 = claim(&store, "orders", 10, T0 + 1_005).await;
    assert_eq!(kinds(&g3), ["g3"]);
    assert_counts(&info(&store, "orders").await, &[(TaskState::Succeeded, 2), (TaskState::Running, 3)]);

    // A dead task retried by hand becomes its group's oldest again, but does not run
    // beside the group's running task.
    create(&store, "orders", grouped("k1", "cust-3", 0), T0 + 2_000).await;
    create(&store, "orders", grouped("k2", "cust-3", 0), T0 + 2_000).await;
    let k1 = claim_one(&store, "orders", "k1", T0 + 2_001).await;
    nack_ok(&store, &k1, None, true, T0 + 2_002).await;
    let k2 = claim_one(&store, "orders", "k2", T0 + 2_003).await;
    store.retry_dead(k1.id, None, T0 + 2_004).await.map(Changed::into_value).expect("retry_dead k1");
    assert!(
        claim(&store, "orders", 10, T0 + 2_005).await.is_empty(),
        "k1 must wait while k2 of its group runs"
    );
    ack_ok(&store, &k2, None, T0 + 2_006).await;
    claim_one(&store, "orders", "k1", T0 + 2_007).await;
}

/// A queue never has more than `concurrency` tasks running.
pub async fn concurrency_limit_holds<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "limited", QueueSettingsPatch { concurrency: Some(Some(2)), ..Default::default() }, T0).await;
    for kind in ["a", "b", "c", "d", "e"] {
        create(&store, "limited", task(kind), T0).await;
    }
    let leased = claim(&store, "limited", 10, T0).await;
    assert_eq!(kinds(&leased), ["a", "b"], "at most 2 running");
    assert!(claim(&store, "limited", 10, T0).await.is_empty(), "the limit is reached");
    assert_counts(&info(&store, "limited").await, &[(TaskState::Running, 2), (TaskState::Ready, 3)]);

    ack_ok(&store, &leased[0], None, T0 + 1).await;
    assert_eq!(kinds(&claim(&store, "limited", 10, T0 + 2).await), ["c"], "an ack frees one place");

    put(&store, "limited", QueueSettingsPatch { concurrency: Some(Some(1)), ..Default::default() }, T0 + 3)
        .await;
    assert!(
        claim(&store, "limited", 10, T0 + 4).await.is_empty(),
        "2 running under a limit of 1: nothing more"
    );

    put(&store, "limited", QueueSettingsPatch { concurrency: Some(None), ..Default::default() }, T0 + 5)
        .await;
    assert_eq!(kinds(&claim(&store, "limited", 10, T0 + 6).await), ["d", "e"], "no limit any more");
    assert_counts(&info(&store, "limited").await, &[(TaskState::Running, 4), (TaskState::Succeeded, 1)]);
}

/// Acks and a claim in one call: each ack succeeds or fails on its own, the
/// acks are applied before the claim (a freed place under a concurrency limit is
/// taken by that very claim), and a refused ack changes nothing.
pub async fn complete_and_claim_acks_first_then_leases<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "limited", QueueSettingsPatch { concurrency: Some(Some(1)), ..Default::default() }, T0).await;
    for kind in ["a", "b", "c"] {
        create(&store, "limited", task(kind), T0).await;
    }
    let a = claim_one(&store, "limited", "a", T0 + 1).await;
    let claim =
        |max| Claim { queue: queue_name("limited"), max, lease_ms: None, worker: Some("w".to_owned()) };
    let done =
        |task: &Task, token: String| Ack { task_id: task.id, token, result: Some(r#"{"ok":1}"#.to_owned()) };

    let (acked, leased) = store
        .complete_and_claim(vec![done(&a, "not-the-lease".to_owned()), done(&a, token(&a))], claim(5), T0 + 2)
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    assert_eq!(acked.len(), 2, "one result per ack");
    let mut acked = acked.into_iter();
    assert_lease_lost(acked.next().expect("two"), "an ack with a stale token, before the good one");
    assert_eq!(acked.next().expect("two").expect("the ack with a's lease").state, TaskState::Succeeded);
    assert_eq!(kinds(&leased), ["b"], "a's place under the limit of 1 went to the claim of the same call");
    assert_eq!(get(&store, a.id).await.result.as_deref(), Some(r#"{"ok":1}"#), "a's result is stored");

    let b = &leased[0];
    let (acked, leased) = store
        .complete_and_claim(
            vec![Ack { task_id: unknown_id(), token: token(b), result: None }],
            claim(5),
            T0 + 3,
        )
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    assert_not_found(acked.into_iter().next().expect("one"), "an ack of an unknown task");
    assert!(leased.is_empty(), "b still runs: the limit holds, nothing is leased");
    assert_eq!(get(&store, b.id).await.state, TaskState::Running, "a refused ack leaves b as it was");

    // A replayed ack answers the same and still lets the claim lease.
    let (acked, leased) = store
        .complete_and_claim(vec![done(b, token(b))], claim(5), T0 + 4)
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    assert_eq!(acked[0].as_ref().expect("b's ack").state, TaskState::Succeeded);
    assert_eq!(kinds(&leased), ["c"]);
    let (acked, leased) = store
        .complete_and_claim(vec![done(b, token(b))], claim(5), T0 + 5)
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    assert_eq!(acked[0].as_ref().expect("b's ack, replayed").state, TaskState::Succeeded);
    assert!(leased.is_empty(), "c runs under the limit of 1");
    assert_counts(&info(&store, "limited").await, &[(TaskState::Running, 1), (TaskState::Succeeded, 2)]);

    // The next task of a group is leased by the very call that acks the one
    // running before it.
    for kind in ["g1", "g2"] {
        create(&store, "grouped", grouped(kind, "g", 0), T0 + 6).await;
    }
    let g1 = claim_one(&store, "grouped", "g1", T0 + 7).await;
    let grouped_claim = Claim { queue: queue_name("grouped"), ..claim(5) };
    let (acked, leased) = store
        .complete_and_claim(vec![done(&g1, token(&g1))], grouped_claim.clone(), T0 + 8)
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    assert!(acked[0].is_ok(), "g1's ack: {acked:?}");
    assert_eq!(kinds(&leased), ["g2"], "g1 finished, so g2 heads its group and is leased at once");

    // On a paused queue the acks still take effect; nothing is leased.
    put(&store, "grouped", QueueSettingsPatch { paused: Some(true), ..Default::default() }, T0 + 9).await;
    let g2 = &leased[0];
    let (acked, leased) = store
        .complete_and_claim(vec![done(g2, token(g2))], grouped_claim, T0 + 10)
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    assert!(acked[0].is_ok() && leased.is_empty(), "{acked:?} {leased:?}");
    assert_eq!(get(&store, g2.id).await.state, TaskState::Succeeded, "the ack on a paused queue is stored");
}

/// A paused queue takes tasks but leases none.
pub async fn paused_queue_leases_nothing<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let paused =
        put(&store, "paused", QueueSettingsPatch { paused: Some(true), ..Default::default() }, T0).await;
    assert!(paused.settings.paused);
    create(&store, "paused", task("a"), T0).await;
    create(&store, "paused", task("b"), T0).await;
    assert!(claim(&store, "paused", 10, T0).await.is_empty(), "a paused queue leases nothing");
    tick(&store, T0 + 1_000).await;
    assert!(claim(&store, "paused", 10, T0 + 1_000).await.is_empty());
    assert_counts(&info(&store, "paused").await, &[(TaskState::Ready, 2)]);

    put(&store, "paused", QueueSettingsPatch { paused: Some(false), ..Default::default() }, T0 + 2_000).await;
    assert_eq!(kinds(&claim(&store, "paused", 10, T0 + 2_000).await), ["a", "b"]);
}

// ---------------------------------------------------------------------------
// Cancel.
// ---------------------------------------------------------------------------

/// Scheduled and ready tasks can be cancelled, twice over; cancelled tasks never run.
pub async fn cancel_scheduled_and_ready_is_idempotent<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let ready = create(&store, "cancel", task("r"), T0).await;
    let scheduled = create(&store, "cancel", delayed("s", T0 + 10_000), T0).await;

    let cancelled =
        store.cancel(ready.id, T0 + 1).await.map(Changed::into_value).expect("cancel a ready task");
    assert_eq!(
        (cancelled.state, cancelled.finished_at),
        (TaskState::Cancelled, Some(T0 + 1)),
        "{cancelled:?}"
    );
    let again =
        store.cancel(ready.id, T0 + 2).await.map(Changed::into_value).expect("cancelling twice succeeds");
    assert_eq!(again, cancelled, "a second cancel changes nothing");
    assert_eq!(get(&store, ready.id).await, cancelled);

    let cancelled =
        store.cancel(scheduled.id, T0 + 3).await.map(Changed::into_value).expect("cancel a scheduled task");
    assert_eq!(cancelled.state, TaskState::Cancelled);
    let report = tick(&store, T0 + 10_000).await;
    assert_eq!(report.promoted, 0, "a cancelled task is not promoted: {report:?}");
    assert!(claim(&store, "cancel", 10, T0 + 10_000).await.is_empty(), "cancelled tasks are never leased");
    assert_counts(&info(&store, "cancel").await, &[(TaskState::Cancelled, 2)]);

    // Cancelling the head of a group lets the next one run.
    let head = create(&store, "cancel", grouped("g1", "g", 0), T0 + 10_001).await;
    create(&store, "cancel", grouped("g2", "g", 0), T0 + 10_001).await;
    store.cancel(head.id, T0 + 10_002).await.map(Changed::into_value).expect("cancel the group's head");
    assert_eq!(kinds(&claim(&store, "cancel", 10, T0 + 10_003).await), ["g2"]);
    assert_not_found(
        store.cancel(unknown_id(), T0).await.map(Changed::into_value),
        "cancel of an unknown id",
    );
}

/// Running and finished tasks cannot be cancelled, and a refusal changes nothing.
pub async fn cancel_running_or_finished_is_refused<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    for kind in ["a", "b", "c"] {
        create(&store, "cancel", task(kind), T0).await;
    }
    let leased = claim(&store, "cancel", 3, T0).await;
    assert_eq!(kinds(&leased), ["a", "b", "c"]);
    assert_invalid_state(
        store.cancel(leased[0].id, T0 + 1).await.map(Changed::into_value),
        TaskState::Running,
        "cancel a running task",
    );
    assert_eq!(get(&store, leased[0].id).await, leased[0], "a refused cancel changes nothing");

    ack_ok(&store, &leased[1], None, T0 + 2).await;
    assert_invalid_state(
        store.cancel(leased[1].id, T0 + 3).await.map(Changed::into_value),
        TaskState::Succeeded,
        "cancel a succeeded task",
    );
    nack_ok(&store, &leased[2], None, true, T0 + 4).await;
    assert_invalid_state(
        store.cancel(leased[2].id, T0 + 5).await.map(Changed::into_value),
        TaskState::Dead,
        "cancel a dead task",
    );
    assert_counts(
        &info(&store, "cancel").await,
        &[(TaskState::Running, 1), (TaskState::Succeeded, 1), (TaskState::Dead, 1)],
    );
}

// ---------------------------------------------------------------------------
// Listing and queues.
// ---------------------------------------------------------------------------

/// `list_tasks` pages through a queue in enqueue order, with and without a state.
pub async fn list_tasks_filters_and_pages<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let names = ["t0", "t1", "t2", "t3", "t4", "t5", "t6"];
    for (i, kind) in names.iter().enumerate() {
        create(&store, "list", task(kind), T0 + i as Millis).await;
    }
    let leased = claim(&store, "list", 2, T0 + 10).await;
    assert_eq!(kinds(&leased), ["t0", "t1"]);
    ack_ok(&store, &leased[0], Some("0"), T0 + 11).await;

    let all = list_all(&store, "list").await;
    assert_eq!(kinds(&all), names, "all tasks, in enqueue order");
    for listed in &all {
        assert_eq!(listed, &get(&store, listed.id).await, "a listed task is the whole task");
    }

    let page1 = list(&store, "list", None, None, 3).await;
    assert_eq!(kinds(&page1), ["t0", "t1", "t2"]);
    let page2 = list(&store, "list", None, Some(page1[2].id), 3).await;
    assert_eq!(kinds(&page2), ["t3", "t4", "t5"]);
    let page3 = list(&store, "list", None, Some(page2[2].id), 3).await;
    assert_eq!(kinds(&page3), ["t6"]);
    assert!(list(&store, "list", None, Some(page3[0].id), 3).await.is_empty(), "nothing after the last task");
    assert!(list(&store, "list", None, None, 0).await.is_empty(), "limit 0");

    let ready = list(&store, "list", Some(TaskState::Ready), None, 100).await;
    assert_eq!(kinds(&ready), ["t2", "t3", "t4", "t5", "t6"]);
    assert_eq!(kinds(&list(&store, "list", Some(TaskState::Running), None, 100).await), ["t1"]);
    assert_eq!(kinds(&list(&store, "list", Some(TaskState::Succeeded), None, 100).await), ["t0"]);
    assert!(list(&store, "list", Some(TaskState::Scheduled), None, 100).await.is_empty());
    let ready_after_t3 = list(&store, "list", Some(TaskState::Ready), Some(all[3].id), 2).await;
    assert_eq!(kinds(&ready_after_t3), ["t4", "t5"], "state and cursor together");
    let ready_after_t0 = list(&store, "list", Some(TaskState::Ready), Some(all[0].id), 1).await;
    assert_eq!(kinds(&ready_after_t0), ["t2"], "the cursor may be a task of another state");

    put(&store, "empty", QueueSettingsPatch::default(), T0).await;
    assert!(list_all(&store, "empty").await.is_empty(), "an existing empty queue lists nothing");
    assert_not_found(
        store
            .list_tasks(ListTasks {
                queue: queue_name("nope"),
                filter: TaskFilter::default(),
                key: None,
                after: None,
                limit: 10,
            })
            .await,
        "list_tasks of an unknown queue",
    );
}

/// `list_tasks` finds tasks by kind, group and idempotency key, with a state
/// and a cursor, before and after a reopen (in memory and in rows alike); a key
/// finds its own queue's task only.
pub async fn list_tasks_searches_by_kind_group_and_key<H: Harness>(mut harness: H) {
    let mut store = harness.open().await;
    let mut made = Vec::new();
    for i in 0..30 {
        let kind = if i % 3 == 0 { "charge" } else { "email" };
        let mut new = keyed(kind, &format!("order-{i}"));
        new.group = (i % 5 == 0).then(|| "tenant-a".to_owned());
        made.push(create(&store, "search", new, T0 + i).await);
    }
    create(&store, "other", keyed("charge", "order-3"), T0 + 40).await;
    let leased = claim(&store, "search", 4, T0 + 50).await;
    assert_eq!(leased.len(), 4);
    ack_ok(&store, &leased[0], None, T0 + 51).await;

    let search =
        |kind: Option<&str>, group: Option<&str>, key: Option<&str>, state: Option<TaskState>| ListTasks {
            queue: queue_name("search"),
            filter: TaskFilter {
                states: state.into_iter().collect(),
                kind: kind.map(str::to_owned),
                group: group.map(str::to_owned),
                ..TaskFilter::default()
            },
            key: key.map(str::to_owned),
            after: None,
            limit: 100,
        };
    let ids = |tasks: Vec<Task>| tasks.into_iter().map(|t| t.id).collect::<Vec<_>>();
    let expect = |pick: &dyn Fn(usize, &Task) -> bool| {
        made.iter().enumerate().filter(|(i, t)| pick(*i, t)).map(|(_, t)| t.id).collect::<Vec<_>>()
    };
    for round in ["before a reopen", "after a reopen"] {
        let charges = ids(store.list_tasks(search(Some("charge"), None, None, None)).await.unwrap());
        assert_eq!(charges, expect(&|i, _| i % 3 == 0), "by kind, {round}");
        let tenant = ids(store.list_tasks(search(None, Some("tenant-a"), None, None)).await.unwrap());
        assert_eq!(tenant, expect(&|i, _| i % 5 == 0), "by group, {round}");
        let both = ids(store.list_tasks(search(Some("charge"), Some("tenant-a"), None, None)).await.unwrap());
        assert_eq!(both, expect(&|i, _| i % 15 == 0), "by kind and group, {round}");
        let succeeded = store.list_tasks(search(None, None, None, Some(TaskState::Succeeded))).await.unwrap();
        assert_eq!(ids(succeeded), vec![leased[0].id], "by state, {round}");
        let by_key = ids(store.list_tasks(search(None, None, Some("order-3"), None)).await.unwrap());
        assert_eq!(by_key, vec![made[3].id], "by key: this queue's task only, {round}");
        let key_and_kind =
            store.list_tasks(search(Some("email"), None, Some("order-3"), None)).await.unwrap();
        assert!(key_and_kind.is_empty(), "the key's task is not of that kind, {round}");
        assert!(
            store.list_tasks(search(None, None, Some("no-such-key"), None)).await.unwrap().is_empty(),
            "an unknown key finds nothing, {round}"
        );
        // Paged: three at a time, the cursor carries on.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = store
                .list_tasks(ListTasks { after, limit: 3, ..search(Some("email"), None, None, None) })
                .await
                .unwrap();
            after = page.last().map(|t| t.id);
            let done = page.len() < 3;
            paged.extend(ids(page));
            if done {
                break;
            }
        }
        assert_eq!(paged, expect(&|i, _| i % 3 != 0), "by kind, paged, {round}");
        store = reopen(&mut harness, store).await;
    }
}

/// `put_queue` refuses out-of-range settings and changes nothing then; it applies
/// a patch field by field, idempotently.
pub async fn put_queue_validates_and_keeps_settings<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let invalid = [
        ("max_attempts 0", QueueSettingsPatch { max_attempts: Some(0), ..Default::default() }),
        ("max_attempts 10001", QueueSettingsPatch { max_attempts: Some(10_001), ..Default::default() }),
        ("lease_ms 0", QueueSettingsPatch { lease_ms: Some(0), ..Default::default() }),
        (
            "lease_ms over 12 h",
            QueueSettingsPatch { lease_ms: Some(12 * 3_600_000 + 1), ..Default::default() },
        ),
        ("concurrency 0", QueueSettingsPatch { concurrency: Some(Some(0)), ..Default::default() }),
        ("retention_ms -1", QueueSettingsPatch { retention_ms: Some(-1), ..Default::default() }),
        ("dedup_window_ms -1", QueueSettingsPatch { dedup_window_ms: Some(-1), ..Default::default() }),
        ("jitter 1.5", QueueSettingsPatch { backoff_jitter: Some(1.5), ..Default::default() }),
        ("multiplier NaN", QueueSettingsPatch { backoff_multiplier: Some(f64::NAN), ..Default::default() }),
        ("multiplier 0.5", QueueSettingsPatch { backoff_multiplier: Some(0.5), ..Default::default() }),
        (
            "initial over max",
            QueueSettingsPatch { backoff_initial_ms: Some(7_200_000), ..Default::default() },
        ),
        ("initial -1", QueueSettingsPatch { backoff_initial_ms: Some(-1), ..Default::default() }),
    ];
    for (what, patch) in &invalid {
        match store.put_queue(queue_name("cfg"), patch.clone(), T0).await.map(Changed::into_value) {
            Err(StoreError::InvalidSettings(message)) => {
                assert!(!message.is_empty(), "{what}: empty message")
            }
            other => panic!("put_queue with {what}: expected InvalidSettings, got {other:?}"),
        }
    }
    assert_not_found(store.get_queue(queue_name("cfg")).await, "a refused put_queue creates no queue");

    let patch = QueueSettingsPatch {
        max_attempts: Some(5),
        lease_ms: Some(10_000),
        backoff_initial_ms: Some(500),
        backoff_max_ms: Some(5_000),
        backoff_multiplier: Some(3.0),
        backoff_jitter: Some(0.0),
        concurrency: Some(Some(4)),
        paused: Some(true),
        retention_ms: Some(1_000),
        dedup_window_ms: Some(2_000),
    };
    let expected = QueueSettings {
        max_attempts: 5,
        lease_ms: 10_000,
        backoff: Backoff { initial_ms: 500, max_ms: 5_000, multiplier: 3.0, jitter: 0.0 },
        concurrency: Some(4),
        paused: true,
        retention_ms: 1_000,
        dedup_window_ms: 2_000,
    };
    let stored = put(&store, "cfg", patch.clone(), T0).await;
    assert_eq!((stored.name.as_str(), &stored.settings), ("cfg", &expected));
    assert_counts(&stored, &[]);
    assert_eq!(info(&store, "cfg").await, stored);
    assert_eq!(put(&store, "cfg", patch, T0 + 1).await, stored, "the same put again is the same queue");

    let unpaused =
        put(&store, "cfg", QueueSettingsPatch { paused: Some(false), ..Default::default() }, T0 + 2).await;
    assert_eq!(
        unpaused.settings,
        QueueSettings { paused: false, ..expected.clone() },
        "fields left out are kept"
    );
    let unlimited =
        put(&store, "cfg", QueueSettingsPatch { concurrency: Some(None), ..Default::default() }, T0 + 3)
            .await;
    assert_eq!(unlimited.settings.concurrency, None, "Some(None) removes the limit");

    for (what, patch) in invalid {
        assert!(
            matches!(
                store.put_queue(queue_name("cfg"), patch, T0 + 4).await.map(Changed::into_value),
                Err(StoreError::InvalidSettings(_))
            ),
            "put_queue with {what} on an existing queue"
        );
    }
    assert_eq!(info(&store, "cfg").await, unlimited, "refused puts change nothing");
}

/// `get_queue` knows only existing queues; `list_queues` lists them all, by name.
pub async fn get_queue_and_list_queues<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    assert!(list_queues(&store).await.is_empty(), "a fresh store has no queues");
    for name in ["b", "a", "c-1", "C", "a.b"] {
        put(&store, name, QueueSettingsPatch::default(), T0).await;
    }
    create(&store, "b", task("x"), T0).await;
    assert_not_found(store.get_queue(queue_name("zz")).await, "get_queue of an unknown queue");

    let queues = list_queues(&store).await;
    let names: Vec<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["C", "a", "a.b", "b", "c-1"], "sorted by name");
    for queue in &queues {
        assert_eq!(queue, &info(&store, &queue.name).await, "list_queues agrees with get_queue");
    }
    assert_counts(&queues[3], &[(TaskState::Ready, 1)]);
}

/// `queue_stats` counts as `list_queues` does and names each queue's oldest
/// ready task (by `run_at`, whatever its priority); a store that can commit is
/// ready.
pub async fn queue_stats_count_and_find_the_oldest_ready_task<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    store.check_ready().await.expect("a fresh store can commit");
    put(&store, "empty", QueueSettingsPatch::default(), T0).await;
    create(&store, "q", prioritised("old", 0), T0).await;
    create(&store, "q", prioritised("urgent", 9), T0 + 10).await;
    create(&store, "q", delayed("later", T0 + 1_000), T0 + 20).await;

    let stats = store.queue_stats().await.expect("queue_stats");
    let queues = list_queues(&store).await;
    let names: Vec<&str> = stats.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names,
        queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
        "the same queues, in order"
    );
    for (stat, queue) in stats.iter().zip(&queues) {
        assert_eq!(stat.counts, queue.counts, "{}: counts as list_queues has them", queue.name);
    }
    assert_eq!(stats[0].oldest_ready_at, None, "no ready task in {}", stats[0].name);
    assert_eq!(stats[1].oldest_ready_at, Some(T0), "the oldest ready task of q, of a lower priority");

    assert_eq!(claim(&store, "q", 2, T0 + 30).await.len(), 2);
    let stats = store.queue_stats().await.expect("queue_stats");
    assert_eq!(stats[1].count(TaskState::Running), 2);
    assert_eq!(stats[1].oldest_ready_at, None, "running and scheduled tasks are not ready");
    store.check_ready().await.expect("still ready");
}

// ---------------------------------------------------------------------------
// Retention.
// ---------------------------------------------------------------------------

/// Finished tasks are purged once past the queue's retention; unfinished ones never.
pub async fn retention_purges_finished_tasks<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "ret", QueueSettingsPatch { retention_ms: Some(60_000), ..Default::default() }, T0).await;
    create(&store, "ret", task("a"), T0).await;
    create(&store, "ret", task("b"), T0).await;
    let c = create(&store, "ret", task("c"), T0).await;
    create(&store, "ret", task("d"), T0).await;
    let waiting = create(&store, "ret", delayed("e", T0 + 1_000_000), T0).await;
    let leased = claim(&store, "ret", 2, T0).await;
    assert_eq!(kinds(&leased), ["a", "b"]);
    let a = ack_ok(&store, &leased[0], None, T0 + 10).await;
    let b = nack_ok(&store, &leased[1], None, true, T0 + 20).await;
    let c = store.cancel(c.id, T0 + 30).await.map(Changed::into_value).expect("cancel c");
    assert_counts(
        &info(&store, "ret").await,
        &[
            (TaskState::Succeeded, 1),
            (TaskState::Dead, 1),
            (TaskState::Cancelled, 1),
            (TaskState::Ready, 1),
            (TaskState::Scheduled, 1),
        ],
    );

    let report = tick(&store, T0 + 50_000).await;
    assert_eq!(report.purged, 0, "nothing is past retention yet: {report:?}");
    let report = tick(&store, T0 + 60_015).await;
    assert_eq!(report.purged, 1, "only a finished more than retention_ms ago: {report:?}");
    assert_not_found(store.get_task(a.id).await, "get_task of a purged task");
    assert_not_found(
        store
            .complete(vec![Ack { task_id: a.id, token: token(&leased[0]), result: None }], T0 + 60_016)
            .await
            .map(Changed::into_value)
            .expect("ack call")
            .pop()
            .expect("one item"),
        "ack of a purged task",
    );
    assert_eq!(get(&store, b.id).await, b, "b finished later and is kept");
    assert_counts(
        &info(&store, "ret").await,
        &[(TaskState::Dead, 1), (TaskState::Cancelled, 1), (TaskState::Ready, 1), (TaskState::Scheduled, 1)],
    );

    let report = tick(&store, T0 + 70_000).await;
    assert_eq!(report.purged, 2, "b and c: {report:?}");
    assert_not_found(store.get_task(c.id).await, "get_task of purged c");
    assert_eq!(kinds(&list_all(&store, "ret").await), ["d", "e"], "unfinished tasks are never purged");
    assert_eq!(get(&store, waiting.id).await.state, TaskState::Scheduled);
    assert_counts(&info(&store, "ret").await, &[(TaskState::Ready, 1), (TaskState::Scheduled, 1)]);
}

/// A finished task stays while an idempotency key inside its window names it, so
/// a replay can still return its result.
pub async fn retention_keeps_tasks_whose_key_is_in_window<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let window = 100_000;
    let settings =
        QueueSettingsPatch { retention_ms: Some(1_000), dedup_window_ms: Some(window), ..Default::default() };
    put(&store, "ret", settings, T0).await;
    create(&store, "ret", keyed("keyed", "k"), T0).await;
    create(&store, "ret", task("plain"), T0).await;
    let leased = claim(&store, "ret", 2, T0).await;
    assert_eq!(kinds(&leased), ["keyed", "plain"]);
    let keyed_done = ack_ok(&store, &leased[0], Some(r#"{"receipt":1}"#), T0 + 10).await;
    let plain_done = ack_ok(&store, &leased[1], None, T0 + 10).await;

    let report = tick(&store, T0 + 50_000).await;
    assert_eq!(report.purged, 1, "the task without a key is purged: {report:?}");
    assert_not_found(store.get_task(plain_done.id).await, "the purged task without a key");
    assert_eq!(
        get(&store, keyed_done.id).await,
        keyed_done,
        "the keyed task is kept inside its key's window"
    );
    assert_counts(&info(&store, "ret").await, &[(TaskState::Succeeded, 1)]);

    let report = tick(&store, T0 + window + 500).await;
    assert_eq!(report.purged, 1, "past the key's window the keyed task goes too: {report:?}");
    assert_not_found(store.get_task(keyed_done.id).await, "the keyed task after its window");
    assert_counts(&info(&store, "ret").await, &[]);
    let fresh = create(&store, "ret", keyed("keyed", "k"), T0 + window + 501).await;
    assert_ne!(fresh.id, keyed_done.id, "the forgotten key creates a new task");
}

/// Retention counts from when a task last finished: a dead task brought back and
/// finished again is kept for the full period from its second end; tasks finished
/// before a reopen are purged after it, and a key in its window still holds its
/// task across the reopen.
pub async fn retention_holds_across_a_reopen_and_a_retry<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let settings = QueueSettingsPatch {
        retention_ms: Some(10_000),
        dedup_window_ms: Some(50_000),
        ..Default::default()
    };
    put(&store, "ret", settings, T0).await;
    create(&store, "ret", task("retried"), T0).await;
    create(&store, "ret", task("plain"), T0).await;
    create(&store, "ret", keyed("keyed", "k"), T0).await;
    let leased = claim(&store, "ret", 3, T0).await;
    assert_eq!(kinds(&leased), ["retried", "plain", "keyed"]);
    let retried = nack_ok(&store, &leased[0], None, true, T0 + 10).await;
    let plain = ack_ok(&store, &leased[1], None, T0 + 20).await;
    let keyed_done = ack_ok(&store, &leased[2], None, T0 + 30).await;
    store.retry_dead(retried.id, None, T0 + 5_000).await.map(Changed::into_value).expect("retry_dead");
    let again = claim_one(&store, "ret", "retried", T0 + 5_000).await;
    let retried = ack_ok(&store, &again, None, T0 + 8_000).await;

    let report = tick(&store, T0 + 12_000).await;
    assert_eq!(report.purged, 1, "only plain: retried finished again at T0+8000: {report:?}");
    assert_not_found(store.get_task(plain.id).await, "get_task of purged plain");
    assert_eq!(get(&store, retried.id).await, retried, "the retried task is kept from its second end");
    assert_eq!(get(&store, keyed_done.id).await, keyed_done, "the keyed task is kept inside its window");

    let store = reopen(&mut harness, store).await;
    let report = tick(&store, T0 + 18_500).await;
    assert_eq!(report.purged, 1, "the retried task, 10 s after its second end: {report:?}");
    assert_not_found(store.get_task(retried.id).await, "get_task of purged retried");
    let store = reopen(&mut harness, store).await;
    assert_eq!(tick(&store, T0 + 40_000).await.purged, 0, "the key still holds its task");
    assert_eq!(get(&store, keyed_done.id).await, keyed_done);
    let report = tick(&store, T0 + 50_100).await;
    assert_eq!(report.purged, 1, "past its key's window the keyed task goes: {report:?}");
    assert_counts(&info(&store, "ret").await, &[]);
}

/// The newest tasks, purged, do not lend their numbers (and so their ids' low
/// bits and their rows) to tasks enqueued after a reopen.
pub async fn a_purged_tasks_number_is_not_given_again<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "num", QueueSettingsPatch { retention_ms: Some(1_000), ..Default::default() }, T0).await;
    create(&store, "num", task("old"), T0).await;
    create(&store, "num", task("newest"), T0).await;
    let leased = claim(&store, "num", 2, T0).await;
    let newest = ack_ok(&store, &leased[1], None, T0 + 1).await;
    ack_ok(&store, &leased[0], None, T0 + 1).await;
    assert_eq!(tick(&store, T0 + 2_000).await.purged, 2);
    let store = reopen(&mut harness, store).await;
    let next = create(&store, "num", task("next"), T0 + 3_000).await;
    assert!(
        next.id.seq() > newest.id.seq(),
        "task {} got number {}, not above the purged {}",
        next.id,
        next.id.seq(),
        newest.id.seq()
    );
    let store = reopen(&mut harness, store).await;
    assert_eq!(get(&store, next.id).await, next);
    assert_not_found(store.get_task(newest.id).await, "get_task of the purged newest task");
}

// ---------------------------------------------------------------------------
// Reopen.
// ---------------------------------------------------------------------------

/// Everything stored before a reopen is there after it, exactly.
pub async fn reopen_keeps_every_task_and_queue<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let settings = QueueSettingsPatch {
        max_attempts: Some(7),
        concurrency: Some(Some(3)),
        retention_ms: Some(1_234_567),
        dedup_window_ms: Some(99_999),
        ..exact_backoff(250, 4_000)
    };
    put(&store, "keep", settings, T0).await;
    put(&store, "idle", QueueSettingsPatch { paused: Some(true), ..Default::default() }, T0).await;

    create(&store, "keep", keyed("done", "k-done"), T0).await;
    let done = claim_one(&store, "keep", "done", T0 + 1).await;
    ack_ok(&store, &done, Some(r#"{"n":1}"#), T0 + 2).await;
    create(&store, "keep", task("dead"), T0 + 3).await;
    let dead = claim_one(&store, "keep", "dead", T0 + 3).await;
    nack_ok(&store, &dead, None, true, T0 + 4).await;
    create(&store, "keep", task("retrying"), T0 + 5).await;
    let retrying = claim_one(&store, "keep", "retrying", T0 + 5).await;
    nack_ok(&store, &retrying, None, false, T0 + 6).await;
    create(&store, "keep", task("running"), T0 + 7).await;
    claim_with(&store, "keep", 1, Some(60_000), T0 + 7).await;
    let cancelled = create(&store, "keep", task("cancelled"), T0 + 8).await;
    store.cancel(cancelled.id, T0 + 8).await.map(Changed::into_value).expect("cancel");
    create(&store, "keep", grouped("ready", "g", 3), T0 + 9).await;
    create(&store, "keep", delayed("scheduled", T0 + 600_000), T0 + 10).await;

    let tasks_before = list_all(&store, "keep").await;
    let queues_before = list_queues(&store).await;
    assert_eq!(tasks_before.len(), 7);

    let store = reopen(&mut harness, store).await;
    let tasks_after = list_all(&store, "keep").await;
    for (before, after) in tasks_before.iter().zip(&tasks_after) {
        assert_eq!(after, before, "task {:?} changed across a reopen", before.kind);
    }
    assert_eq!(tasks_after.len(), tasks_before.len(), "tasks after reopen: {:?}", kinds(&tasks_after));
    assert_eq!(list_queues(&store).await, queues_before, "queues (settings and counts) across a reopen");

    match enqueue(&store, "keep", keyed("done", "k-done"), T0 + 20).await {
        Ok(Enqueued::Replayed(task)) => {
            assert_eq!(task, tasks_before[0], "idempotency keys survive a reopen")
        }
        other => panic!("replay after reopen: expected Replayed, got {other:?}"),
    }
    let newer = create(&store, "keep", task("newer"), T0 + 1_000).await;
    assert!(tasks_before.iter().all(|t| t.id < newer.id), "ids keep growing after a reopen");
    let last = tasks_before.last().expect("seven tasks").id;
    assert_eq!(
        kinds(&list(&store, "keep", None, Some(last), 10).await),
        ["newer"],
        "enqueue order continues"
    );
}

/// After a reopen the index is rebuilt: leases, groups and the concurrency limit
/// hold as before, and timers still fire.
pub async fn reopen_honours_leases_and_rebuilds_index<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "work", QueueSettingsPatch { concurrency: Some(Some(2)), ..Default::default() }, T0).await;
    put(&store, "grp", exact_backoff(1_000, 1_000), T0).await;
    for kind in ["r1", "r2", "r3", "r4"] {
        create(&store, "work", task(kind), T0).await;
    }
    create(&store, "work", NewTask { priority: 100, ..delayed("d", T0 + 10_000) }, T0).await;
    let r1 = claim_with(&store, "work", 1, Some(60_000), T0).await.pop().expect("r1");
    create(&store, "grp", grouped("g1", "x", 0), T0).await;
    create(&store, "grp", grouped("g2", "x", 0), T0).await;
    let g1 = claim_with(&store, "grp", 10, Some(60_000), T0).await;
    assert_eq!(kinds(&g1), ["g1"]);
    let g1 = &g1[0];

    let store = reopen(&mut harness, store).await;
    let leased = claim_with(&store, "work", 10, Some(60_000), T0 + 1_000).await;
    assert_eq!(kinds(&leased), ["r2"], "concurrency 2 with r1 still running from before the reopen");
    assert!(claim(&store, "grp", 10, T0 + 1_000).await.is_empty(), "g2 waits: g1 still runs");

    let acked = ack(&store, r1.id, &token(&r1), Some("ok"), T0 + 2_000).await;
    match acked {
        Ok(task) => assert_eq!(task.state, TaskState::Succeeded),
        Err(e) => panic!("ack with a lease taken before the reopen, not yet expired: {e:?}"),
    }
    let r3 = claim_with(&store, "work", 10, Some(60_000), T0 + 2_000).await;
    assert_eq!(kinds(&r3), ["r3"]);

    assert_eq!(tick(&store, T0 + 10_000).await.promoted, 1, "the delayed task is promoted after the reopen");
    assert!(claim(&store, "work", 10, T0 + 10_000).await.is_empty(), "r2 and r3 run: the limit holds");
    ack_ok(&store, &leased[0], None, T0 + 10_001).await;
    let d = claim_with(&store, "work", 10, Some(60_000), T0 + 10_002).await;
    assert_eq!(kinds(&d), ["d"], "priority 100 beats r4");

    let report = tick(&store, T0 + 60_001).await;
    assert_eq!(report.expired, 1, "g1's lease from before the reopen expires: {report:?}");
    assert_lease_lost(ack(&store, g1.id, &token(g1), None, T0 + 60_002).await, "ack with g1's expired token");
    assert!(
        claim(&store, "grp", 10, T0 + 60_002).await.is_empty(),
        "g1 is in backoff and still heads its group"
    );
    assert_eq!(tick(&store, T0 + 61_001).await.promoted, 1);
    let g1_again = claim_one(&store, "grp", "g1", T0 + 61_001).await;
    assert_eq!(g1_again.attempts, 2);
    ack_ok(&store, &g1_again, None, T0 + 61_002).await;
    claim_one(&store, "grp", "g2", T0 + 61_003).await;
}

// ---------------------------------------------------------------------------
// Attempt history.
// ---------------------------------------------------------------------------

/// A task's history, one line per entry: `attempt worker +started..+finished
/// outcome error`, times from `T0`, and `; payload edited by who at +time` after
/// an attempt whose payload was edited.
fn history_lines(task: &Task) -> Vec<String> {
    task.attempt_history()
        .map(|e| {
            let finished = e.finished_at.map_or(String::new(), |at| format!("{:+}", at - T0));
            let edit = e.payload_edit.map_or(String::new(), |edit| {
                format!("; payload edited by {} at {:+}", edit.by.as_deref().unwrap_or("-"), edit.at - T0)
            });
            format!(
                "{} {} {:+}..{finished} {} {}{edit}",
                e.attempt,
                e.worker.unwrap_or("-"),
                e.started_at - T0,
                e.outcome,
                e.error.unwrap_or("-")
            )
        })
        .collect()
}

#[track_caller]
fn assert_history(task: &Task, expected: &[&str], what: &str) {
    assert_eq!(history_lines(task), expected, "history of {:?} {what}: {task:?}", task.kind);
}

/// A lease starts a running attempt under the lease's worker; the ack ends it.
pub async fn history_records_an_ack<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let created = create(&store, "h", task("a"), T0).await;
    assert!(created.history.is_empty(), "a new task has no attempts: {created:?}");
    let leased = claim_one(&store, "h", "a", T0 + 10).await;
    assert_history(&leased, &["1 worker-1 +10.. running -"], "after a lease");
    assert_eq!(leased.lease.as_ref().map(|l| l.leased_at), Some(T0 + 10), "the lease's start");
    assert_eq!(get(&store, leased.id).await, leased);
    let extended = store
        .extend_lease(leased.id, token(&leased), 60_000, T0 + 20)
        .await
        .map(Changed::into_value)
        .expect("extend");
    assert_eq!(extended.history, leased.history, "an extension is the same attempt");
    let acked = ack_ok(&store, &leased, Some("1"), T0 + 30).await;
    assert_history(&acked, &["1 worker-1 +10..+30 succeeded -"], "after the ack");
    assert_eq!(get(&store, acked.id).await, acked);
    let replayed = ack_ok(&store, &leased, Some("1"), T0 + 40).await;
    assert_eq!(replayed, acked, "a replayed ack changes nothing");

    // Acked in the same call as the next lease.
    create(&store, "h", task("b"), T0 + 50).await;
    let claim = Claim { queue: queue_name("h"), max: 1, lease_ms: None, worker: None };
    let b =
        store.claim(claim.clone(), T0 + 51).await.map(Changed::into_value).expect("claim").pop().expect("b");
    create(&store, "h", task("c"), T0 + 52).await;
    let done = Ack { task_id: b.id, token: token(&b), result: None };
    let (acked, leased) = store
        .complete_and_claim(vec![done], claim, T0 + 53)
        .await
        .map(Changed::into_value)
        .expect("complete_and_claim");
    let b = acked.into_iter().next().expect("one").expect("b acked");
    assert_history(&b, &["1 - +51..+53 succeeded -"], "acked with the next lease");
    assert_history(&leased[0], &["1 - +53.. running -"], "leased with the ack");
}

/// Each nack ends its attempt as failed with its error, whether the task is
/// scheduled again or dead; a retry of the dead task keeps them all.
pub async fn history_records_nacks_and_is_kept_by_a_retry<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "h", exact_backoff(100, 100), T0).await;
    create(&store, "h", task("a"), T0).await;
    let first = claim_one(&store, "h", "a", T0 + 1).await;
    let nacked = nack_ok(&store, &first, None, false, T0 + 2).await;
    assert_eq!(nacked.state, TaskState::Scheduled);
    assert_history(&nacked, &["1 worker-1 +1..+2 failed boom"], "after a nack");
    assert_eq!(nack(&store, first.id, &token(&first), None, false, T0 + 3).await.expect("replay"), nacked);
    assert_eq!(tick(&store, T0 + 102).await.promoted, 1);
    let second = claim_one(&store, "h", "a", T0 + 102).await;
    let dead = nack_ok(&store, &second, None, true, T0 + 103).await;
    assert_eq!(dead.state, TaskState::Dead);
    let both = ["1 worker-1 +1..+2 failed boom", "2 worker-1 +102..+103 failed boom"];
    assert_history(&dead, &both, "after a nack to dead");
    let retried =
        store.retry_dead(dead.id, None, T0 + 200).await.map(Changed::into_value).expect("retry_dead");
    assert_history(&retried, &both, "after a retry");
    let third = claim_one(&store, "h", "a", T0 + 201).await;
    let acked = ack_ok(&store, &third, None, T0 + 202).await;
    assert_history(
        &acked,
        &[both[0], both[1], "3 worker-1 +201..+202 succeeded -"],
        "after the retried task succeeded",
    );
    assert_eq!(acked.last_error.as_deref(), Some("boom"), "last_error is the last failure's");
    assert_eq!(get(&store, acked.id).await, acked);
}

/// An expired attempt ends when its lease ran out (its last extension's expiry),
/// not when the timer noticed.
pub async fn history_ends_an_expired_attempt_when_its_lease_ran_out<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "h", exact_backoff(1_000, 1_000), T0).await;
    create(&store, "h", NewTask { max_attempts: Some(2), ..task("a") }, T0).await;
    let leased = claim_with(&store, "h", 1, Some(10_000), T0).await.pop().expect("a");
    store
        .extend_lease(leased.id, token(&leased), 20_000, T0 + 5_000)
        .await
        .map(Changed::into_value)
        .expect("extend");
    assert_eq!(tick(&store, T0 + 40_000).await.expired, 1);
    let expired = get(&store, leased.id).await;
    assert_eq!(expired.state, TaskState::Scheduled);
    assert_history(&expired, &["1 worker-1 +0..+25000 expired lease expired"], "after an expiry");
    assert_eq!(tick(&store, T0 + 41_000).await.promoted, 1);
    claim_with(&store, "h", 1, Some(1_000), T0 + 41_000).await;
    assert_eq!(tick(&store, T0 + 42_500).await.expired, 1);
    let dead = get(&store, leased.id).await;
    assert_eq!(dead.state, TaskState::Dead, "the second expiry used the last attempt");
    assert_history(
        &dead,
        &["1 worker-1 +0..+25000 expired lease expired", "2 worker-1 +41000..+42000 expired lease expired"],
        "after the last attempt expired",
    );
}

/// Histories are durable: a clean reopen and a crash give back every task with
/// its history as it was, running attempts included, and the attempts go on.
pub async fn history_survives_a_reopen_and_a_crash<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "h", exact_backoff(100, 100), T0).await;
    for kind in ["done", "failed", "running", "expired", "waiting"] {
        create(&store, "h", task(kind), T0).await;
    }
    let done = claim_one(&store, "h", "done", T0 + 1).await;
    ack_ok(&store, &done, None, T0 + 2).await;
    let failed = claim_one(&store, "h", "failed", T0 + 3).await;
    nack_ok(&store, &failed, None, false, T0 + 4).await;
    let running = claim_with(&store, "h", 1, Some(600_000), T0 + 5).await.pop().expect("running");
    let expired = claim_with(&store, "h", 1, Some(10), T0 + 6).await.pop().expect("expired");
    assert_eq!((running.kind.as_str(), expired.kind.as_str()), ("running", "expired"));
    assert_eq!(tick(&store, T0 + 20).await.expired, 1);
    let before = list_all(&store, "h").await;
    let lines: Vec<Vec<String>> = before.iter().map(history_lines).collect();
    assert_eq!(
        lines,
        [
            vec!["1 worker-1 +1..+2 succeeded -"],
            vec!["1 worker-1 +3..+4 failed boom"],
            vec!["1 worker-1 +5.. running -"],
            vec!["1 worker-1 +6..+16 expired lease expired"],
            vec![],
        ],
        "{before:?}"
    );

    let store = reopen(&mut harness, store).await;
    assert_eq!(list_all(&store, "h").await, before, "histories across a reopen");
    // The next attempts, then a crash right after them.
    assert_eq!(tick(&store, T0 + 200).await.promoted, 2);
    let again = claim_with(&store, "h", 3, Some(600_000), T0 + 201).await;
    assert_eq!(kinds(&again), ["waiting", "failed", "expired"], "by run_at");
    store
        .extend_lease(again[0].id, token(&again[0]), 600_000, T0 + 202)
        .await
        .map(Changed::into_value)
        .expect("extend");
    ack_ok(&store, &again[2], None, T0 + 203).await;
    let before = list_all(&store, "h").await;
    let store = harness.crash(store).await;
    let after = list_all(&store, "h").await;
    assert_eq!(after, before, "histories across a crash");
    assert_history(
        &after[1],
        &["1 worker-1 +3..+4 failed boom", "2 worker-1 +201.. running -"],
        "after the crash",
    );
    let acked = ack_ok(&store, &running, None, T0 + 300).await;
    assert_history(&acked, &["1 worker-1 +5..+300 succeeded -"], "a lease from before the crash, acked");
    store.close().await;
}

/// A retry with a new payload replaces the payload in the commit of the retry
/// (a grouped task's too) and marks the attempt that ended dead with who edited
/// it and when; the next lease carries the new payload. A refused retry leaves
/// the payload alone. Both last across a reopen and a crash.
pub async fn retry_dead_with_a_new_payload_records_the_edit<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    create(&store, "fix", NewTask { payload: r#"{"v":1}"#.into(), ..task("a") }, T0).await;
    create(&store, "fix", NewTask { payload: r#"{"v":"b"}"#.into(), ..grouped("b", "g", 0) }, T0).await;
    let a = claim_one(&store, "fix", "a", T0 + 1).await;
    let b = claim_one(&store, "fix", "b", T0 + 2).await;
    nack_ok(&store, &a, None, true, T0 + 3).await;
    nack_ok(&store, &b, None, true, T0 + 4).await;
    let edit = |payload: &str, by: Option<&str>| {
        Some(NewPayload { payload: payload.to_owned(), by: by.map(str::to_owned) })
    };

    let retried = store.retry_dead(a.id, edit(r#"{"v":2}"#, Some("alice")), T0 + 10).await.expect("retry a");
    assert_eq!(
        moves(&retried.effects),
        [mv("a", Change::Retried, Some(TaskState::Dead), Some(TaskState::Ready))]
    );
    assert!(retried.effects.transitions[0].payload_edited, "the retry says it edited: {retried:?}");
    let retried = retried.into_value();
    assert_eq!((retried.state, retried.payload.as_str()), (TaskState::Ready, r#"{"v":2}"#));
    let edited_a = ["1 worker-1 +1..+3 failed boom; payload edited by alice at +10"];
    assert_history(&retried, &edited_a, "after a retry with a new payload");
    assert_eq!(get(&store, a.id).await, retried);
    let retried_b = store.retry_dead(b.id, edit("[null]", None), T0 + 11).await.map(Changed::into_value);
    let retried_b = retried_b.expect("retry b");
    assert_eq!(retried_b.payload, "[null]");
    assert_history(&retried_b, &["1 worker-1 +2..+4 failed boom; payload edited by - at +11"], "b");

    let log = read_log(&store, 0, 1_000).await;
    let retries: Vec<(String, bool)> = log
        .events
        .iter()
        .filter(|e| e.transition.change == Change::Retried)
        .map(|e| (e.transition.kind.clone(), e.transition.payload_edited))
        .collect();
    assert_eq!(retries, [("a".to_owned(), true), ("b".to_owned(), true)], "the event log: {log:?}");

    let again = claim_one(&store, "fix", "a", T0 + 20).await;
    assert_eq!((again.payload.as_str(), again.attempts), (r#"{"v":2}"#, 2), "the lease has the new payload");
    assert_invalid_state(
        store.retry_dead(a.id, edit(r#"{"v":3}"#, Some("mallory")), T0 + 21).await.map(Changed::into_value),
        TaskState::Running,
        "retry with a payload of a running task",
    );
    let running = get(&store, a.id).await;
    assert_eq!(running.payload, r#"{"v":2}"#, "a refused retry leaves the payload");
    assert_history(&running, &[edited_a[0], "2 worker-1 +20.. running -"], "after the refused retry");

    let store = reopen(&mut harness, store).await;
    assert_eq!(get(&store, a.id).await, running, "across a reopen");
    assert_eq!(get(&store, b.id).await, retried_b, "across a reopen");
    let again_b = claim_one(&store, "fix", "b", T0 + 30).await;
    assert_eq!(again_b.payload, "[null]");
    let store = harness.crash(store).await;
    assert_eq!(get(&store, a.id).await, running, "across a crash");
    let acked = ack_ok(&store, &again_b, None, T0 + 40).await;
    assert_history(
        &acked,
        &["1 worker-1 +2..+4 failed boom; payload edited by - at +11", "2 worker-1 +30..+40 succeeded -"],
        "the edited attempt stays as the next ends",
    );
    store.close().await;
}

/// A task with more attempts than the bound keeps the first and the latest.
pub async fn history_keeps_the_first_attempt_and_the_latest<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put(&store, "h", exact_backoff(0, 0), T0).await;
    let total = History::MAX_ENTRIES as u32 + 5;
    create(&store, "h", NewTask { max_attempts: Some(total), ..task("a") }, T0).await;
    let mut now = T0;
    let mut last = None;
    for _ in 0..total {
        now += 10;
        tick(&store, now).await;
        let leased = claim_one(&store, "h", "a", now).await;
        last = Some(nack_ok(&store, &leased, Some(0), false, now + 1).await);
    }
    let last = last.expect("nacked");
    assert_eq!(last.state, TaskState::Dead, "{total} attempts used");
    let numbers: Vec<u32> = last.history.entries().iter().map(|e| e.attempt).collect();
    let expected: Vec<u32> = std::iter::once(1).chain(7..=total).collect();
    assert_eq!(numbers, expected, "the first attempt and the {} latest", History::MAX_ENTRIES - 1);
    assert!(last.history.entries().iter().all(|e| e.outcome == AttemptOutcome::Failed));
    assert_eq!(last.history.entries()[0].started_at, T0 + 10, "the first attempt is the first lease");
    assert_eq!(get(&store, last.id).await, last);
    let store = reopen(&mut harness, store).await;
    assert_eq!(get(&store, last.id).await, last, "the bounded history across a reopen");
}

/// After `close`, every call is refused with `Closed`, and closing again is harmless.
pub async fn close_refuses_later_calls<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let created = create(&store, "closing", task("a"), T0).await;
    store.close().await;
    assert!(
        matches!(
            store.enqueue(queue_name("closing"), vec![task("b")], T0 + 1).await.map(Changed::into_value),
            Err(StoreError::Closed)
        ),
        "enqueue after close"
    );
    assert!(matches!(store.get_task(created.id).await, Err(StoreError::Closed)), "get_task after close");
    assert!(
        matches!(store.tick(T0 + 2).await.map(Changed::into_value), Err(StoreError::Closed)),
        "tick after close"
    );
    store.close().await;
    drop(store);
    let store = harness.open().await;
    assert_eq!(get(&store, created.id).await, created, "what was stored before close is kept");
    assert_eq!(list_all(&store, "closing").await.len(), 1, "nothing was stored after close");
}

// ---------------------------------------------------------------------------
// Token revocations.
// ---------------------------------------------------------------------------

async fn revoke<S: Store>(store: &S, jti: &str, expires_at: Millis, now: Millis) {
    let revocation = Revocation { jti: jti.to_owned(), expires_at };
    store
        .revoke_token(revocation, now)
        .await
        .unwrap_or_else(|e| panic!("revoke_token {jti} until {} at {}: {e:?}", at(expires_at), at(now)));
}

async fn revoked<S: Store>(store: &S, now: Millis) -> Vec<(String, Millis)> {
    store
        .revoked_tokens(now)
        .await
        .unwrap_or_else(|e| panic!("revoked_tokens at {}: {e:?}", at(now)))
        .into_iter()
        .map(|r| (r.jti, r.expires_at))
        .collect()
}

/// A revocation is listed (in jti order) while its expiry is after `now`; a second
/// revocation of the same token keeps the later expiry; a tick past their expiry
/// forgets expired ones (so the set does not grow for ever).
pub async fn revocations_are_listed_until_they_expire<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    assert_eq!(revoked(&store, T0).await, [], "a new store has no revocations");
    revoke(&store, "jti-b", T0 + 20_000, T0).await;
    revoke(&store, "jti-a", T0 + 10_000, T0).await;
    let both = vec![("jti-a".to_owned(), T0 + 10_000), ("jti-b".to_owned(), T0 + 20_000)];
    assert_eq!(revoked(&store, T0).await, both, "both revocations, in jti order");
    assert_eq!(revoked(&store, T0 + 9_999).await, both);
    assert_eq!(
        revoked(&store, T0 + 10_000).await,
        [("jti-b".to_owned(), T0 + 20_000)],
        "a revocation is over at its expires_at"
    );

    revoke(&store, "jti-b", T0 + 5_000, T0 + 1).await;
    assert_eq!(revoked(&store, T0 + 2).await, both, "revoking again with an earlier expiry shortens nothing");
    revoke(&store, "jti-a", T0 + 30_000, T0 + 3).await;
    assert_eq!(
        revoked(&store, T0 + 25_000).await,
        [("jti-a".to_owned(), T0 + 30_000)],
        "revoking again with a later expiry extends it"
    );

    tick(&store, T0 + 40_000).await;
    assert_eq!(revoked(&store, T0 + 40_000).await, [], "all expired");
    assert_eq!(revoked(&store, T0).await, [], "a tick past their expiry purged them");

    // Task work is untouched by revocations, and the other way round.
    let task = create(&store, "rev", task("a"), T0 + 40_001).await;
    revoke(&store, "jti-c", Millis::MAX, T0 + 40_002).await;
    assert_eq!(get(&store, task.id).await, task);
    assert_eq!(revoked(&store, T0 + 40_003).await, [("jti-c".to_owned(), Millis::MAX)]);
}

/// Revocations are durable: a reopened store lists them.
pub async fn revocations_survive_a_reopen<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    revoke(&store, "kept", T0 + 60_000, T0).await;
    revoke(&store, "forever", Millis::MAX, T0).await;
    let store = reopen(&mut harness, store).await;
    assert_eq!(
        revoked(&store, T0 + 1).await,
        [("forever".to_owned(), Millis::MAX), ("kept".to_owned(), T0 + 60_000)],
        "revocations after a reopen"
    );
}

// ---------------------------------------------------------------------------
// Payload schemas.
// ---------------------------------------------------------------------------

async fn put_schema<S: Store>(
    store: &S,
    queue: &str,
    kind: Option<&str>,
    schema: Option<&str>,
    now: Millis,
) -> SchemaVersion {
    let change = SchemaChange {
        kind: kind.map(str::to_owned),
        schema: schema.map(str::to_owned),
        subject: Some("alice".to_owned()),
    };
    store.put_payload_schema(queue_name(queue), change, now).await.expect("put_payload_schema")
}

/// `(version, kind, schema)` of each version of the queue's schemas, oldest first.
async fn schema_history<S: Store>(store: &S, queue: &str) -> Vec<(u64, Option<String>, Option<String>)> {
    let history = store.payload_schemas(queue_name(queue)).await.expect("payload_schemas");
    for version in &history {
        assert_eq!(version.queue, queue, "{version:?}");
        assert_eq!(version.subject.as_deref(), Some("alice"), "{version:?}");
    }
    history.into_iter().map(|v| (v.version, v.kind, v.schema)).collect()
}

async fn schema_version<S: Store>(store: &S, queue: &str) -> u64 {
    store.payload_schema_version(&queue_name(queue)).await.expect("payload_schema_version")
}

fn owned(version: u64, kind: Option<&str>, schema: Option<&str>) -> (u64, Option<String>, Option<String>) {
    (version, kind.map(str::to_owned), schema.map(str::to_owned))
}

/// Each change to a queue's schemas is its next version, numbered per queue from
/// 1, kept verbatim with its kind, time and subject; a removal is a version too;
/// the version number is what `payload_schema_version` answers. Schemas do not
/// need the queue to exist, and tasks are untouched by them.
pub async fn payload_schemas_are_versioned_per_queue<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    assert_eq!(schema_version(&store, "orders").await, 0, "no schema yet");
    assert_eq!(schema_history(&store, "orders").await, [], "no history yet");
    let task = create(&store, "orders", task("a"), T0).await;

    let wide = r#"{"type": "object", "required": ["id"]}"#;
    let first = put_schema(&store, "orders", None, Some(wide), T0 + 1).await;
    assert_eq!(
        first,
        SchemaVersion {
            queue: "orders".to_owned(),
            version: 1,
            kind: None,
            schema: Some(wide.to_owned()),
            subject: Some("alice".to_owned()),
            created_at: T0 + 1,
        }
    );
    let email = r#"{"type": "object", "properties": {"to": {"type": "string"}}}"#;
    assert_eq!(put_schema(&store, "orders", Some("email"), Some(email), T0 + 2).await.version, 2);
    assert_eq!(put_schema(&store, "orders", None, None, T0 + 3).await.version, 3, "a removal is a version");
    assert_eq!(
        put_schema(&store, "other", None, Some("true"), T0 + 4).await.version,
        1,
        "numbered per queue"
    );
    assert_eq!(schema_version(&store, "orders").await, 3);
    assert_eq!(schema_version(&store, "other").await, 1);
    assert_eq!(
        schema_history(&store, "orders").await,
        [owned(1, None, Some(wide)), owned(2, Some("email"), Some(email)), owned(3, None, None)],
        "the whole history, oldest first"
    );
    let history = store.payload_schemas(queue_name("orders")).await.unwrap();
    let current: Vec<u64> = crate::schemas::current(&history).iter().map(|v| v.version).collect();
    assert_eq!(current, [2], "the queue-wide schema was removed; the kind's is in force");
    assert_eq!(get(&store, task.id).await, task, "schemas leave stored tasks alone");
}

/// Schema versions are durable: a reopened store (after a close or a crash)
/// lists them and numbers the next change after them.
pub async fn payload_schemas_survive_a_reopen_and_a_crash<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    put_schema(&store, "q", None, Some("{}"), T0).await;
    put_schema(&store, "q", Some("k"), Some(r#"{"type":"object"}"#), T0 + 1).await;
    let store = reopen(&mut harness, store).await;
    assert_eq!(schema_version(&store, "q").await, 2, "after a reopen");
    assert_eq!(
        schema_history(&store, "q").await,
        [owned(1, None, Some("{}")), owned(2, Some("k"), Some(r#"{"type":"object"}"#))]
    );
    assert_eq!(put_schema(&store, "q", Some("k"), None, T0 + 2).await.version, 3, "numbering goes on");
    let store = harness.crash(store).await;
    assert_eq!(schema_version(&store, "q").await, 3, "after a crash");
    assert_eq!(schema_history(&store, "q").await.len(), 3);
}

// ---------------------------------------------------------------------------
// Effects.
// ---------------------------------------------------------------------------

/// `(kind, change, from, to)` of each transition, in order.
fn moves(effects: &crate::Effects) -> Vec<(String, Change, Option<TaskState>, Option<TaskState>)> {
    effects.transitions.iter().map(|t| (t.kind.clone(), t.change, t.from, t.to)).collect()
}

fn mv(
    kind: &str,
    change: Change,
    from: Option<TaskState>,
    to: Option<TaskState>,
) -> (String, Change, Option<TaskState>, Option<TaskState>) {
    (kind.to_owned(), change, from, to)
}

/// Every call that changes tasks answers a transition per task it changed, in
/// order, with the queue, kind, attempt and the time the task next needs the
/// timer; refused and replayed changes, heartbeats and reads report none; a
/// settings change names its queue.
pub async fn every_change_reports_its_transitions<H: Harness>(mut harness: H) {
    use TaskState::*;
    let store = harness.open().await;
    let q = "fx";
    let patch = QueueSettingsPatch {
        max_attempts: Some(2),
        dedup_window_ms: Some(1_000),
        ..exact_backoff(1_000, 1_000)
    };
    let changed = store.put_queue(queue_name(q), patch, T0).await.expect("put queue");
    assert!(changed.effects.transitions.is_empty(), "{changed:?}");
    assert_eq!(changed.effects.queues_changed, [q], "a settings change names its queue");

    // Enqueue: one ready, one delayed; a replay of a key adds nothing.
    let batch = vec![keyed("a", "key-a"), delayed("b", T0 + 5_000)];
    let changed = store.enqueue(queue_name(q), batch, T0).await.expect("enqueue");
    assert_eq!(
        moves(&changed.effects),
        [mv("a", Change::Enqueued, None, Some(Ready)), mv("b", Change::Enqueued, None, Some(Scheduled))]
    );
    assert_eq!(changed.effects.leasable(), [(q, 1)], "the ready task is leasable");
    assert_eq!(changed.effects.next_timer(), Some(T0 + 5_000), "the delayed task's run_at");
    let t = &changed.effects.transitions[0];
    assert_eq!((t.queue.as_str(), t.attempt, t.at), (q, 0, T0), "{t:?}");
    let replay = store.enqueue(queue_name(q), vec![keyed("a", "key-a")], T0 + 1).await.expect("replay");
    assert!(replay.effects.is_empty(), "a replayed enqueue changes nothing: {replay:?}");

    // Lease, heartbeat, ack; a replayed ack and a stale token add nothing.
    let leased = store
        .claim(Claim { queue: queue_name(q), max: 5, lease_ms: Some(10_000), worker: None }, T0 + 10)
        .await
        .expect("claim");
    assert_eq!(moves(&leased.effects), [mv("a", Change::Leased, Some(Ready), Some(Running))]);
    assert_eq!(
        (leased.effects.transitions[0].attempt, leased.effects.next_timer()),
        (1, Some(T0 + 10_010)),
        "the lease's expiry"
    );
    assert!(leased.effects.leasable().is_empty());
    let a = leased.value[0].clone();
    let extended = store.extend_lease(a.id, token(&a), 20_000, T0 + 20).await.expect("extend");
    assert!(extended.effects.is_empty(), "a heartbeat is no transition: {extended:?}");
    let ack = Ack { task_id: a.id, token: token(&a), result: None };
    let acked = store.complete(vec![ack.clone()], T0 + 30).await.expect("ack");
    assert_eq!(moves(&acked.effects), [mv("a", Change::Acked, Some(Running), Some(Succeeded))]);
    assert_eq!(acked.effects.leasable(), [(q, 1)], "a finished task frees a slot");
    let again = store
        .complete(vec![ack, Ack { task_id: a.id, token: "1.0".into(), result: None }], T0 + 31)
        .await
        .expect("ack again");
    assert!(again.effects.is_empty(), "replayed and refused acks change nothing: {again:?}");

    // Promotion by the timer, a nack with backoff, an expiry that uses the last attempt.
    let ticked = store.tick(T0 + 5_000).await.expect("tick");
    assert_eq!(moves(&ticked.effects), [mv("b", Change::Promoted, Some(Scheduled), Some(Ready))]);
    let b = claim_with(&store, q, 1, Some(1_000), T0 + 5_000).await.pop().expect("b");
    let nacked = store
        .fail(
            Nack { task_id: b.id, token: token(&b), error: None, retry_in_ms: None, dead: false },
            T0 + 5_001,
        )
        .await
        .expect("nack");
    assert_eq!(moves(&nacked.effects), [mv("b", Change::Nacked, Some(Running), Some(Scheduled))]);
    assert_eq!(nacked.effects.next_timer(), Some(T0 + 6_001), "the retry's run_at");
    store.tick(T0 + 6_001).await.expect("tick");
    let b = claim_with(&store, q, 1, Some(1_000), T0 + 6_001).await.pop().expect("b again");
    let expired = store.tick(T0 + 7_001).await.expect("tick");
    assert_eq!(
        moves(&expired.effects),
        [mv("b", Change::Expired, Some(Running), Some(Dead))],
        "out of attempts: dead"
    );
    assert_eq!(expired.effects.transitions[0].attempt, b.attempts);

    // A retry by hand, a cancel; cancelling again adds nothing.
    let retried = store.retry_dead(b.id, None, T0 + 8_000).await.expect("retry");
    assert_eq!(moves(&retried.effects), [mv("b", Change::Retried, Some(Dead), Some(Ready))]);
    let cancelled = store.cancel(b.id, T0 + 8_001).await.expect("cancel");
    assert_eq!(moves(&cancelled.effects), [mv("b", Change::Cancelled, Some(Ready), Some(Cancelled))]);
    let again = store.cancel(b.id, T0 + 8_002).await.expect("cancel again");
    assert!(again.effects.is_empty(), "{again:?}");

    // Retention 0: the next purge deletes both finished tasks (a is succeeded, b cancelled).
    let retention = QueueSettingsPatch { retention_ms: Some(0), ..QueueSettingsPatch::default() };
    store.put_queue(queue_name(q), retention, T0 + 9_000).await.expect("put queue");
    let mut purged = Vec::new();
    for second in 10..13 {
        let ticked = store.tick(T0 + second * 1_000).await.expect("tick");
        purged.extend(moves(&ticked.effects));
    }
    purged.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        purged,
        [mv("a", Change::Purged, Some(Succeeded), None), mv("b", Change::Purged, Some(Cancelled), None)],
        "a purge is a transition to nothing"
    );
}

// ---------------------------------------------------------------------------
// The event log.
// ---------------------------------------------------------------------------

/// Every event after `after`, read in pages of `page` until the log has nothing
/// more to give (waiting, with a deadline, while events of other transactions
/// are pending: on a shared database, other tests' transactions hold them back).
async fn read_log<S: Store>(store: &S, after: EventId, page: usize) -> EventPage {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut all = EventPage::default();
    let mut after = after;
    loop {
        let read = store.read_events(after, page).await.expect("read events");
        if let Some(last) = read.events.last() {
            after = last.id;
        }
        let (got, pending) = (read.events.len(), read.pending);
        all.events.extend(read.events);
        all.head = read.head;
        all.purged_through = read.purged_through;
        if got == 0 && !pending {
            return all;
        }
        if got == 0 {
            assert!(std::time::Instant::now() < deadline, "events stayed pending for 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// Transitions as the log gives them back: without `due`.
fn logged(transitions: &[cherga_core::Transition]) -> Vec<cherga_core::Transition> {
    transitions.iter().cloned().map(|t| cherga_core::Transition { due: None, ..t }).collect()
}

/// The event log holds every transition of every call, in commit order, with
/// ids that only grow; a reader resumes after any id and misses nothing; the
/// log and its numbering survive a reopen.
pub async fn the_event_log_holds_every_transition_in_order<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let q = "log";
    let mut expected = Vec::new();
    let patch = QueueSettingsPatch { max_attempts: Some(3), ..exact_backoff(1_000, 1_000) };
    store.put_queue(queue_name(q), patch, T0).await.expect("put queue");
    let enqueued =
        store.enqueue(queue_name(q), vec![task("a"), delayed("b", T0 + 2_000)], T0).await.expect("enqueue");
    expected.extend(logged(&enqueued.effects.transitions));
    let leased = store
        .claim(Claim { queue: queue_name(q), max: 1, lease_ms: None, worker: None }, T0 + 1)
        .await
        .expect("claim");
    expected.extend(logged(&leased.effects.transitions));
    let a = leased.value[0].clone();
    let acked = store
        .complete(vec![Ack { task_id: a.id, token: token(&a), result: Some("1".into()) }], T0 + 2)
        .await
        .expect("ack");
    expected.extend(logged(&acked.effects.transitions));
    let ticked = store.tick(T0 + 2_000).await.expect("tick");
    expected.extend(logged(&ticked.effects.transitions));
    let leased = store
        .claim(Claim { queue: queue_name(q), max: 1, lease_ms: None, worker: None }, T0 + 2_001)
        .await
        .expect("claim");
    expected.extend(logged(&leased.effects.transitions));
    let b = leased.value[0].clone();
    let nacked = store
        .fail(
            Nack { task_id: b.id, token: token(&b), error: None, retry_in_ms: None, dead: false },
            T0 + 2_002,
        )
        .await
        .expect("nack");
    expected.extend(logged(&nacked.effects.transitions));
    let cancelled = store.cancel(b.id, T0 + 2_003).await.expect("cancel");
    expected.extend(logged(&cancelled.effects.transitions));
    assert_eq!(expected.len(), 8, "{expected:?}");

    let log = read_log(&store, 0, 1_000).await;
    let ids: Vec<EventId> = log.events.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids grow: {ids:?}");
    let got: Vec<_> = log.events.iter().map(|e| e.transition.clone()).collect();
    assert_eq!(got, expected, "every transition, in order");
    assert_eq!(log.head, *ids.last().expect("events"), "the head is the last event");
    assert_eq!(log.purged_through, 0);

    // Resuming after any event gives exactly the rest, in pages of any size.
    for (i, &id) in ids.iter().enumerate() {
        let rest = read_log(&store, id, 2).await;
        assert_eq!(rest.events.iter().map(|e| e.id).collect::<Vec<_>>(), ids[i + 1..], "after event {i}");
    }

    // Closed and opened again: the same log, and new events come after it.
    let store = reopen(&mut harness, store).await;
    let again = read_log(&store, 0, 1_000).await;
    assert_eq!(again.events, log.events, "the log survives a reopen");
    store.enqueue(queue_name(q), vec![task("c")], T0 + 3_000).await.expect("enqueue");
    let newer = read_log(&store, log.head, 1_000).await;
    assert_eq!(newer.events.len(), 1, "{newer:?}");
    assert!(newer.events[0].id > log.head, "numbering goes on past the old head");
    assert_eq!(
        (newer.events[0].transition.kind.as_str(), newer.events[0].transition.change),
        ("c", Change::Enqueued)
    );
}

/// Events older than the log's retention (a day by default) are deleted by the
/// timer; the log then says up to which id it forgot, and numbering goes on.
pub async fn the_event_log_forgets_events_past_its_retention<H: Harness>(mut harness: H) {
    const DAY: Millis = 24 * 3_600_000;
    let store = harness.open().await;
    store.enqueue(queue_name("old"), vec![task("a"), task("b")], T0).await.expect("enqueue");
    let before = read_log(&store, 0, 100).await;
    assert_eq!(before.events.len(), 2);
    let old_head = before.head;

    store.enqueue(queue_name("old"), vec![task("c")], T0 + DAY).await.expect("enqueue");
    store.tick(T0 + DAY + 2_000).await.expect("tick");
    let after = read_log(&store, 0, 100).await;
    assert!(after.purged_through >= old_head, "the log says it forgot the old events: {after:?}");
    let kinds: Vec<&str> = after.events.iter().map(|e| e.transition.kind.as_str()).collect();
    assert_eq!(kinds, ["c"], "only the event inside the retention is left");
    assert!(after.events[0].id > after.purged_through);

    let store = reopen(&mut harness, store).await;
    store.enqueue(queue_name("old"), vec![task("d")], T0 + DAY + 3_000).await.expect("enqueue");
    let last = read_log(&store, 0, 100).await;
    assert!(last.events.iter().all(|e| e.id > old_head), "no id is given twice after a purge and a reopen");
    assert_eq!(last.events.len(), 2, "{last:?}");
}

// ---------------------------------------------------------------------------
// Bulk actions.
// ---------------------------------------------------------------------------

/// Runs `action` over the whole queue in steps of at most `max` tasks, as the
/// server does; returns how many tasks it changed and every step's transitions.
async fn act_all<S: Store>(
    store: &S,
    queue: &str,
    action: BulkAction,
    filter: TaskFilter,
    max: usize,
    now: Millis,
) -> (usize, Vec<cherga_core::Transition>) {
    let (mut changed, mut transitions, mut after) = (0, Vec::new(), None);
    for _ in 0..10_000 {
        let step = BulkStep { queue: queue_name(queue), action, filter: filter.clone(), after, max };
        let done = store
            .act_on_tasks(step.clone(), now)
            .await
            .unwrap_or_else(|e| panic!("act_on_tasks {step:?}: {e:?}"));
        assert!(done.value.changed <= max, "a step changes at most its max: {step:?} {:?}", done.value);
        assert_eq!(done.effects.transitions.len(), done.value.changed, "a transition per changed task");
        changed += done.value.changed;
        transitions.extend(done.effects.transitions);
        match done.value.next {
            Some(next) => after = Some(next),
            None => return (changed, transitions),
        }
    }
    panic!("{action:?} on {queue} never finished");
}

/// Makes `n` dead tasks of kinds `a`, `b` alternately (the even ones `a`) in
/// `queue`, one attempt each; returns them in enqueue order.
async fn dead_tasks<S: Store>(store: &S, queue: &str, n: usize, now: Millis) -> Vec<Task> {
    put(store, queue, QueueSettingsPatch { max_attempts: Some(1), ..QueueSettingsPatch::default() }, now)
        .await;
    let kinds: Vec<NewTask> = (0..n).map(|i| task(if i % 2 == 0 { "a" } else { "b" })).collect();
    store.enqueue(queue_name(queue), kinds, now).await.expect("enqueue");
    let leased = claim(store, queue, n, now + 1).await;
    assert_eq!(leased.len(), n);
    let mut dead = Vec::new();
    for task in &leased {
        dead.push(nack_ok(store, task, None, false, now + 2).await);
    }
    assert!(dead.iter().all(|t| t.state == TaskState::Dead), "{dead:?}");
    dead
}

/// A bulk retry sends back exactly the dead tasks its filter matches, in steps
/// of at most `max`, with a `retried` transition (and event) per task; tasks in
/// other states and of other kinds stay as they were.
pub async fn bulk_retry_moves_the_matching_dead_tasks<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let dead = dead_tasks(&store, "bulk", 7, T0).await;
    let ready = create(&store, "bulk", task("a"), T0 + 3).await;
    let head = read_log(&store, 0, 1_000).await.head;

    let filter = TaskFilter { kind: Some("a".into()), ..TaskFilter::default() };
    let (changed, transitions) = act_all(&store, "bulk", BulkAction::Retry, filter, 2, T0 + 10).await;
    let want: Vec<TaskId> = dead.iter().filter(|t| t.kind == "a").map(|t| t.id).collect();
    assert_eq!(changed, want.len(), "the four dead tasks of kind a");
    assert_eq!(transitions.iter().map(|t| t.task_id).collect::<Vec<_>>(), want, "in enqueue order");
    for t in &transitions {
        assert_eq!(
            (t.change, t.from, t.to, t.at),
            (Change::Retried, Some(TaskState::Dead), Some(TaskState::Ready), T0 + 10)
        );
    }
    for task in &dead {
        let now = get(&store, task.id).await;
        let want_state = if task.kind == "a" { TaskState::Ready } else { TaskState::Dead };
        assert_eq!(now.state, want_state, "{now:?}");
    }
    assert_eq!(get(&store, ready.id).await, ready, "a ready task is no retry's business");
    assert_counts(&info(&store, "bulk").await, &[(TaskState::Ready, 5), (TaskState::Dead, 3)]);
    let log = read_log(&store, head, 1_000).await;
    assert_eq!(log.events.iter().map(|e| e.transition.clone()).collect::<Vec<_>>(), logged(&transitions));

    // The retried tasks are leased again; a second retry finds only kind b.
    assert_eq!(claim(&store, "bulk", 10, T0 + 11).await.len(), 5);
    let (changed, _) =
        act_all(&store, "bulk", BulkAction::Retry, TaskFilter::default(), 1_000, T0 + 12).await;
    assert_eq!(changed, 3);
    assert_not_found(
        store
            .act_on_tasks(
                BulkStep {
                    queue: queue_name("nope"),
                    action: BulkAction::Retry,
                    filter: TaskFilter::default(),
                    after: None,
                    max: 10,
                },
                T0,
            )
            .await
            .map(Changed::into_value),
        "a bulk action on an unknown queue",
    );
}

/// A bulk cancel takes scheduled and ready tasks (dirty ones too, after a
/// crash), never running ones; the enqueue-time filter and the limit hold.
pub async fn bulk_cancel_leaves_running_tasks_alone<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let first = create(&store, "c", task("a"), T0).await;
    let running = claim_one(&store, "c", "a", T0 + 1).await;
    assert_eq!(running.id, first.id);
    let early = create(&store, "c", task("b"), T0 + 100).await;
    let later = create(&store, "c", delayed("b", T0 + 60_000), T0 + 200).await;
    let last = create(&store, "c", task("b"), T0 + 300).await;
    let store = harness.crash(store).await;

    let filter = TaskFilter { enqueued_after: Some(T0 + 150), ..TaskFilter::default() };
    let (changed, transitions) = act_all(&store, "c", BulkAction::Cancel, filter, 1_000, T0 + 400).await;
    assert_eq!(changed, 2, "{transitions:?}");
    assert_eq!(transitions.iter().map(|t| t.task_id).collect::<Vec<_>>(), [later.id, last.id]);
    assert_eq!(transitions[0].from, Some(TaskState::Scheduled));
    assert!(transitions.iter().all(|t| t.change == Change::Cancelled && t.to == Some(TaskState::Cancelled)));
    assert_eq!(get(&store, early.id).await.state, TaskState::Ready, "enqueued before the filter's time");
    assert_eq!(get(&store, running.id).await.state, TaskState::Running, "a lease is not taken back");

    let filter = TaskFilter { states: vec![TaskState::Ready], ..TaskFilter::default() };
    let (changed, _) = act_all(&store, "c", BulkAction::Cancel, filter, 1_000, T0 + 500).await;
    assert_eq!(changed, 1);
    assert_counts(&info(&store, "c").await, &[(TaskState::Running, 1), (TaskState::Cancelled, 3)]);
    // Nothing is left to cancel: running tasks stay even when named.
    let filter = TaskFilter { states: vec![TaskState::Running], ..TaskFilter::default() };
    let (changed, _) = act_all(&store, "c", BulkAction::Cancel, filter, 1_000, T0 + 600).await;
    assert_eq!(changed, 0);
    let store = reopen(&mut harness, store).await;
    assert_counts(&info(&store, "c").await, &[(TaskState::Running, 1), (TaskState::Cancelled, 3)]);
}

/// A bulk purge deletes finished tasks now, each with a `purged` transition;
/// their numbers are not given again, and a deleted queue is gone with its
/// keys, refused while it holds tasks.
pub async fn bulk_purge_and_queue_deletion<H: Harness>(mut harness: H) {
    let store = harness.open().await;
    let dead = dead_tasks(&store, "p", 4, T0).await;
    let with_key = create(&store, "p", keyed("k", "key-1"), T0 + 3).await;
    let filter = TaskFilter { kind: Some("b".into()), ..TaskFilter::default() };
    let (changed, transitions) = act_all(&store, "p", BulkAction::Purge, filter, 1, T0 + 10).await;
    assert_eq!(changed, 2);
    assert!(transitions.iter().all(|t| t.change == Change::Purged && t.from == Some(TaskState::Dead)));
    for task in dead.iter().filter(|t| t.kind == "b") {
        assert_not_found(store.get_task(task.id).await, "a purged task");
    }
    assert_counts(&info(&store, "p").await, &[(TaskState::Ready, 1), (TaskState::Dead, 2)]);

    match store.delete_queue(queue_name("p"), T0 + 11).await.map(Changed::into_value) {
        Err(StoreError::NotEmpty(3)) => {}
        other => panic!("deleting a queue with three tasks: {other:?}"),
    }
    let every = TaskFilter { states: TaskState::ALL.to_vec(), ..TaskFilter::default() };
    let (changed, transitions) = act_all(&store, "p", BulkAction::Purge, every, 1_000, T0 + 12).await;
    assert_eq!(changed, 3, "the unfinished task too, when asked: {transitions:?}");
    assert_eq!(transitions.last().map(|t| (t.task_id, t.from)), Some((with_key.id, Some(TaskState::Ready))));
    assert!(claim(&store, "p", 10, T0 + 13).await.is_empty(), "a purged ready task is not leased");
    store.delete_queue(queue_name("p"), T0 + 14).await.expect("delete an empty queue");
    assert_not_found(store.get_queue(queue_name("p")).await, "a deleted queue");
    assert_not_found(store.delete_queue(queue_name("p"), T0 + 15).await.map(drop), "deleted twice");
    assert!(list_queues(&store).await.iter().all(|q| q.name != "p"));

    // Made again: fresh settings, the key is free, no number given twice.
    let store = reopen(&mut harness, store).await;
    assert_not_found(store.get_queue(queue_name("p")).await, "a deleted queue after a reopen");
    let again = match enqueue(&store, "p", keyed("k", "key-1"), T0 + 20).await {
        Ok(Enqueued::Created(task)) => task,
        other => panic!("the key of a deleted queue is free again: {other:?}"),
    };
    assert!(dead.iter().chain([&with_key]).all(|t| t.id != again.id && t.id.seq() != again.id.seq()));
    assert_eq!(info(&store, "p").await.settings, QueueSettings::defaults());
}

#[cfg(test)]
mod tests {
    use super::{NO_SKIP_VAR, POSTGRES_URL_VAR, SKIPS_FILE_VAR, postgres_url_in};
    use std::collections::HashMap;

    /// Runs `postgres_url_in` with `vars` as the whole environment and a fresh
    /// skips file; returns its answer (`Err` if it panicked) and the file's lines.
    fn check(vars: &[(&str, &str)]) -> (Result<Option<String>, String>, Vec<String>) {
        let file = std::env::temp_dir().join(format!("cherga-skips-{:016x}", fastrand_u64()));
        let mut env: HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        env.insert(SKIPS_FILE_VAR.to_owned(), file.to_string_lossy().into_owned());
        let answer = std::panic::catch_unwind(|| postgres_url_in(&|name| env.get(name).cloned()))
            .map_err(|panic| panic.downcast_ref::<String>().cloned().unwrap_or_default());
        let lines = std::fs::read_to_string(&file).unwrap_or_default().lines().map(str::to_owned).collect();
        let _ = std::fs::remove_file(&file);
        (answer, lines)
    }

    /// Unique enough for file names, without a dependency.
    fn fastrand_u64() -> u64 {
        use std::hash::{BuildHasher as _, RandomState};
        RandomState::new().hash_one(std::time::SystemTime::now())
    }

    #[test]
    fn a_skip_is_recorded_with_the_tests_name() {
        let (answer, lines) = check(&[]);
        assert_eq!(answer, Ok(None));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("a_skip_is_recorded_with_the_tests_name"), "{lines:?}");
        assert!(lines[0].ends_with(&format!("{POSTGRES_URL_VAR} not set")), "{lines:?}");

        let (answer, lines) = check(&[(POSTGRES_URL_VAR, " "), (NO_SKIP_VAR, "0")]);
        assert_eq!((answer, lines.len()), (Ok(None), 1), "a blank URL is no URL; 0 requires nothing");
    }

    #[test]
    fn a_database_means_no_skip() {
        let url = "postgres://root@127.0.0.1:5432/test";
        let (answer, lines) = check(&[(POSTGRES_URL_VAR, url), (NO_SKIP_VAR, "1")]);
        assert_eq!((answer, lines), (Ok(Some(url.to_owned())), Vec::new()));
    }

    #[test]
    fn a_required_database_turns_the_skip_into_a_failure() {
        let (answer, lines) = check(&[(NO_SKIP_VAR, "1")]);
        let message = answer.expect_err("no skip when the database is required");
        assert!(message.contains("must run, not skip"), "{message}");
        assert!(message.contains("a_required_database_turns_the_skip_into_a_failure"), "{message}");
        assert_eq!(lines, Vec::<String>::new(), "a failure is not recorded as a skip");
    }
}
