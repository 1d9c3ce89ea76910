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
//!   [`Index`], so index and rows change together, in one order;
//! - no caller hears `Ok` before the commit that holds its change returned and an
//!   fdatasync of the WAL begun after that commit completed;
//! - when a batch fails, it is rolled back whole, every caller in it gets
//!   [`StoreError::Unavailable`], and the index is rebuilt from disk.

mod checkpoint;
mod engine;
mod journal;
mod rows;
mod schema;
mod seqs;
mod sync;

use cherga_core::{Millis, NewTask, QueueName, QueueSettingsPatch, Task, TaskId};
use cherga_store::{
    Ack, AckedAndLeased, Claim, Enqueued, ListTasks, Nack, QueueInfo, Revocation, Store, StoreError,
    TickReport,
};
use engine::{Engine, Writer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use tokio::sync::oneshot;

type Reply = Box<dyn FnOnce(Result<(), String>) + Send>;
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
}

impl Options {
    /// Durable options for the database `cherga.db` in `dir`, with the standard limits.
    pub fn in_dir(dir: &Path) -> Self {
        Self { path: dir.join("cherga.db"), durable: true, limits: Limits::STANDARD }
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

/// The embedded SQLite store. Cheap to share behind an `Arc`.
pub struct SqliteStore {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// Jobs sent to the writer thread and not yet taken by it.
    queued: Arc<AtomicUsize>,
    writer: Arc<Mutex<Writer>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, migrates it and rebuilds the
    /// in-memory index from it.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file cannot be opened or migrated,
    /// [`StoreError::Corrupt`] when a stored row cannot be read.
    pub fn open(options: Options) -> Result<Self, StoreError> {
        if let Some(parent) = options.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        }
        let engine = Engine::open(&options)?;
        let syncer = sync::Syncer::start(&options)?;
        let checkpointer = checkpoint::Checkpointer::start(&options)?;
        let writer = Arc::new(Mutex::new(Writer::new(engine, syncer, checkpointer)));
        let queued = Arc::new(AtomicUsize::new(0));
        let (sender, receiver) = mpsc::channel::<Job>();
        let thread = {
            let (writer, queued) = (writer.clone(), queued.clone());
            std::thread::Builder::new()
                .name("cherga-sqlite-writer".into())
                .spawn(move || engine::run_writer(&writer, &receiver, &queued))
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?
        };
        Ok(Self { jobs: Mutex::new(Some(sender)), queued, writer, thread: Mutex::new(Some(thread)) })
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
                    if matches!(result, Err(StoreError::Unavailable(_))) {
                        engine.poison();
                    }
                    result
                }
                None => Err(StoreError::Unavailable("no transaction could be begun".into())),
            };
            Box::new(move |commit: Result<(), String>| {
                let answer = match commit {
                    Ok(()) => result,
                    Err(message) => Err(StoreError::Unavailable(message.into())),
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
        receiver.await.map_err(|_| StoreError::Closed)?
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
    ) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
        self.call(move |e| e.enqueue(&queue, tasks, now)).await
    }

    async fn claim(&self, claim: Claim, now: Millis) -> Result<Vec<Task>, StoreError> {
        self.call(move |e| e.claim(claim, now)).await
    }

    async fn complete(
        &self,
        acks: Vec<Ack>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        self.call(move |e| e.complete(acks, now)).await
    }

    async fn complete_and_claim(
        &self,
        acks: Vec<Ack>,
        claim: Claim,
        now: Millis,
    ) -> Result<AckedAndLeased, StoreError> {
        // One job: the acks and the lease are in one transaction, one fsync.
        self.call(move |e| Ok((e.complete(acks, now)?, e.claim(claim, now)?))).await
    }

    async fn fail(&self, nack: Nack, now: Millis) -> Result<Task, StoreError> {
        self.call(move |e| e.fail(nack, now)).await
    }

    async fn extend_lease(
        &self,
        task_id: TaskId,
        token: String,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Task, StoreError> {
        self.call(move |e| e.extend_lease(task_id, &token, lease_ms, now)).await
    }

    async fn cancel(&self, task_id: TaskId, now: Millis) -> Result<Task, StoreError> {
        self.call(move |e| e.cancel(task_id, now)).await
    }

    async fn retry_dead(&self, task_id: TaskId, now: Millis) -> Result<Task, StoreError> {
        self.call(move |e| e.retry_dead(task_id, now)).await
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
    ) -> Result<QueueInfo, StoreError> {
        self.call(move |e| e.put_queue(&queue, &patch, now)).await
    }

    async fn get_queue(&self, queue: QueueName) -> Result<QueueInfo, StoreError> {
        self.call(move |e| e.queue_info(queue.as_str()).ok_or(StoreError::NotFound)).await
    }

    async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        self.call(move |e| Ok(e.list_queues())).await
    }

    async fn tick(&self, now: Millis) -> Result<TickReport, StoreError> {
        self.call_on_writer(move |e| e.tick(now)).await
    }

    async fn revoke_token(&self, revocation: Revocation, now: Millis) -> Result<(), StoreError> {
        self.call(move |e| e.revoke_token(&revocation, now)).await
    }

    async fn revoked_tokens(&self, now: Millis) -> Result<Vec<Revocation>, StoreError> {
        self.call(move |e| e.revoked_tokens(now)).await
    }

    async fn close(&self) {
        // Dropping the sender ends the writer loop after the jobs already queued;
        // the writer then checkpoints the WAL and closes the connection.
        self.jobs.lock().expect("jobs lock").take();
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
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
