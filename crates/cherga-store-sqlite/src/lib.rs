//! The embedded store: SQLite through `rusqlite`, behind one writer lock.
//!
//! Every call becomes a job. Under load it is sent to the writer thread, which
//! takes all jobs waiting, runs them in one `BEGIN IMMEDIATE` transaction and
//! commits; the syncer thread then fdatasyncs the WAL and only then answers each
//! caller (group commit: one fsync for every batch committed since the last one).
//! While the syncer waits for the disk the writer runs the next batch, so a busy
//! server overlaps its SQL work with its fsyncs. When there is no next batch to
//! overlap (one caller at a time), the batch is synced and answered by the
//! thread that ran it (`sync.rs`), and a call that finds the writer idle and no
//! job waiting runs its job as a batch of its own on the caller's thread, under
//! the writer lock: no hand-over to the writer thread and back (`engine::Writer`).
//! Timer ticks and listings, which may be long, always go to the writer thread.
//! A checkpointer thread copies the WAL back into the database beside them
//! (`checkpoint.rs`).
//!
//! Invariants:
//! - the holder of the writer lock (the writer thread, or a caller running its
//!   own batch) is the only user of the connection and of the in-memory
//!   [`Index`](index::Index), so index and rows change together, in one order;
//! - no caller hears `Ok` before the commit that holds its change returned and an
//!   fdatasync of the WAL begun after that commit completed;
//! - when a batch fails, it is rolled back whole, every caller in it gets
//!   [`StoreError::Unavailable`] ([`StoreError::StorageFull`] when the disk was
//!   full), and the index is rebuilt from disk.
//!
//! A full disk (`SQLITE_FULL`, `ENOSPC`) fails only the batches that needed room:
//! nothing of them was stored, and every later batch tries again, so writes
//! succeed again as soon as space is freed, without a restart. The first such
//! failure gives back a reserve file and refuses enqueues until space is freed,
//! so that leases and acks go on meanwhile (`room.rs`). A failed fdatasync
//! still aborts the process (`sync.rs`).

mod backup;
mod checkpoint;
mod dir;
mod engine;
mod index;
mod journal;
mod room;
mod rows;
mod schema;
mod seqs;
mod stats;
mod sync;

pub use backup::{backup, restore};
use cherga_core::{Millis, NewPayload, NewTask, QueueName, QueueSettingsPatch, Task, TaskId};
use cherga_store::events::{self, Event};
use cherga_store::stats::StatGauge;
use cherga_store::{
    Ack, AckedAndLeased, BulkPage, BulkStep, Changed, Claim, Enqueued, EventId, EventPage, ListTasks, Nack,
    QueueInfo, QueueStats, Revocation, SchemaChange, SchemaVersion, Store, StoreError, StoreStats,
    TickReport,
};
pub use dir::{DataDirInUse, NoRoomToOpen};
use engine::{Engine, Writer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::oneshot;

type Reply = Box<dyn FnOnce(Result<(), BatchFailure>) + Send>;

/// Why a batch did not commit, as each of its callers hears it.
#[derive(Debug, Clone)]
pub(crate) struct BatchFailure {
    message: String,
    /// The disk or the quota was full: [`StoreError::StorageFull`], which the
    /// same call need not get once space is freed; else
    /// [`StoreError::Unavailable`].
    out_of_space: bool,
}

impl BatchFailure {
    fn into_store_error(self) -> StoreError {
        if self.out_of_space {
            StoreError::StorageFull(self.message.into())
        } else {
            StoreError::Unavailable(self.message.into())
        }
    }
}
/// A job runs inside the current transaction, or, given `None` when no transaction
/// could be begun, only prepares its failure answer.
type Job = Box<dyn FnOnce(Option<&mut Engine>) -> Reply + Send>;

/// How to open the store.
#[derive(Debug, Clone)]
pub struct Options {
    /// The database file.
    pub path: PathBuf,
    /// fsync every commit. Only tests that do not test durability turn it off.
    pub durable: bool,
    pub limits: Limits,
    /// How long events are kept in the event log; `None` keeps no log (and
    /// [`Store::read_events`] refuses).
    pub event_retention_ms: Option<Millis>,
}

pub use cherga_store::limits::DEFAULT_EVENT_RETENTION_MS;

impl Options {
    /// Durable options for the database `cherga.db` in `dir`, with the standard
    /// limits and an event log kept for [`DEFAULT_EVENT_RETENTION_MS`].
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("cherga.db"),
            durable: true,
            limits: Limits::STANDARD,
            event_retention_ms: Some(DEFAULT_EVENT_RETENTION_MS),
        }
    }
}

