//! The `Store` trait: the durable home of tasks and queues, named after the
//! transitions of the domain. Every adapter (`cherga-store-sqlite`, `cherga-store-postgres`)
//! implements it and runs the shared conformance suite in [`testkit`].
//!
//! **Contract:** when a method that changes state returns `Ok`, the change is
//! durable (on disk, fsynced), and its answer ([`Changed`]) carries the
//! [`Effects`] of the call: a transition for every task it changed. A method that
//! returns `Err` for the whole call changed nothing that a later read can see.
//!
//! **Boundary:** no HTTP and no SQL types cross this trait.

use cherga_core::{
    KeyResolution, Millis, NewPayload, NewTask, QueueName, QueueSettings, QueueSettingsPatch, Refusal, Task,
    TaskId, TaskState,
};
use std::future::Future;

pub mod bulk;
mod effects;
pub mod events;
pub mod limits;
pub mod schemas;
pub mod stats;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use bulk::{BULK_BATCH, BulkAction, BulkPage, BulkStep, TaskFilter};
pub use effects::{Changed, Effects};
pub use events::{Event, EventId, EventPage};
pub use schemas::{SchemaChange, SchemaVersion};
pub use stats::{QueueStats, StoreStats};

/// What went wrong with a store call or with one item of a batch.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No task or queue with that id or name.
    #[error("not found")]
    NotFound,
    /// The domain refused the transition (stale lease, wrong state).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The idempotency key was seen within the window with a different request.
    #[error("idempotency key already used for a different request (task {0})")]
    KeyReused(TaskId),
    /// Queue settings out of range.
    #[error("invalid queue settings: {0}")]
    InvalidSettings(String),
    /// The backend failed (I/O, lost connection). Nothing of the call took effect.
    /// The cause is the error's `source()`, not part of its message, so that a
    /// chain of causes names it once.
    #[error("store unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend's disk (or the user's quota on it) is full. Nothing of the
    /// call took effect; the same call succeeds once space is freed. The cause
    /// is the error's `source()`.
    #[error("no space left on the store's disk")]
    StorageFull(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data could not be read back as a task or queue.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The store was closed.
    #[error("store is closed")]
    Closed,
    /// The queue still holds this many tasks, so it cannot be deleted.
    #[error("the queue still holds {0} tasks")]
    NotEmpty(u64),
}

/// The result of one item of an enqueue.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// A new task was stored.
    Created(Task),
    /// The idempotency key was seen within the window: the existing task, as it is now.
    Replayed(Task),
}

