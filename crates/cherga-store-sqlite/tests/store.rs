//! Integration tests of the embedded store: the shared conformance suite on a fresh
//! temporary database per test, recovery after a crash (`kill -9` of a real
//! process) and after power loss (a copy of the files taken while the store runs),
//! and a property test that drives random operation sequences through the store and
//! checks the broker's invariants after every step.

use cherga_core::{
    AttemptOutcome, Millis, NewTask, QueueName, QueueSettingsPatch, Refusal, Task, TaskId, TaskState,
    fingerprint,
};
use cherga_store::testkit::{self, Harness, T0};
use cherga_store::{Ack, Claim, Enqueued, ListTasks, Nack, QueueInfo, Store, StoreError};
use cherga_store_sqlite::{DataDirInUse, Limits, Options, SqliteStore};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

/// A SQLite store in its own temporary directory, deleted when the harness drops.
struct TempSqlite {
    dir: tempfile::TempDir,
    durable: bool,
    limits: Limits,
}

impl TempSqlite {
    /// Without fsync: for tests that do not test durability.
    fn fast() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
            durable: false,
            limits: Limits::STANDARD,
        }
    }

    /// A few hundred bytes of dirty tasks and of journal: most tasks go to their
    /// rows at once, and the oldest dirty ones are settled in almost every batch.
    fn tiny_limits(self) -> Self {
        Self { limits: Limits { dirty_bytes: 3_000, journal_bytes: 1_500 }, ..self }
    }

    fn durable() -> Self {
        Self { durable: true, ..Self::fast() }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("cherga.db")
    }
}

impl Harness for TempSqlite {
    type Store = SqliteStore;

    async fn open(&mut self) -> SqliteStore {
        open_with(&self.path(), self.durable, self.limits)
    }

    /// A copy of the files taken while `store` runs: what it opens to was
    /// replayed from the journal over the rows.
    async fn crash(&mut self, store: SqliteStore) -> SqliteStore {
        let copy = copy_of(self);
        store.close().await;
        drop(store);
        *self = copy;
        self.open().await
    }
}

fn open(path: &Path, durable: bool) -> SqliteStore {
    open_with(path, durable, Limits::STANDARD)
}

fn open_with(path: &Path, durable: bool, limits: Limits) -> SqliteStore {
    SqliteStore::open(Options { path: path.to_owned(), durable, limits, ..Options::in_dir(Path::new("")) })
        .unwrap_or_else(|e| panic!("open {}: {e:?}", path.display()))
}

/// A copy of the database and its WAL as they are on disk while `live` runs, as
/// after a power loss: what the copy opens to was recovered from the journal.
fn copy_of(live: &TempSqlite) -> TempSqlite {
    let copy = TempSqlite { dir: tempfile::tempdir().expect("temporary directory"), ..*live };
    let wal = live.dir.path().join("cherga.db-wal");
    std::fs::copy(live.path(), copy.path()).expect("copy the database file");
    if wal.exists() {
        std::fs::copy(&wal, copy.dir.path().join("cherga.db-wal")).expect("copy the WAL");
    }
    copy
}

mod conformance {
    use super::TempSqlite;
    cherga_store::conformance_tests!(TempSqlite::fast());
}

// The reopen cases once more with fsync on, as the server runs.

#[tokio::test]
async fn durable_reopen_keeps_every_task_and_queue() {
    testkit::reopen_keeps_every_task_and_queue(TempSqlite::durable()).await;
}