/// How much the writer keeps ahead of the task rows: tasks changed in memory and
/// in the journal whose rows are not written yet (see `docs/storage.md`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// About how many bytes of memory such tasks may hold. New tasks get half of
    /// it; past that they are written to their rows at once.
    pub dirty_bytes: usize,
    /// How many bytes of journal may wait to be replayed at the next start;
    /// past that the oldest such tasks are written to their rows.
    pub journal_bytes: usize,
}

impl Limits {
    /// The limits `cherga serve` runs with.
    pub const STANDARD: Limits = Limits { dirty_bytes: 96 << 20, journal_bytes: 128 << 20 };
}

/// How long after a failed batch the store reports itself not ready: a disk
/// that is full fails every change but the empty commit of the readiness check.
const READY_AFTER_FAILURE_MS: Millis = 5_000;

fn now_ms() -> Millis {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// The embedded SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Jobs sent to the writer thread and not yet taken by it.
    queued: Arc<AtomicUsize>,
    writer: Arc<Mutex<Writer>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The database's lock (`dir.rs`), shared with the writer thread so that it
    /// is released only once both are done: at `close`, or at drop.
    lock: Mutex<Option<Arc<dir::DirLock>>>,
    /// The event log's readers: their own connection (opened on first use, so
    /// that reads never wait for the writer lock), and the last durable event.
    events: Option<EventReader>,
    /// Batch sizes, fsync latency and batch failures, for monitoring.
    stats: Arc<stats::WriterStats>,
    /// The reserve given back on a full disk, and whether enqueues are refused.
    room: room::Room,
    /// The latest payload schema version of each queue that has one: read
    /// before every enqueue, so it is kept here rather than asked of SQLite.
    /// Raised once a change has committed, before its caller hears of it; no
    /// other process writes the database (`dir.rs`), so it is never behind.
    schema_versions: Mutex<std::collections::HashMap<String, u64>>,
}

/// What reading the event log needs.
struct EventReader {
    path: PathBuf,
    connection: Arc<Mutex<Option<rusqlite::Connection>>>,
    durable: Arc<AtomicU64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, migrates it and rebuilds the
    /// in-memory index from it. The store holds the database's lock until it is
    /// closed or dropped: no other store opens the database meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or migrated, or
    /// (with a [`DataDirInUse`] source) when another store has it open;
    /// [`StoreError::Corrupt`] when a stored row cannot be read.
    pub fn open(options: Options) -> Result<Self, StoreError> {
        Self::open_here(&options).map_err(|error| match error {
            StoreError::StorageFull(source) => {
                StoreError::StorageFull(Box::new(dir::NoRoomToOpen::new(&options.path, source)))
            }
            other => other,
        })
    }

    fn open_here(options: &Options) -> Result<Self, StoreError> {
        let options = options.clone();
        dir::prepare_dir(&options.path)?;
        let lock = Arc::new(dir::DirLock::acquire(&options.path)?);
        dir::prepare_files(&options.path)?;
        let engine = Engine::open(&options)?;
        let schema_versions = Mutex::new(engine.payload_schema_versions()?);
        let events = options.event_retention_ms.map(|_| EventReader {
            path: options.path.clone(),
            connection: Arc::new(Mutex::new(None)),
            durable: engine.events_durable(),
        });
        let stats = Arc::new(stats::WriterStats::new());
        let syncer = sync::Syncer::start(&options, stats.clone())?;
        let checkpointer = checkpoint::Checkpointer::start(&options)?;
        let writer = Arc::new(Mutex::new(Writer::new(engine, syncer, checkpointer, stats.clone())));
        let queued = Arc::new(AtomicUsize::new(0));
        let (sender, receiver) = mpsc::channel::<Job>();
        let thread = {
            let (writer, queued, lock) = (writer.clone(), queued.clone(), lock.clone());
            std::thread::Builder::new()
                .name("cherga-sqlite-writer".into())
                .spawn(move || {
                    engine::run_writer(&writer, &receiver, &queued);
                    // Past the writer's last write (its checkpoint at close).
                    drop(lock);
                })
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?
        };
        Ok(Self {
            jobs: Mutex::new(Some(sender)),
            queued,
            writer,
            thread: Mutex::new(Some(thread)),
            lock: Mutex::new(Some(lock)),
            events,
            stats,
            room: room::Room::open(&options.path),
            schema_versions,
        })
    }

