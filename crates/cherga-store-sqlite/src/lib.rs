//! The embedded store: SQLite through `rusqlite`, owned by one writer thread.
//!
//! Every call becomes a job sent to the writer thread. The thread takes all jobs
//! waiting, runs them in one `BEGIN IMMEDIATE` transaction and commits; the syncer
//! thread then fdatasyncs the WAL and only then answers each caller (group commit:
//! one fsync for every batch committed since the last one). While the syncer waits
//! for the disk the writer runs the next batch, so a busy server overlaps its SQL
//! work with its fsyncs. When there is no next batch to overlap (one caller at a
//! time), the writer syncs and answers itself, which spares each answer a
//! hand-over between threads (`sync.rs`). A checkpointer thread copies the WAL
//! back into the database beside them (`checkpoint.rs`).
//!
//! Invariants:
//! - the writer thread is the only user of the connection and of the in-memory
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
use engine::Engine;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
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
        let (sender, receiver) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("cherga-sqlite-writer".into())
            .spawn(move || engine.run(receiver, syncer, checkpointer))
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self { jobs: Mutex::new(Some(sender)), thread: Mutex::new(Some(thread)) })
    }

    /// Runs `work` on the writer thread inside the current batch and answers after
    /// the batch commits.
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Engine) -> Result<T, StoreError> + Send + 'static,
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
        {
            let jobs = self.jobs.lock().expect("jobs lock");
            let jobs = jobs.as_ref().ok_or(StoreError::Closed)?;
            jobs.send(job).map_err(|_| StoreError::Closed)?;
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
        self.call(move |e| e.list_tasks(&list)).await
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
        self.call(move |e| e.tick(now)).await
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