#[tokio::test]
async fn durable_reopen_honours_leases_and_rebuilds_index() {
    testkit::reopen_honours_leases_and_rebuilds_index(TempSqlite::durable()).await;
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

fn queue_name(name: &str) -> QueueName {
    QueueName::new(name).expect("valid test queue name")
}

fn new_task(
    kind: &str,
    key: Option<String>,
    group: Option<String>,
    priority: i32,
    run_at: Option<Millis>,
) -> NewTask {
    NewTask {
        kind: kind.to_owned(),
        payload: format!(r#"{{"kind":"{kind}"}}"#),
        priority,
        run_at,
        idempotency_key: key,
        group,
        max_attempts: None,
    }
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

fn counts_of(tasks: &[Task]) -> [u64; 6] {
    let mut counts = [0; 6];
    for task in tasks {
        counts[usize::from(task.state.code())] += 1;
    }
    counts
}

/// The counts `get_queue` reports are those of the tasks `list_tasks` returns.
async fn assert_counts_agree<S: Store>(store: &S, queue: &str) -> (QueueInfo, Vec<Task>) {
    let tasks = list_all(store, queue).await;
    let info =
        store.get_queue(queue_name(queue)).await.unwrap_or_else(|e| panic!("get_queue {queue}: {e:?}"));
    assert_eq!(info.counts, counts_of(&tasks), "counts of {queue} from get_queue vs from list_tasks");
    (info, tasks)
}

fn token(task: &Task) -> String {
    task.lease.as_ref().unwrap_or_else(|| panic!("no lease: {task:?}")).token.as_str().to_owned()
}

/// A mixed workload that leaves tasks in every state, in two queues.
async fn mixed_workload(store: &SqliteStore) {
    let patch =
        QueueSettingsPatch { concurrency: Some(Some(8)), max_attempts: Some(4), ..Default::default() };
    store
        .put_queue(queue_name("jobs"), patch, T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("put_queue");
    let batch: Vec<NewTask> = (0..50)
        .map(|i| new_task(&format!("batch-{i}"), None, Some(format!("g{}", i % 5)), i % 3, None))
        .collect();
    let items = store
        .enqueue(queue_name("jobs"), batch, T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("batch enqueue");
    assert!(items.iter().all(|item| matches!(item, Ok(Enqueued::Created(_)))), "{items:?}");
    for i in 0..10 {
        let new =
            new_task(&format!("keyed-{i}"), Some(format!("key-{i}")), None, 0, Some(T0 + 60_000 * (i % 2)));
        store
            .enqueue(queue_name("other"), vec![new], T0 + 1)
            .await
            .map(cherga_store::Changed::into_value)
            .expect("enqueue");
    }
    let claim =
        Claim { queue: queue_name("jobs"), max: 8, lease_ms: Some(3_600_000), worker: Some("w".into()) };
    let leased = store.claim(claim, T0 + 2).await.map(cherga_store::Changed::into_value).expect("claim");
    assert_eq!(leased.len(), 5, "one per group: {leased:?}");
    let acks = leased[..2]
        .iter()
        .map(|t| Ack { task_id: t.id, token: token(t), result: Some("1".into()) })
        .collect();
    let acked = store.complete(acks, T0 + 3).await.map(cherga_store::Changed::into_value).expect("ack");
    assert!(acked.iter().all(Result::is_ok), "{acked:?}");
    let nack = Nack {
        task_id: leased[2].id,
        token: token(&leased[2]),
        error: Some("e".into()),
        retry_in_ms: None,
        dead: true,
    };
    store.fail(nack, T0 + 4).await.map(cherga_store::Changed::into_value).expect("nack");
    let nack = Nack {
        task_id: leased[3].id,
        token: token(&leased[3]),
        error: None,
        retry_in_ms: Some(5),
        dead: false,
    };
    store.fail(nack, T0 + 4).await.map(cherga_store::Changed::into_value).expect("nack");
    let others = list_all(store, "other").await;
    store.cancel(others[0].id, T0 + 5).await.map(cherga_store::Changed::into_value).expect("cancel");
    store.tick(T0 + 10).await.map(cherga_store::Changed::into_value).expect("tick");
}

async fn snapshot(store: &SqliteStore) -> (Vec<Task>, Vec<Task>, Vec<QueueInfo>) {
    let jobs = list_all(store, "jobs").await;
    let other = list_all(store, "other").await;
    let queues = store.list_queues().await.expect("list_queues");
    (jobs, other, queues)
}

// ---------------------------------------------------------------------------
// One store per database.
// ---------------------------------------------------------------------------

/// Opens `path` expecting the refusal of a database another store holds.
#[track_caller]
fn assert_in_use(path: &Path) -> String {
    match SqliteStore::open(Options {
        path: path.to_owned(),
        durable: false,
        ..Options::in_dir(Path::new(""))
    }) {
        Err(StoreError::Unavailable(source)) => {
            let Some(in_use) = source.downcast_ref::<DataDirInUse>() else {
                panic!("open of a database in use: expected a DataDirInUse source, got {source:?}")
            };
            assert_eq!(in_use.holder, Some(std::process::id()), "the holder's pid: {in_use:?}");
            source.to_string()
        }
        Err(other) => panic!("open of a database in use: expected Unavailable, got {other:?}"),
        Ok(_) => panic!("a second store opened {} while the first has it open", path.display()),
    }
}

/// A second store on a database that a store of the same process has open is
/// refused, with a message naming the directory and the holder; once the first
/// is closed (or dropped) the database opens again, with everything in it.
#[tokio::test]
async fn a_second_store_on_an_open_database_is_refused_until_the_first_closes() {
    let dir = TempSqlite::fast();
    let first = open(&dir.path(), false);
    let created = first
        .enqueue(queue_name("q"), vec![new_task("a", None, None, 0, None)], T0)
        .await
        .map(cherga_store::Changed::into_value);
    let created = created.expect("enqueue").pop().expect("one answer").expect("created");

    let message = assert_in_use(&dir.path());
    let dir_text = dir.dir.path().display().to_string();
    assert!(
        message.contains(&format!("the data directory {dir_text} is in use")),
        "the message names the directory: {message}"
    );
    assert!(message.contains(&format!("pid {}", std::process::id())), "and the holder: {message}");
    let lock = std::fs::read_to_string(dir.dir.path().join("cherga.db.lock")).expect("the lock file");
    assert_eq!(lock.trim(), std::process::id().to_string(), "the lock file holds the holder's pid");

    first.close().await;
    let second = open(&dir.path(), false);
    let task = second.get_task(created.task().id).await.expect("the task, through the second store");
    assert_eq!(task.kind, "a");
    assert_in_use(&dir.path());
    drop(second);
    let third = open(&dir.path(), false);
    assert_eq!(list_all(&third, "q").await.len(), 1);
    third.close().await;
    drop(first);
}

/// The mode bits of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// The modes of the files in `dir`, by name.
fn modes_in(dir: &Path) -> Vec<(String, u32)> {
    let mut modes: Vec<(String, u32)> = std::fs::read_dir(dir)
        .expect("list the directory")
        .map(|entry| {
            let path = entry.expect("an entry").path();
            (path.file_name().expect("a name").to_string_lossy().into_owned(), mode_of(&path))
        })
        .collect();
    modes.sort();
    modes
}

/// A data directory and store files that other users may read (made by an
/// older cherga, or by hand) are made private at open; a shared directory with
/// the sticky bit, such as `/tmp`, is left as it is, its store files private.
#[tokio::test]
async fn an_open_makes_a_data_directory_open_to_other_users_private() {
    let dir = TempSqlite::durable();
    let store = open(&dir.path(), true);
    store
        .enqueue(queue_name("q"), vec![new_task("a", None, None, 0, None)], T0)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("enqueue");
    drop(store);
    chmod(dir.dir.path(), 0o755);
    let files = modes_in(dir.dir.path());
    for (name, _) in &files {
        chmod(&dir.dir.path().join(name), 0o644);
    }
    assert!(files.len() >= 2, "the database and its lock at least: {files:?}");

    let store = open(&dir.path(), true);
    assert_eq!(format!("{:04o}", mode_of(dir.dir.path())), "0700", "the data directory");
    let modes = modes_in(dir.dir.path());
    assert!(modes.iter().all(|(_, mode)| *mode == 0o600), "every file 0600: {modes:?}");
    assert_eq!(list_all(&store, "q").await.len(), 1, "and the data is all there");
    store.close().await;

    let shared = dir.dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o1777);
    let store = open(&shared.join("cherga.db"), false);
    assert_eq!(format!("{:04o}", mode_of(&shared)), "1777", "a shared directory is left alone");
    let modes = modes_in(&shared);
    assert!(modes.iter().all(|(_, mode)| *mode == 0o600), "every file 0600: {modes:?}");
    store.close().await;
}

// ---------------------------------------------------------------------------
// Crash and power loss.
// ---------------------------------------------------------------------------

/// Dropping the store without `close` (a panicking server, say) loses nothing.
#[tokio::test]
async fn drop_without_close_then_reopen_keeps_everything() {
    let dir = TempSqlite::durable();
    let store = open(&dir.path(), true);
    mixed_workload(&store).await;
    let before = snapshot(&store).await;
    drop(store);

    let store = open(&dir.path(), true);
    let after = snapshot(&store).await;
    assert_eq!(after.0, before.0, "tasks of jobs after drop and reopen");
    assert_eq!(after.1, before.1, "tasks of other after drop and reopen");
    assert_eq!(after.2, before.2, "queues after drop and reopen");
    assert_counts_agree(&store, "jobs").await;
    store.close().await;
}

/// Power loss right after acknowledged writes: the files as they are on disk while
/// the store still runs (database plus write-ahead log, no checkpoint, no shared
/// memory index) must open to exactly what was acknowledged.
#[tokio::test]
async fn copy_of_open_database_has_every_acknowledged_write() {
    let live = TempSqlite::durable();
    let store = open(&live.path(), true);
    mixed_workload(&store).await;
    let before = snapshot(&store).await;

    let copy = TempSqlite::durable();
    let wal = live.dir.path().join("cherga.db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_len > 0, "the acknowledged writes should still be in the WAL, which this test must copy");
    // The WAL was prepared to its working size at open: the copy holds the
    // frames written, then zeros, which recovery must read past as the end.
    assert!(
        wal_len >= 32 << 20,
        "a durable store's WAL is prepared to its working size, got {wal_len} bytes"
    );
    std::fs::copy(live.path(), copy.path()).expect("copy the database file");
    std::fs::copy(&wal, copy.dir.path().join("cherga.db-wal")).expect("copy the WAL");

    let recovered = open(&copy.path(), true);
    let after = snapshot(&recovered).await;
    assert_eq!(after.0, before.0, "tasks of jobs in the copy");
    assert_eq!(after.1, before.1, "tasks of other in the copy");
    assert_eq!(after.2, before.2, "queues in the copy");
    assert_counts_agree(&recovered, "jobs").await;

    // Leases taken before the "power loss" are honoured by the recovered store.
    let running: Vec<&Task> = after.0.iter().filter(|t| t.state == TaskState::Running).collect();
    assert_eq!(running.len(), 1, "{running:?}");
    let acks = running.iter().map(|t| Ack { task_id: t.id, token: token(t), result: None }).collect();
    let acked = recovered
        .complete(acks, T0 + 100)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("ack on the copy");
    assert!(acked.iter().all(Result::is_ok), "acks with leases from before the power loss: {acked:?}");
    // The rebuilt index leases the next task of each free group.
    let claim = Claim { queue: queue_name("jobs"), max: 100, lease_ms: None, worker: None };
    let leased = recovered
        .claim(claim, T0 + 100)
        .await
        .map(cherga_store::Changed::into_value)
        .expect("claim on the copy");
    let groups: HashSet<_> = leased.iter().map(|t| t.group.clone()).collect();
    assert_eq!((groups.len(), leased.len()), (5, 5), "one task of each of the 5 groups: {leased:?}");
    recovered.close().await;
    store.close().await;
}

/// Writes that never pause still let the WAL start again: the writer does not
/// checkpoint inside its commits, so without the checkpointer, or the writer's own
/// checkpoint past its hard limit, this WAL would grow past 100 MB.
#[tokio::test]
async fn wal_stays_bounded_under_writes_that_never_pause() {
    let dir = TempSqlite::fast();
    let store = open(&dir.path(), false);
    let queue = queue_name("big");
    let payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024));
    for _ in 0..300 {
        let tasks = (0..10)
            .map(|_| NewTask { payload: payload.clone(), ..new_task("k", None, None, 0, None) })
            .collect();
        let created = store
            .enqueue(queue.clone(), tasks, T0)
            .await
            .map(cherga_store::Changed::into_value)
            .expect("enqueue");
        assert!(created.iter().all(Result::is_ok));
    }
    let wal = std::fs::metadata(dir.dir.path().join("cherga.db-wal")).expect("the WAL").len();
    assert!(wal < 40 << 20, "the WAL is {wal} bytes after 300 batches of 160 KiB");
    let info = store.get_queue(queue).await.expect("queue");
    assert_eq!(info.count(TaskState::Ready), 3_000);
    store.close().await;
}

const CHILD_ENV: &str = "CHERGA_TEST_KILL_CHILD_DB";
/// The child is killed after this many acks; its workload stops on its own long after.
const ACKS_BEFORE_KILL: usize = 150;
const CHILD_MAX_STEPS: i64 = 100_000;

/// `kill -9` of a process in the middle of writing: every write it heard `Ok` for
/// (and said so on stdout) is there after a restart, and the rest is consistent.
#[test]
fn kill_9_keeps_every_acknowledged_write() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        child_workload(PathBuf::from(path));
        return;
    }
    let dir = TempSqlite::durable();
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args(["kill_9_keeps_every_acknowledged_write", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child test process");
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut created: Vec<(String, TaskId, Option<String>)> = Vec::new();
    let mut leased: HashMap<TaskId, String> = HashMap::new();
    let mut acked: HashSet<TaskId> = HashSet::new();
    let mut killed = false;
    for line in stdout.lines() {
        let line = line.expect("read the child's stdout");
        let words: Vec<&str> = line.split_whitespace().collect();
        let id = |i: usize| words.get(i).and_then(|w| TaskId::parse(w));
        match words.first() {
            Some(&"CREATED") if words.len() >= 3 => {
                let key = words.get(3).map(|k| (*k).to_owned());
                created.push((words[1].to_owned(), id(2).expect("task id"), key));
            }
            Some(&"LEASED") if words.len() == 3 => {
                leased.insert(id(1).expect("task id"), words[2].to_owned());
            }
            Some(&"ACKED") if words.len() == 2 => {
                acked.insert(id(1).expect("task id"));
            }
            _ => {}
        }
        if acked.len() >= ACKS_BEFORE_KILL && !killed {
            child.kill().expect("SIGKILL the child");
            killed = true;
        }
    }
    let status = child.wait().expect("wait for the child");
    assert!(killed, "the child ended ({status}) before {ACKS_BEFORE_KILL} acks; saw {} acks", acked.len());
    assert!(!status.success(), "the child must have died of SIGKILL, not ended: {status}");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let store = open(&dir.path(), true);
        let now = T0 + CHILD_MAX_STEPS + 1;
        for (queue, id, key) in &created {
            let task = store
                .get_task(*id)
                .await
                .unwrap_or_else(|e| panic!("created task {id} in {queue} lost: {e:?}"));
            assert_eq!(&task.queue, queue);
            if let Some(key) = key {
                let again = new_task(&task.kind, Some(key.clone()), None, 0, None);
                let mut items = store
                    .enqueue(queue_name(queue), vec![again], now)
                    .await
                    .map(cherga_store::Changed::into_value)
                    .expect("enqueue");
                match items.pop() {
                    Some(Ok(Enqueued::Replayed(replayed))) => assert_eq!(replayed.id, *id, "key {key}"),
                    other => panic!("key {key} after the crash: expected Replayed of {id}, got {other:?}"),
                }
            }
        }
        let mut still_running = Vec::new();
        for (id, leased_token) in &leased {
            let task = store.get_task(*id).await.unwrap_or_else(|e| panic!("leased task {id} lost: {e:?}"));
            assert_eq!(
                task.lease.as_ref().map(|l| l.token.as_str()),
                Some(leased_token.as_str()),
                "{task:?}"
            );
            if acked.contains(id) {
                assert_eq!(task.state, TaskState::Succeeded, "acked before the crash: {task:?}");
            } else {
                // The ack may have committed without the child living to say so.
                assert!(matches!(task.state, TaskState::Running | TaskState::Succeeded), "{task:?}");
                if task.state == TaskState::Running {
                    still_running.push(Ack { task_id: *id, token: leased_token.clone(), result: None });
                }
            }
        }
        assert!(acked.iter().all(|id| leased.contains_key(id)), "every acked task was leased first");
        let results = store
            .complete(still_running, now)
            .await
            .map(cherga_store::Changed::into_value)
            .expect("ack after restart");
        assert!(results.iter().all(Result::is_ok), "leases taken before the crash still hold: {results:?}");
        for queue in ["crash", "background"] {
            let (_, tasks) = assert_counts_agree(&store, queue).await;
            let n_created = created.iter().filter(|(q, _, _)| q == queue).count();
            assert!(
                tasks.len() >= n_created,
                "{queue}: {} tasks stored, {n_created} acknowledged",
                tasks.len()
            );
        }
        store.close().await;
    });
}

/// The child's side: write as fast as possible, from several tasks at once, and
/// report each acknowledged write on stdout until killed.
fn child_workload(dir: PathBuf) {
    fn say(line: String) {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").expect("stdout");
        stdout.flush().expect("stdout");
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let store = Arc::new(open(&dir.join("cherga.db"), true));
        for worker in 0..2 {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..CHILD_MAX_STEPS {
                    let new = new_task(&format!("bg-{worker}-{i}"), None, None, 0, None);
                    let mut items = store
                        .enqueue(queue_name("background"), vec![new], T0 + i)
                        .await
                        .map(cherga_store::Changed::into_value)
                        .expect("enqueue");
                    if let Some(Ok(Enqueued::Created(task))) = items.pop() {
                        say(format!("CREATED background {}", task.id));
                    }
                }
            });
        }
        for i in 0..CHILD_MAX_STEPS {
            let now = T0 + i;
            let key = format!("key-{i}");
            let new = new_task(&format!("t{i}"), Some(key.clone()), None, 0, None);
            let mut items = store
                .enqueue(queue_name("crash"), vec![new], now)
                .await
                .map(cherga_store::Changed::into_value)
                .expect("enqueue");
            if let Some(Ok(Enqueued::Created(task))) = items.pop() {
                say(format!("CREATED crash {} {key}", task.id));
            }
            if i % 2 == 1 {
                let claim =
                    Claim { queue: queue_name("crash"), max: 1, lease_ms: Some(3_600_000), worker: None };
                for task in
                    store.claim(claim, now).await.map(cherga_store::Changed::into_value).expect("claim")
                {
                    say(format!("LEASED {} {}", task.id, token(&task)));
                    if i % 4 == 3 {
                        let ack = Ack { task_id: task.id, token: token(&task), result: Some("1".into()) };
                        let mut results = store
                            .complete(vec![ack], now)
                            .await
                            .map(cherga_store::Changed::into_value)
                            .expect("ack");
                        if let Some(Ok(_)) = results.pop() {
                            say(format!("ACKED {}", task.id));
                        }
                    }
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Property test: random operation sequences.
// ---------------------------------------------------------------------------

mod random_operations {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const QUEUE: &str = "prop";
    const LEASE_MS: i64 = 2_000;
    const MAX_ATTEMPTS: u32 = 3;

    #[derive(Debug, Clone)]
    enum Op {
        /// With a key and not `vary`, the request is the key's usual one, so that
        /// replays are common; with `vary`, it may differ and be refused.
        Enqueue {
            group: Option<u8>,
            priority: i8,
            key: Option<u8>,
            vary: bool,
            delay_ms: Option<u16>,
        },
        Claim {
            max: u8,
        },
        /// Without `stale`, `pick` chooses among running tasks and presents the
        /// current lease; with it, among all tasks, presenting a token that is not
        /// the current lease.
        Ack {
            pick: Index,
            stale: Option<Index>,
        },
        Nack {
            pick: Index,
            stale: Option<Index>,
            dead: bool,
            retry_in_ms: Option<u16>,
        },
        Extend {
            pick: Index,
            stale: Option<Index>,
        },
        Cancel {
            pick: Index,
        },
        RetryDead {
            pick: Index,
        },
        Tick {
            advance_ms: u16,
        },
        Configure {
            concurrency: Option<u8>,
            paused: bool,
        },
        Reopen,
        /// Carry on with a copy of the files taken while the store runs: the
        /// journal is replayed over the rows, as after a crash.
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        let stale = proptest::option::weighted(0.3, any::<Index>());
        prop_oneof![
            4 => (
                proptest::option::of(0u8..3),
                -1i8..=1,
                proptest::option::weighted(0.4, 0u8..4),
                proptest::bool::weighted(0.3),
                proptest::option::weighted(0.2, 0u16..3_000),
            )
                .prop_map(|(group, priority, key, vary, delay_ms)| Op::Enqueue { group, priority, key, vary, delay_ms }),
            4 => (1u8..4).prop_map(|max| Op::Claim { max }),
            3 => (any::<Index>(), stale.clone()).prop_map(|(pick, stale)| Op::Ack { pick, stale }),
            2 => (any::<Index>(), stale.clone(), proptest::bool::weighted(0.2), proptest::option::of(0u16..2_000))
                .prop_map(|(pick, stale, dead, retry_in_ms)| Op::Nack { pick, stale, dead, retry_in_ms }),
            1 => (any::<Index>(), stale).prop_map(|(pick, stale)| Op::Extend { pick, stale }),
            1 => any::<Index>().prop_map(|pick| Op::Cancel { pick }),
            1 => any::<Index>().prop_map(|pick| Op::RetryDead { pick }),
            3 => (0u16..3_000).prop_map(|advance_ms| Op::Tick { advance_ms }),
            1 => (proptest::option::of(1u8..4), proptest::bool::weighted(0.2))
                .prop_map(|(concurrency, paused)| Op::Configure { concurrency, paused }),
            1 => Just(Op::Reopen),
            1 => Just(Op::Crash),
        ]
    }

    /// The store under test and what the test knows from outside it.
    struct Run {
        harness: TempSqlite,
        store: Option<SqliteStore>,
        now: Millis,
        /// Every task created, in enqueue order.
        ids: Vec<TaskId>,
        /// Every token ever handed out, per task.
        tokens: HashMap<TaskId, Vec<String>>,
        /// The highest attempts seen per task.
        attempts: HashMap<TaskId, u32>,
        /// The request and task of each idempotency key.
        keys: HashMap<String, (NewTask, TaskId)>,
        concurrency: Option<u32>,
        paused: bool,
    }

    impl Run {
        async fn new(tiny_limits: bool) -> Self {
            let mut harness = if tiny_limits { TempSqlite::fast().tiny_limits() } else { TempSqlite::fast() };
            let store = harness.open().await;
            let patch = QueueSettingsPatch {
                lease_ms: Some(LEASE_MS),
                max_attempts: Some(MAX_ATTEMPTS),
                backoff_initial_ms: Some(100),
                backoff_max_ms: Some(1_000),
                backoff_jitter: Some(0.5),
                ..Default::default()
            };
            store
                .put_queue(queue_name(QUEUE), patch, T0)
                .await
                .map(cherga_store::Changed::into_value)
                .expect("put_queue");
            Self {
                harness,
                store: Some(store),
                now: T0,
                ids: Vec::new(),
                tokens: HashMap::new(),
                attempts: HashMap::new(),
                keys: HashMap::new(),
                concurrency: None,
                paused: false,
            }
        }

        fn store(&self) -> &SqliteStore {
            self.store.as_ref().expect("open")
        }

        async fn get(&self, id: TaskId) -> Task {
            self.store().get_task(id).await.unwrap_or_else(|e| panic!("task {id} lost: {e:?}"))
        }

        /// The token an op presents: the current lease (or the last token handed
        /// out) unless `stale`, then one that is not the current lease.
        fn pick_token(&self, task: &Task, stale: Option<&Index>) -> String {
            let issued = self.tokens.get(&task.id).map(Vec::as_slice).unwrap_or_default();
            let current =
                task.lease.as_ref().filter(|_| task.state == TaskState::Running).map(|l| l.token.as_str());
            match stale {
                None => current
                    .map(str::to_owned)
                    .or_else(|| issued.last().cloned())
                    .unwrap_or_else(|| "1.none".into()),
                Some(index) => {
                    let old: Vec<&String> = issued.iter().filter(|t| Some(t.as_str()) != current).collect();
                    if old.is_empty() {
                        "9.never-issued".to_owned()
                    } else {
                        old[index.index(old.len())].clone()
                    }
                }
            }
        }

        async fn apply(&mut self, op: &Op) {
            match op {
                Op::Enqueue { group, priority, key, vary, delay_ms } => {
                    let (group, priority) = match key {
                        Some(k) if !vary => (Some(k % 3), 0),
                        _ => (*group, *priority),
                    };
                    let new = NewTask {
                        kind: "k".into(),
                        payload: "{}".into(),
                        priority: i32::from(priority),
                        run_at: delay_ms.map(|d| self.now + i64::from(d)),
                        idempotency_key: key.map(|k| format!("key-{k}")),
                        group: group.map(|g| format!("g{g}")),
                        max_attempts: None,
                    };
                    let mut items = self
                        .store()
                        .enqueue(queue_name(QUEUE), vec![new.clone()], self.now)
                        .await
                        .map(cherga_store::Changed::into_value)
                        .expect("enqueue");
                    let item = items.pop().expect("one answer");
                    let seen = new.idempotency_key.as_ref().and_then(|k| self.keys.get(k));
                    match (seen, item) {
                        (None, Ok(Enqueued::Created(task))) => {
                            if let Some(key) = &new.idempotency_key {
                                self.keys.insert(key.clone(), (new.clone(), task.id));
                            }
                            self.ids.push(task.id);
                        }
                        (Some((first, id)), Ok(Enqueued::Replayed(task))) => {
                            assert_eq!(fingerprint(first), fingerprint(&new), "replayed a different request");
                            assert_eq!(task.id, *id, "replay names the key's task");
                        }
                        (Some((first, id)), Err(StoreError::KeyReused(reused))) => {
                            assert_ne!(fingerprint(first), fingerprint(&new), "refused the same request");
                            assert_eq!(reused, *id);
                        }
                        (seen, item) => panic!("enqueue {new:?} with key seen {seen:?}: unexpected {item:?}"),
                    }
                }
                Op::Claim { max } => self.claim(usize::from(*max)).await,
                Op::Ack { pick, stale } => {
                    let Some(before) = self.pick_task(pick, stale.is_none()).await else { return };
                    let token = self.pick_token(&before, stale.as_ref());
                    let ack = Ack { task_id: before.id, token: token.clone(), result: Some("\"r\"".into()) };
                    let result = self
                        .store()
                        .complete(vec![ack], self.now)
                        .await
                        .map(cherga_store::Changed::into_value)
                        .expect("ack")
                        .pop()
                        .expect("one");
                    let after = self.get(before.id).await;
                    if holds_lease(&before, &token) {
                        let task = result.unwrap_or_else(|e| panic!("ack with the current lease: {e:?}"));
                        assert_eq!((task.state, &task), (TaskState::Succeeded, &after));
                    } else {
                        assert_unchanged(&before, &after, result, "ack", &token);
                    }
                }
                Op::Nack { pick, stale, dead, retry_in_ms } => {
                    let Some(before) = self.pick_task(pick, stale.is_none()).await else { return };
                    let token = self.pick_token(&before, stale.as_ref());
                    let nack = Nack {
                        task_id: before.id,
                        token: token.clone(),
                        error: Some("e".into()),
                        retry_in_ms: retry_in_ms.map(i64::from),
                        dead: *dead,
                    };
                    let result =
                        self.store().fail(nack, self.now).await.map(cherga_store::Changed::into_value);
                    let after = self.get(before.id).await;
                    if holds_lease(&before, &token) {
                        let task = result.unwrap_or_else(|e| panic!("nack with the current lease: {e:?}"));
                        assert_eq!(task, after);
                        let expected = if *dead || before.attempts >= before.max_attempts {
                            TaskState::Dead
                        } else {
                            TaskState::Scheduled
                        };
                        assert_eq!(after.state, expected, "nack of {before:?}");
                        if let (TaskState::Scheduled, Some(retry)) = (expected, retry_in_ms) {
                            assert_eq!(after.run_at, self.now + i64::from(*retry));
                        }
                    } else {
                        assert_unchanged(&before, &after, result, "nack", &token);
                    }
                }
                Op::Extend { pick, stale } => {
                    let Some(before) = self.pick_task(pick, stale.is_none()).await else { return };
                    let token = self.pick_token(&before, stale.as_ref());
                    let result = self
                        .store()
                        .extend_lease(before.id, token.clone(), LEASE_MS, self.now)
                        .await
                        .map(cherga_store::Changed::into_value);
                    let after = self.get(before.id).await;
                    if holds_lease(&before, &token) {
                        let task = result.unwrap_or_else(|e| panic!("extend with the current lease: {e:?}"));
                        assert_eq!(task.lease.as_ref().map(|l| l.expires_at), Some(self.now + LEASE_MS));
                        assert_eq!(task, after);
                    } else {
                        assert_unchanged(&before, &after, result, "extend", &token);
                    }
                }
                Op::Cancel { pick } => {
                    let Some(before) = self.pick_task(pick, false).await else { return };
                    let result =
                        self.store().cancel(before.id, self.now).await.map(cherga_store::Changed::into_value);
                    let after = self.get(before.id).await;
                    match before.state {
                        TaskState::Scheduled | TaskState::Ready => {
                            assert_eq!(result.expect("cancel").state, TaskState::Cancelled);
                            assert_eq!(after.state, TaskState::Cancelled);
                        }
                        TaskState::Cancelled => assert_eq!(result.expect("cancel twice"), before),
                        _ => {
                            assert!(
                                matches!(result, Err(StoreError::Refused(Refusal::InvalidState { .. }))),
                                "{result:?}"
                            );
                            assert_eq!(after, before, "a refused cancel changes nothing");
                        }
                    }
                }
                Op::RetryDead { pick } => {
                    let Some(before) = self.pick_task(pick, false).await else { return };
                    let result = self
                        .store()
                        .retry_dead(before.id, None, self.now)
                        .await
                        .map(cherga_store::Changed::into_value);
                    let after = self.get(before.id).await;
                    if before.state == TaskState::Dead {
                        assert_eq!(result.expect("retry_dead").state, TaskState::Ready);
                        assert_eq!((after.state, after.attempts), (TaskState::Ready, before.attempts));
                    } else {
                        assert!(
                            matches!(result, Err(StoreError::Refused(Refusal::InvalidState { .. }))),
                            "{result:?}"
                        );
                        assert_eq!(after, before, "a refused retry changes nothing");
                    }
                }
                Op::Tick { advance_ms } => {
                    self.now += i64::from(*advance_ms);
                    let now = self.now;
                    let before = list_all(self.store(), QUEUE).await;
                    let due =
                        before.iter().filter(|t| t.state == TaskState::Scheduled && t.run_at <= now).count();
                    let expiring = before
                        .iter()
                        .filter(|t| {
                            t.state == TaskState::Running
                                && t.lease.as_ref().is_some_and(|l| l.expires_at <= now)
                        })
                        .count();
                    let report =
                        self.store().tick(now).await.map(cherga_store::Changed::into_value).expect("tick");
                    assert_eq!((report.promoted, report.expired), (due, expiring), "{report:?}");
                    for task in list_all(self.store(), QUEUE).await {
                        let overdue = match task.state {
                            TaskState::Scheduled => task.run_at <= now,
                            TaskState::Running => task.lease.as_ref().is_none_or(|l| l.expires_at <= now),
                            _ => false,
                        };
                        assert!(!overdue, "after tick at {now}, timer left undone: {task:?}");
                    }
                }
                Op::Configure { concurrency, paused } => {
                    let patch = QueueSettingsPatch {
                        concurrency: Some(concurrency.map(u32::from)),
                        paused: Some(*paused),
                        ..Default::default()
                    };
                    let info = self
                        .store()
                        .put_queue(queue_name(QUEUE), patch, self.now)
                        .await
                        .map(cherga_store::Changed::into_value)
                        .expect("put_queue");
                    self.concurrency = concurrency.map(u32::from);
                    self.paused = *paused;
                    assert_eq!(
                        (info.settings.concurrency, info.settings.paused),
                        (self.concurrency, self.paused)
                    );
                }
                Op::Reopen => {
                    let before = list_all(self.store(), QUEUE).await;
                    let info_before = self.store().get_queue(queue_name(QUEUE)).await.expect("get_queue");
                    let store = self.store.take().expect("open");
                    store.close().await;
                    drop(store);
                    self.store = Some(self.harness.open().await);
                    assert_eq!(list_all(self.store(), QUEUE).await, before, "tasks across a reopen");
                    let info_after = self.store().get_queue(queue_name(QUEUE)).await.expect("get_queue");
                    assert_eq!(info_after, info_before, "queue across a reopen");
                }
                Op::Crash => {
                    let before = list_all(self.store(), QUEUE).await;
                    let info_before = self.store().get_queue(queue_name(QUEUE)).await.expect("get_queue");
                    let copy = copy_of(&self.harness);
                    self.store.take().expect("open").close().await;
                    self.harness = copy;
                    self.store = Some(self.harness.open().await);
                    assert_eq!(list_all(self.store(), QUEUE).await, before, "tasks across a crash");
                    let info_after = self.store().get_queue(queue_name(QUEUE)).await.expect("get_queue");
                    assert_eq!(info_after, info_before, "queue across a crash");
                }
            }
        }

        /// A task chosen by `pick`: among the running ones if `running` and there are
        /// any, else among all.
        async fn pick_task(&self, pick: &Index, running: bool) -> Option<Task> {
            if running {
                let mut running: Vec<Task> = list_all(self.store(), QUEUE)
                    .await
                    .into_iter()
                    .filter(|t| t.state == TaskState::Running)
                    .collect();
                if !running.is_empty() {
                    let chosen = pick.index(running.len());
                    return Some(running.swap_remove(chosen));
                }
            }
            if self.ids.is_empty() {
                return None;
            }
            Some(self.get(self.ids[pick.index(self.ids.len())]).await)
        }

        /// Claims and checks the result against the rules computed from outside:
        /// exactly the best eligible tasks, as many as the limits allow.
        async fn claim(&mut self, max: usize) {
            let before = list_all(self.store(), QUEUE).await;
            let running = before.iter().filter(|t| t.state == TaskState::Running).count();
            let room = match (self.paused, self.concurrency) {
                (true, _) => 0,
                (false, Some(limit)) => (limit as usize).saturating_sub(running),
                (false, None) => usize::MAX,
            };
            let mut heads: HashMap<&str, usize> = HashMap::new();
            let mut busy: HashSet<&str> = HashSet::new();
            for (position, task) in before.iter().enumerate() {
                let Some(group) = task.group.as_deref() else { continue };
                if matches!(task.state, TaskState::Scheduled | TaskState::Ready | TaskState::Running) {
                    heads.entry(group).or_insert(position);
                }
                if task.state == TaskState::Running {
                    busy.insert(group);
                }
            }
            let mut eligible: Vec<(usize, &Task)> = before
                .iter()
                .enumerate()
                .filter(|(position, task)| {
                    task.state == TaskState::Ready
                        && task.group.as_deref().is_none_or(|g| !busy.contains(g) && heads[g] == *position)
                })
                .collect();
            eligible
                .sort_by_key(|(position, task)| (std::cmp::Reverse(task.priority), task.run_at, *position));
            let expected: Vec<TaskId> = eligible.iter().take(max.min(room)).map(|(_, t)| t.id).collect();

            let claim = Claim { queue: queue_name(QUEUE), max, lease_ms: None, worker: None };
            let leased = self
                .store()
                .claim(claim, self.now)
                .await
                .map(cherga_store::Changed::into_value)
                .expect("claim");
            let got: Vec<TaskId> = leased.iter().map(|t| t.id).collect();
            assert_eq!(got, expected, "claim {max} (running {running}, room {room}) from {before:#?}");
            if let Some(limit) = self.concurrency {
                assert!(
                    running + leased.len() <= (limit as usize).max(running),
                    "concurrency {limit} exceeded"
                );
            }
            for task in &leased {
                let lease = task.lease.as_ref().expect("a leased task has a lease");
                assert_eq!(lease.expires_at, self.now + LEASE_MS);
                let issued = self.tokens.entry(task.id).or_default();
                assert!(!issued.contains(&lease.token.as_str().to_owned()), "a token was handed out twice");
                issued.push(lease.token.as_str().to_owned());
            }
        }

        /// The invariants that hold between any two operations.
        async fn check(&mut self) {
            let (_, tasks) = assert_counts_agree(self.store(), QUEUE).await;
            let listed: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
            assert_eq!(listed, self.ids, "no task lost, none invented, in enqueue order");
            let mut running_groups = HashSet::new();
            for task in &tasks {
                let seen = self.attempts.entry(task.id).or_default();
                assert!(task.attempts >= *seen, "attempts went from {seen} to {}: {task:?}", task.attempts);
                *seen = task.attempts;
                // One entry per attempt, in order, the running one the current lease's.
                let entries: Vec<_> = task.attempt_history().collect();
                let numbers: Vec<u32> = entries.iter().map(|e| e.attempt).collect();
                assert_eq!(numbers, (1..=task.attempts).collect::<Vec<_>>(), "history of {task:?}");
                let running: Vec<_> =
                    entries.iter().filter(|e| e.outcome == AttemptOutcome::Running).collect();
                match (&task.lease, running.as_slice()) {
                    (Some(lease), [entry]) if task.state == TaskState::Running => {
                        assert_eq!(Some(entry.attempt), numbers.last().copied(), "{task:?}");
                        assert_eq!(entry.started_at, lease.leased_at, "{task:?}");
                    }
                    (_, []) if task.state != TaskState::Running => {}
                    _ => panic!("running entries {running:?} of {task:?}"),
                }
                if task.state == TaskState::Running {
                    if let Some(group) = &task.group {
                        assert!(running_groups.insert(group.clone()), "two tasks of group {group} running");
                    }
                    let last = self.tokens.get(&task.id).and_then(|t| t.last());
                    assert_eq!(
                        task.lease.as_ref().map(|l| l.token.as_str()),
                        last.map(String::as_str),
                        "{task:?}"
                    );
                }
            }
            // Filtered and paged, a listing is the full one filtered, whether a
            // task is in memory or in its row.
            for (state, group) in
                [(Some(TaskState::Ready), None), (None, Some("g1")), (Some(TaskState::Running), Some("g0"))]
            {
                let filter = cherga_store::TaskFilter {
                    states: state.into_iter().collect(),
                    group: group.map(str::to_owned),
                    ..Default::default()
                };
                let expected: Vec<TaskId> = tasks
                    .iter()
                    .filter(|t| {
                        state.is_none_or(|s| t.state == s)
                            && group.is_none_or(|g| t.group.as_deref() == Some(g))
                    })
                    .map(|t| t.id)
                    .collect();
                let mut paged = Vec::new();
                let mut after = None;
                loop {
                    let page = ListTasks {
                        queue: queue_name(QUEUE),
                        filter: filter.clone(),
                        key: None,
                        after,
                        limit: 2,
                    };
                    let page = self.store().list_tasks(page).await.expect("list");
                    after = page.last().map(|t| t.id);
                    let done = page.len() < 2;
                    paged.extend(page.into_iter().map(|t| t.id));
                    if done {
                        break;
                    }
                }
                assert_eq!(paged, expected, "listing {state:?} {group:?} in pages of 2");
            }
        }
    }

    fn holds_lease(task: &Task, token: &str) -> bool {
        task.state == TaskState::Running && task.lease.as_ref().is_some_and(|l| l.token.as_str() == token)
    }

    /// A token that is not the current lease changes nothing: the call is refused
    /// with `LeaseLost`, or answered as a replay of the call that ended the lease.
    fn assert_unchanged(
        before: &Task,
        after: &Task,
        result: Result<Task, StoreError>,
        what: &str,
        token: &str,
    ) {
        match result {
            Ok(task) => {
                assert_eq!(&task, before, "{what} with token {token} replayed but returned another task")
            }
            Err(StoreError::Refused(Refusal::LeaseLost)) => {}
            Err(e) => {
                panic!("{what} with token {token} on {before:?}: expected LeaseLost or a replay, got {e:?}")
            }
        }
        assert_eq!(after, before, "{what} with token {token}, not the current lease, changed the task");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn invariants_hold_under_random_operations(
            ops in proptest::collection::vec(op(), 1..100),
            tiny_limits in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                let mut run = Run::new(tiny_limits).await;
                for op in &ops {
                    run.apply(op).await;
                    run.check().await;
                }
                run.store.take().expect("open").close().await;
            });
        }
    }
}

// ---------------------------------------------------------------------------
// Upgrades: a store written by an earlier version opens and is migrated; one
// written by a later version is refused.
// ---------------------------------------------------------------------------

/// A data directory written by schema version 8 (`mixed_workload`, then a clean
/// close), and the counts per state of its two queues at the time.
const FIXTURE_V8: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v8");

/// The fixture's database copied into a fresh directory (the test may change it).
fn copy_of_fixture(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(version);
    std::fs::copy(from.join("cherga.db"), dir.path().join("cherga.db"))
        .unwrap_or_else(|e| panic!("copy the fixture {}: {e}", from.display()));
    dir
}

/// What the fixture holds, as `counts` lines: `queue n0 n1 n2 n3 n4 n5`.
async fn counts_text<S: Store>(store: &S) -> String {
    let mut out = String::new();
    for queue in ["jobs", "other"] {
        let (_, tasks) = assert_counts_agree(store, queue).await;
        let counts = counts_of(&tasks).map(|n| n.to_string()).join(" ");
        out.push_str(&format!("{queue} {counts}\n"));
    }
    out
}

/// The committed fixture's task counts are what [`mixed_workload`] writes, so
/// the upgrade test below checks the workload it claims to. With
/// `CHERGA_WRITE_FIXTURE=1` it (re)writes the fixture instead, with the build of
/// the current schema version: `CHERGA_WRITE_FIXTURE=1 cargo test -p
/// cherga-store-sqlite --test store the_fixture_is_what`.
#[tokio::test]
async fn the_fixture_is_what_the_mixed_workload_writes() {
    let rewrite = std::env::var_os("CHERGA_WRITE_FIXTURE").is_some();
    let scratch = tempfile::tempdir().expect("temporary directory");
    let dir = if rewrite { Path::new(FIXTURE_V8) } else { scratch.path() };
    std::fs::create_dir_all(dir).expect("fixture directory");
    let _ = std::fs::remove_file(dir.join("cherga.db"));
    let store = open(&dir.join("cherga.db"), true);
    mixed_workload(&store).await;
    let counts = counts_text(&store).await;
    store.close().await;
    drop(store);
    if rewrite {
        std::fs::write(dir.join("counts"), counts).expect("write the counts");
        for leftover in ["cherga.db-wal", "cherga.db-shm", "cherga.db-journal", "cherga.db.lock"] {
            let _ = std::fs::remove_file(dir.join(leftover));
        }
    } else {
        let committed = std::fs::read_to_string(Path::new(FIXTURE_V8).join("counts")).expect("the counts");
        assert_eq!(counts, committed, "the fixture's counts are the workload's");
    }
}

#[tokio::test]
async fn a_store_written_by_schema_version_8_opens_migrated_and_serves() {
    let dir = copy_of_fixture("v8");
    let store = open(&dir.path().join("cherga.db"), true);
    let expected = std::fs::read_to_string(Path::new(FIXTURE_V8).join("counts")).expect("the counts");
    assert_eq!(counts_text(&store).await, expected, "every task of the fixture, in its state");
    // It serves: a task enqueued now is leased and acknowledged.
    store
        .enqueue(queue_name("upgrade"), vec![new_task("after", None, None, 0, None)], T0 + 100)
        .await
        .expect("enqueue");
    let claim = Claim { queue: queue_name("upgrade"), max: 1, lease_ms: Some(60_000), worker: None };
    let leased = store.claim(claim, T0 + 101).await.map(cherga_store::Changed::into_value).expect("claim");
    assert_eq!(leased.len(), 1);
    let ack = Ack { task_id: leased[0].id, token: token(&leased[0]), result: None };
    let acked =
        store.complete(vec![ack], T0 + 102).await.map(cherga_store::Changed::into_value).expect("ack");
    assert!(acked.iter().all(Result::is_ok), "{acked:?}");
    // Version 9's table of payload schemas is there.
    let change = cherga_store::SchemaChange { kind: None, schema: Some("{}".to_owned()), subject: None };
    let recorded = store.put_payload_schema(queue_name("upgrade"), change, T0 + 103).await.expect("schema");
    assert_eq!(recorded.version, 1);
    store.close().await;
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("cherga.db")).expect("open");
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("version");
    assert_eq!(version, 9, "migrated to this build's version");
}

#[tokio::test]
async fn a_store_written_by_a_newer_version_is_refused_and_left_alone() {
    let dir = copy_of_fixture("v8");
    let path = dir.path().join("cherga.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.pragma_update(None, "user_version", 1_000).expect("set the version");
    }
    let before = std::fs::read(&path).expect("read");
    let error = SqliteStore::open(Options { path: path.clone(), ..Options::in_dir(Path::new("")) })
        .err()
        .expect("a newer store is refused");
    let message = format!("{error}: {:?}", std::error::Error::source(&error).map(ToString::to_string));
    assert!(message.contains("written by a newer cherga (schema version 1000"), "{message}");
    assert!(message.contains("this cherga reads up to 9"), "{message}");
    let conn = rusqlite::Connection::open(&path).expect("open");
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("version");
    assert_eq!(version, 1_000, "not migrated");
    let after = std::fs::read(&path).expect("read");
    assert_eq!(before.len(), after.len(), "the database file is the same size");
}

// ---------------------------------------------------------------------------
// Backup and restore.
// ---------------------------------------------------------------------------

/// Enqueues, leases and acks one task at a time until `stop`, adding each task
/// to `acked` once its ack has been answered.
async fn ack_loop(
    store: Arc<SqliteStore>,
    acked: Arc<std::sync::Mutex<Vec<TaskId>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut now = T0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        now += 1;
        store
            .enqueue(queue_name("load"), vec![new_task("k", None, None, 0, None)], now)
            .await
            .expect("enqueue");
        let claim = Claim { queue: queue_name("load"), max: 1, lease_ms: Some(60_000), worker: None };
        let leased = store.claim(claim, now).await.map(cherga_store::Changed::into_value).expect("claim");
        let acks: Vec<Ack> =
            leased.iter().map(|t| Ack { task_id: t.id, token: token(t), result: Some("1".into()) }).collect();
        let answers = store.complete(acks, now).await.map(cherga_store::Changed::into_value).expect("ack");
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        acked.lock().expect("acked").extend(leased.iter().map(|t| t.id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_task_acked_before_it_began_and_restores() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let database = dir.path().join("cherga.db");
    let store = Arc::new(open(&database, true));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> =
        (0..2).map(|_| tokio::spawn(ack_loop(store.clone(), acked.clone(), stop.clone()))).collect();
    let started = std::time::Instant::now();
    while acked.lock().expect("acked").len() < 100 {
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the load acked too few tasks");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Every task acked by now must be in the backup; the load goes on meanwhile.
    let before: Vec<TaskId> = acked.lock().expect("acked").clone();
    let dest = dir.path().join("backup.db");
    let (from, to) = (database.clone(), dest.clone());
    tokio::task::spawn_blocking(move || cherga_store_sqlite::backup(&from, &to))
        .await
        .expect("join")
        .expect("backup");
    let during = acked.lock().expect("acked").len();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for handle in loops {
        handle.await.expect("load loop");
    }
    assert!(acked.lock().expect("acked").len() > before.len(), "the load ran during the backup");
    assert!(during >= before.len());
    store.close().await;

    let error = cherga_store_sqlite::backup(&database, &dest).expect_err("an existing file is refused");
    assert!(format!("{error:?}").contains("exists"), "{error:?}");

    let restored_dir = dir.path().join("restored");
    cherga_store_sqlite::restore(&dest, &restored_dir).await.expect("restore");
    let restored = open(&restored_dir.join("cherga.db"), true);
    for id in &before {
        let task = restored.get_task(*id).await.unwrap_or_else(|e| panic!("task {id} not restored: {e:?}"));
        assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
    }
    assert_counts_agree(&restored, "load").await;
    restored.close().await;
    drop(restored);

    let error =
        cherga_store_sqlite::restore(&dest, &restored_dir).await.expect_err("a store is not overwritten");
    assert!(format!("{error:?}").contains("holds a store already"), "{error:?}");
}