    /// Runs `work` inside a batch and answers after the batch commits (and is
    /// synced): on this thread, as a batch of its own, when the writer is idle and
    /// no job waits; else on the writer thread, in the next batch.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_where(work, true).await
    }

    /// As [`SqliteStore::call`], for work that changes tasks: answers what it
    /// changed with its value.
    async fn change<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<Changed<T>, StoreError> {
        self.call_where(with_effects(work), true).await
    }

    /// As [`SqliteStore::call`], but always on the writer thread: for work that
    /// may be long (a timer tick's thousands of changes, a page of a listing), which
    /// would hold up the caller's async runtime thread.
    async fn call_on_writer<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.call_where(work, false).await
    }

    async fn call_where<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine) -> Result<T, StoreError> + Send + 'static,
        may_run_here: bool,
    ) -> Result<T, StoreError> {
        let (sender, receiver) = oneshot::channel();
        let job: Job = Box::new(move |engine: Option<&mut Engine>| {
            let result = match engine {
                Some(engine) => {
                    let result = work(engine);
                    if let Err(error @ (StoreError::Unavailable(_) | StoreError::StorageFull(_))) = &result {
                        engine.poison(error);
                    }
                    result
                }
                None => Err(StoreError::Unavailable("no transaction could be begun".into())),
            };
            Box::new(move |commit: Result<(), BatchFailure>| {
                let answer = match commit {
                    Ok(()) => result,
                    Err(failure) => Err(failure.into_store_error()),
                };
                let _ = sender.send(answer);
            })
        });
        let mut job = Some(job);
        if may_run_here
            && self.queued.load(Ordering::Acquire) == 0
            && let Ok(mut writer) = self.writer.try_lock()
            && writer.idle()
        {
            // Answered before `run` returns, unless a job arrived since the look
            // at `queued`: then the syncer answers, as for the writer thread.
            writer.run(job.take().into_iter().collect(), &self.queued);
        }
        if let Some(job) = job {
            let jobs = self.jobs.lock().expect("jobs lock");
            let jobs = jobs.as_ref().ok_or(StoreError::Closed)?;
            self.queued.fetch_add(1, Ordering::AcqRel);
            if jobs.send(job).is_err() {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                return Err(StoreError::Closed);
            }
        }
        let answer = receiver.await.map_err(|_| StoreError::Closed)?;
        if let Err(StoreError::StorageFull(_)) = &answer {
            self.room.filled();
        }
        answer
    }
}

/// `work`, answering its value with the effects it left in the engine. A job that
/// fails leaves none behind for the next.
fn with_effects<T>(
    work: impl FnOnce(&mut Engine) -> Result<T, StoreError>,
) -> impl FnOnce(&mut Engine) -> Result<Changed<T>, StoreError> {
    move |engine| {
        let value = work(engine);
        let effects = engine.take_effects();
        value.map(|value| Changed::new(value, effects))
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.jobs.lock().expect("jobs lock").take();
        if let Some(thread) = self.thread.lock().expect("thread lock").take() {
            let _ = thread.join();
        }
    }
}