impl Enqueued {
    /// The answer to an enqueue of `new` under an idempotency key that `holder`
    /// holds, taken by a request whose fingerprint was `held_print`
    /// ([`cherga_core::resolve_key`]): a replay, or [`StoreError::KeyReused`].
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyReused`] when `new` is not the request that took the key.
    pub fn under_held_key(held_print: u64, holder: Task, new: &NewTask) -> Result<Enqueued, StoreError> {
        match cherga_core::resolve_key(held_print, new) {
            KeyResolution::Replay => Ok(Enqueued::Replayed(holder)),
            KeyResolution::Reused => Err(StoreError::KeyReused(holder.id)),
        }
    }

    pub fn task(&self) -> &Task {
        match self {
            Enqueued::Created(t) | Enqueued::Replayed(t) => t,
        }
    }
}

/// A request for tasks of one queue.
#[derive(Debug, Clone)]
pub struct Claim {
    pub queue: QueueName,
    pub max: usize,
    /// `None` takes the queue's `lease_ms`.
    pub lease_ms: Option<i64>,
    pub worker: Option<String>,
}

/// An acknowledgement of one task.
#[derive(Debug, Clone)]
pub struct Ack {
    pub task_id: TaskId,
    pub token: String,
    /// JSON text.
    pub result: Option<String>,
}

/// A negative acknowledgement of one task.
#[derive(Debug, Clone)]
pub struct Nack {
    pub task_id: TaskId,
    pub token: String,
    pub error: Option<String>,
    pub retry_in_ms: Option<i64>,
    pub dead: bool,
}

/// A queue with its settings and the number of tasks in each state.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueInfo {
    pub name: String,
    pub settings: QueueSettings,
    pub counts: [u64; 6],
}

impl QueueInfo {
    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[usize::from(state.code())]
    }
}

/// A page of tasks in enqueue order.
#[derive(Debug, Clone)]
pub struct ListTasks {
    pub queue: QueueName,
    /// Which tasks; no states means every state ([`TaskFilter::list_mask`]).
    pub filter: TaskFilter,
    /// Only the task that holds this idempotency key of the queue (keys are kept
    /// for the queue's `dedup_window_ms`; a task whose key has expired is not
    /// found by it).
    pub key: Option<String>,
    /// Only tasks enqueued after this one.
    pub after: Option<TaskId>,
    pub limit: usize,
}

/// What a run of the timers did (each task it moved is also a transition in the
/// call's [`Effects`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TickReport {
    pub promoted: usize,
    pub expired: usize,
    pub purged: usize,
    /// When the next scheduled task is due or the next lease expires, if any
    /// (of every task, not only those this tick moved).
    pub next_timer: Option<Millis>,
}

/// A revoked bearer token: refused until `expires_at`, then forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The token's `jti` claim.
    pub jti: String,
    /// When the revocation may be forgotten: normally the token's expiry plus
    /// the clock-skew leeway it is accepted for (the server adds it).
    pub expires_at: Millis,
}

/// What [`Store::complete_and_claim`] did: a result per ack, and the leased tasks.
pub type AckedAndLeased = (Vec<Result<Task, StoreError>>, Vec<Task>);

/// The durable store of tasks and queues.
///
/// Methods take `now` from the caller so that tests control time.
pub trait Store: Send + Sync + 'static {
    /// Stores new tasks in `queue`, creating the queue with default settings on
    /// first use. Each item succeeds or fails on its own; idempotency keys are
    /// honoured across the batch and across concurrent calls.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for the whole call when nothing could be stored;
    /// per item [`StoreError::KeyReused`].
    fn enqueue(
        &self,
        queue: QueueName,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<Vec<Result<Enqueued, StoreError>>>, StoreError>> + Send;

    /// Leases up to `claim.max` ready tasks of the queue (creating the queue on first
    /// use), best first, honouring groups, the concurrency limit and pauses.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails.
    fn claim(
        &self,
        claim: Claim,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<Vec<Task>>, StoreError>> + Send;

    /// Acknowledges tasks: each moves to `succeeded` with its result, or is refused.
    ///
    /// # Errors
    /// Per item [`StoreError::NotFound`] or [`StoreError::Refused`].
    fn complete(
        &self,
        acks: Vec<Ack>,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<Vec<Result<Task, StoreError>>>, StoreError>> + Send;

    /// Acknowledges `acks` as [`Store::complete`] does, then leases as
    /// [`Store::claim`] does: a worker's "done with these, give me more" in one
    /// call. A store that can make both durable with one commit should; this
    /// default runs them one after the other, so the acks are durable even when
    /// the claim then fails.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails; per ack as
    /// [`Store::complete`].
    fn complete_and_claim(
        &self,
        acks: Vec<Ack>,
        claim: Claim,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<AckedAndLeased>, StoreError>> + Send {
        async move {
            let acked =
                if acks.is_empty() { Changed::nothing(Vec::new()) } else { self.complete(acks, now).await? };
            let leased = self.claim(claim, now).await?;
            let mut effects = acked.effects;
            effects.extend(leased.effects);
            Ok(Changed::new((acked.value, leased.value), effects))
        }
    }

    /// Records a failed attempt: the task is scheduled again with backoff, or dead.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Refused`].
    fn fail(&self, nack: Nack, now: Millis)
    -> impl Future<Output = Result<Changed<Task>, StoreError>> + Send;

    /// Extends the current lease of a task to `now + lease_ms`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Refused`].
    fn extend_lease(
        &self,
        task_id: TaskId,
        token: String,
        lease_ms: i64,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<Task>, StoreError>> + Send;

    /// Cancels a scheduled or ready task (a cancelled one is returned as it is).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Refused`].
    fn cancel(
        &self,
        task_id: TaskId,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<Task>, StoreError>> + Send;

    /// Sends a dead task back to ready with the queue's `max_attempts` more
    /// attempts and, when `new_payload` is given, with that payload in place of
    /// its own, in the same commit ([`Task::retry`] records the edit in the
    /// task's history). A refusal changes neither.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Refused`].
    fn retry_dead(
        &self,
        task_id: TaskId,
        new_payload: Option<NewPayload>,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<Task>, StoreError>> + Send;

    /// Does one step of a bulk action ([`bulk`]): changes up to `step.max` tasks
    /// of the queue that match its filter, after `step.after`, in enqueue order,
    /// in one commit, with a transition (and an event) for each; answers how many
    /// and where the next step goes on. A task that no longer matches when it is
    /// reached (it moved on meanwhile) is left alone.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the queue does not exist.
    fn act_on_tasks(
        &self,
        step: BulkStep,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<BulkPage>, StoreError>> + Send;

    /// Deletes an empty queue: its settings and its idempotency keys. A queue
    /// with tasks left is refused (purge them first, with [`Store::act_on_tasks`]).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the queue does not exist;
    /// [`StoreError::NotEmpty`] when it holds tasks.
    fn delete_queue(
        &self,
        queue: QueueName,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<()>, StoreError>> + Send;

    /// # Errors
    /// [`StoreError::NotFound`] when no such task exists (or it was purged).
    fn get_task(&self, task_id: TaskId) -> impl Future<Output = Result<Task, StoreError>> + Send;

    /// # Errors
    /// [`StoreError::NotFound`] when the queue does not exist.
    fn list_tasks(&self, list: ListTasks) -> impl Future<Output = Result<Vec<Task>, StoreError>> + Send;

    /// Creates the queue or changes its settings.
    ///
    /// # Errors
    /// [`StoreError::InvalidSettings`] when the result would be out of range.
    fn put_queue(
        &self,
        queue: QueueName,
        patch: QueueSettingsPatch,
        now: Millis,
    ) -> impl Future<Output = Result<Changed<QueueInfo>, StoreError>> + Send;

    /// # Errors
    /// [`StoreError::NotFound`] when the queue does not exist.
    fn get_queue(&self, queue: QueueName) -> impl Future<Output = Result<QueueInfo, StoreError>> + Send;

    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails.
    fn list_queues(&self) -> impl Future<Output = Result<Vec<QueueInfo>, StoreError>> + Send;

    /// Every queue's counts per state and oldest ready task, for monitoring.
    /// A store answers from what it keeps anyway (counters, its index), without
    /// reading every task where it can. The default answers [`Store::list_queues`]
    /// without the oldest ready task.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails.
    fn queue_stats(&self) -> impl Future<Output = Result<Vec<QueueStats>, StoreError>> + Send {
        async {
            let queues = self.list_queues().await?;
            Ok(queues
                .into_iter()
                .map(|q| QueueStats { name: q.name, counts: q.counts, oldest_ready_at: None })
                .collect())
        }
    }

    /// Figures of the store's own machinery (commit batches, fsyncs, pools), read
    /// from counters without I/O. The default has none.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Answers `Ok` when the store can commit now: a readiness check, cheap
    /// enough to call every few seconds. The default assumes it can.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] (or [`StoreError::Closed`]) saying why not.
    fn check_ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// Runs the timers due at `now`: promotes scheduled tasks, expires leases, purges
    /// finished tasks past retention and forgets idempotency keys past their window.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails.
    fn tick(&self, now: Millis) -> impl Future<Output = Result<Changed<TickReport>, StoreError>> + Send;

    /// Records that the token `jti` is revoked until `expires_at`. Revoking a
    /// token again keeps the later of the two expiries (a revocation is never
    /// shortened). Every node sharing the store sees it in [`Store::revoked_tokens`].
    ///
    /// The default refuses: a store that cannot keep revocations cannot serve with
    /// authentication on (the server then refuses every token rather than accept a
    /// revoked one).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails or does not keep revocations.
    fn revoke_token(
        &self,
        revocation: Revocation,
        now: Millis,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (revocation, now);
        async { Err(StoreError::Unavailable("this store does not keep token revocations".into())) }
    }

    /// Every revocation whose `expires_at` is after `now`, in `jti` order.
    /// [`Store::tick`] forgets expired ones.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails or does not keep revocations.
    fn revoked_tokens(
        &self,
        now: Millis,
    ) -> impl Future<Output = Result<Vec<Revocation>, StoreError>> + Send {
        let _ = now;
        async { Err(StoreError::Unavailable("this store does not keep token revocations".into())) }
    }

    /// Records a change to the payload schemas of `queue` as its next version
    /// ([`schemas`]) and answers that version. The queue need not exist: its
    /// schemas are kept apart from its settings (and outlive its deletion).
    ///
    /// The default refuses: a store that cannot keep schemas cannot enforce them.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails or keeps no schemas.
    fn put_payload_schema(
        &self,
        queue: QueueName,
        change: SchemaChange,
        now: Millis,
    ) -> impl Future<Output = Result<SchemaVersion, StoreError>> + Send {
        let _ = (queue, change, now);
        async { Err(StoreError::Unavailable("this store does not keep payload schemas".into())) }
    }

    /// Every version of the payload schemas of `queue`, oldest first (empty
    /// when it never had one). The default has none.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails.
    fn payload_schemas(
        &self,
        queue: QueueName,
    ) -> impl Future<Output = Result<Vec<SchemaVersion>, StoreError>> + Send {
        let _ = queue;
        async { Ok(Vec::new()) }
    }

    /// The number of the latest version of the payload schemas of `queue`
    /// (0 when it never had one), as committed when the call began: a change
    /// answered before the call, on any node, is seen. Called before every
    /// enqueue, so it must be cheap. The default has none.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails.
    fn payload_schema_version(
        &self,
        queue: &QueueName,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = queue;
        async { Ok(0) }
    }

    /// Reads up to `limit` events of the log after position `after` (0 reads
    /// from the oldest kept), in order. Only events whose transaction is durable
    /// are read, and no later read finds an event before the last one returned.
    ///
    /// The default refuses: a store without an event log serves no event stream.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the backend fails or keeps no event log.
    fn read_events(
        &self,
        after: EventId,
        limit: usize,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send {
        let _ = (after, limit);
        async { Err(StoreError::Unavailable("this store keeps no event log".into())) }
    }

    /// Registers `wake`, which the store calls when another node sharing the same
    /// backend may have committed events. A store that serves one node only
    /// ignores it.
    fn on_remote_events(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) {
        let _ = wake;
    }

    /// Registers `wake`, which the store calls with a queue name when another node
    /// sharing the same backend made a task of that queue leasable (so long polls
    /// here can look). A store that serves one node only ignores it.
    fn on_remote_work(&self, wake: std::sync::Arc<dyn Fn(&str) + Send + Sync>) {
        let _ = wake;
    }

    /// Flushes and closes the store; later calls get [`StoreError::Closed`].
    fn close(&self) -> impl Future<Output = ()> + Send;
}