impl Store for SqliteStore {
    async fn enqueue(
        &self,
        queue: QueueName,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> Result<Changed<Vec<Result<Enqueued, StoreError>>>, StoreError> {
        self.room.admit_enqueue()?;
        self.change(move |e| e.enqueue(&queue, tasks, now)).await
    }

    async fn claim(&self, claim: Claim, now: Millis) -> Result<Changed<Vec<Task>>, StoreError> {
        self.change(move |e| e.claim(claim, now)).await
    }

    async fn complete(
        &self,
        acks: Vec<Ack>,
        now: Millis,
    ) -> Result<Changed<Vec<Result<Task, StoreError>>>, StoreError> {
        self.change(move |e| e.complete(acks, now)).await
    }

    async fn complete_and_claim(
        &self,
        acks: Vec<Ack>,
        claim: Claim,
        now: Millis,
    ) -> Result<Changed<AckedAndLeased>, StoreError> {
        // One job: the acks and the lease are in one transaction, one fsync.
        self.change(move |e| Ok((e.complete(acks, now)?, e.claim(claim, now)?))).await
    }

    async fn fail(&self, nack: Nack, now: Millis) -> Result<Changed<Task>, StoreError> {
        self.change(move |e| e.fail(nack, now)).await
    }

    async fn extend_lease(
        &self,
        task_id: TaskId,
        token: String,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Changed<Task>, StoreError> {
        self.change(move |e| e.extend_lease(task_id, &token, lease_ms, now)).await
    }

    async fn cancel(&self, task_id: TaskId, now: Millis) -> Result<Changed<Task>, StoreError> {
        self.change(move |e| e.cancel(task_id, now)).await
    }

    async fn retry_dead(
        &self,
        task_id: TaskId,
        new_payload: Option<NewPayload>,
        now: Millis,
    ) -> Result<Changed<Task>, StoreError> {
        self.change(move |e| e.retry_dead(task_id, new_payload, now)).await
    }

    async fn act_on_tasks(&self, step: BulkStep, now: Millis) -> Result<Changed<BulkPage>, StoreError> {
        // On the writer thread: a step changes up to a thousand tasks.
        self.call_where(with_effects(move |e| e.act_on_tasks(&step, now)), false).await
    }

    async fn delete_queue(&self, queue: QueueName, _now: Millis) -> Result<Changed<()>, StoreError> {
        self.change(move |e| e.delete_queue(queue.as_str())).await
    }

    async fn get_task(&self, task_id: TaskId) -> Result<Task, StoreError> {
        self.call(move |e| e.load(task_id)).await
    }

    async fn list_tasks(&self, list: ListTasks) -> Result<Vec<Task>, StoreError> {
        self.call_on_writer(move |e| e.list_tasks(&list)).await
    }

    async fn put_queue(
        &self,
        queue: QueueName,
        patch: QueueSettingsPatch,
        now: Millis,
    ) -> Result<Changed<QueueInfo>, StoreError> {
        self.change(move |e| e.put_queue(&queue, &patch, now)).await
    }

    async fn get_queue(&self, queue: QueueName) -> Result<QueueInfo, StoreError> {
        self.call(move |e| e.queue_info(queue.as_str()).ok_or(StoreError::NotFound)).await
    }

    async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.call(move |e| Ok(e.list_queues())).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        // From the index: counts and ready sets, no rows read.
        self.call(move |e| Ok(e.queue_stats())).await
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            gauges: vec![StatGauge {
                name: "cherga_store_writer_queue_depth",
                help: "Jobs waiting for the embedded store's writer thread",
                value: self.queued.load(Ordering::Relaxed) as f64,
            }],
            histograms: vec![
                self.stats.batch_jobs.snapshot(
                    "cherga_store_commit_batch_jobs",
                    "Jobs (store calls) committed together in one transaction",
                    1.0,
                ),
                self.stats.fsync_us.snapshot(
                    "cherga_store_fsync_seconds",
                    "Time of each fdatasync of the write-ahead log",
                    1e-6,
                ),
            ],
        }
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        // An empty batch through the writer: it begins and commits a write
        // transaction, as every change does.
        self.call(|_| Ok(())).await?;
        if let Some(at) = self.stats.last_failure_ms() {
            let since = now_ms() - at;
            if since < READY_AFTER_FAILURE_MS {
                return Err(StoreError::Unavailable(
                    format!("a commit failed {since} ms ago and was rolled back; see the log").into(),
                ));
            }
        }
        Ok(())
    }

    async fn tick(&self, now: Millis) -> Result<Changed<TickReport>, StoreError> {
        self.call_where(with_effects(move |e| e.tick(now)), false).await
    }

    async fn revoke_token(&self, revocation: Revocation, now: Millis) -> Result<(), StoreError> {
        self.call(move |e| e.revoke_token(&revocation, now)).await
    }

    async fn revoked_tokens(&self, now: Millis) -> Result<Vec<Revocation>, StoreError> {
        self.call(move |e| e.revoked_tokens(now)).await
    }

    async fn put_payload_schema(
        &self,
        queue: QueueName,
        change: SchemaChange,
        now: Millis,
    ) -> Result<SchemaVersion, StoreError> {
        let name = queue.as_str().to_owned();
        let recorded = self.call(move |e| e.put_payload_schema(&name, change, now)).await?;
        let mut versions = self.schema_versions.lock().expect("schema versions lock");
        let latest = versions.entry(recorded.queue.clone()).or_insert(0);
        // Two changes may be answered out of order; the later version stays.
        *latest = (*latest).max(recorded.version);
        Ok(recorded)
    }

    async fn payload_schemas(&self, queue: QueueName) -> Result<Vec<SchemaVersion>, StoreError> {
        self.call(move |e| e.payload_schemas(queue.as_str())).await
    }

    async fn payload_schema_version(&self, queue: &QueueName) -> Result<u64, StoreError> {
        let versions = self.schema_versions.lock().expect("schema versions lock");
        Ok(versions.get(queue.as_str()).copied().unwrap_or(0))
    }

    async fn read_events(&self, after: EventId, limit: usize) -> Result<EventPage, StoreError> {
        let reader =
            self.events.as_ref().ok_or_else(|| StoreError::Unavailable("the event log is off".into()))?;
        let head = reader.durable.load(Ordering::Acquire);
        let (path, connection) = (reader.path.clone(), reader.connection.clone());
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().expect("event reader lock");
            let conn = match &mut *connection {
                Some(conn) => conn,
                None => {
                    let conn =
                        rusqlite::Connection::open(&path).map_err(|e| StoreError::Unavailable(e.into()))?;
                    conn.busy_timeout(std::time::Duration::from_secs(5))
                        .map_err(|e| StoreError::Unavailable(e.into()))?;
                    connection.insert(conn)
                }
            };
            read_event_page(conn, after, limit, head)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.into()))?
    }

    async fn close(&self) {
        // Dropping the sender ends the writer loop after the jobs already queued;
        // the writer then checkpoints the WAL and closes the connection.
        self.jobs.lock().expect("jobs lock").take();
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            // The writer thread has ended: another store may open the database.
            self.lock.lock().expect("lock of the lock").take();
        }
    }
}

/// Up to `limit` events numbered after `after` and at most `head` (the last
/// durable one), from the rows of the log that hold them.
fn read_event_page(
    conn: &rusqlite::Connection,
    after: EventId,
    limit: usize,
    head: EventId,
) -> Result<EventPage, StoreError> {
    let unavailable = |e: rusqlite::Error| StoreError::Unavailable(e.into());
    let purged: Option<i64> = conn
        .query_row("SELECT value FROM counters WHERE name = 'events_purged'", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
        .map_err(unavailable)?;
    let mut page = EventPage {
        events: Vec::new(),
        head,
        purged_through: purged.map_or(0, |v| v.max(0) as u64),
        pending: false,
    };
    // The row holding event `after + 1`, and those after it.
    let mut stmt = conn
        .prepare_cached(
            "SELECT first, at, records FROM events \
             WHERE first >= coalesce((SELECT max(first) FROM events WHERE first <= ?1), 0) AND first <= ?2 \
             ORDER BY first",
        )
        .map_err(unavailable)?;
    let next = after.saturating_add(1).min(i64::MAX as u64) as i64;
    let mut rows =
        stmt.query(rusqlite::params![next, head.min(i64::MAX as u64) as i64]).map_err(unavailable)?;
    while page.events.len() < limit {
        let Some(row) = rows.next().map_err(unavailable)? else { break };
        let (first, at): (i64, i64) = (row.get(0).map_err(unavailable)?, row.get(1).map_err(unavailable)?);
        let record =
            row.get_ref(2).map_err(unavailable)?.as_blob().map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let transitions =
            events::decode(record, at).map_err(|e| StoreError::Corrupt(format!("event row {first}: {e}")))?;
        for (offset, transition) in transitions.into_iter().enumerate() {
            let id = first as u64 + offset as u64;
            if id > after && id <= head && page.events.len() < limit {
                page.events.push(Event { id, transition });
            }
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_of_call(store: &SqliteStore) -> std::thread::ThreadId {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(store.call(|_| Ok(std::thread::current().id()))).expect("call")
    }

    #[test]
    fn an_idle_writer_lets_the_caller_run_its_job_and_a_busy_one_takes_it() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SqliteStore::open(Options::in_dir(dir.path())).expect("open");
        let here = std::thread::current().id();
        assert_eq!(thread_of_call(&store), here, "nothing waits: the job runs on the caller's thread");

        // While another holds the writer lock the job goes to the writer thread,
        // which waits for the lock and then runs it.
        let held = store.writer.lock().expect("writer lock");
        let ran_on = std::thread::scope(|scope| {
            let call = scope.spawn(|| thread_of_call(&store));
            let started = std::time::Instant::now();
            while store.queued.load(Ordering::Acquire) == 0 {
                assert!(started.elapsed() < std::time::Duration::from_secs(10), "the call was never queued");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            drop(held);
            call.join().expect("the call")
        });
        let writer = store.thread.lock().expect("thread lock").as_ref().map(|t| t.thread().id());
        assert_eq!(Some(ran_on), writer, "a held lock sends the job to the writer thread");
        assert_eq!(thread_of_call(&store), here, "idle again");
    }
}
