//! The writer: owns the connection and the in-memory index, and applies every
//! operation as core transitions on tasks held in memory or loaded from their
//! rows. It runs on whichever thread holds the writer lock: the writer thread
//! (`run_writer`), or a caller that found the writer idle ([`Writer`]).
//!
//! A task's current state is in one of two places. Most tasks are *settled*: their
//! row holds their state. A task the writer changed without writing its row is
//! *dirty*: its state is in [`Memory::dirty`], and the records that lead to it are
//! in the journal (`journal.rs`), committed in the same transaction as the rest of
//! the batch. An enqueue or a lease makes a task dirty; an ack, nack, expiry,
//! cancel, retry or promotion settles it, writing its row once. So a task that is
//! enqueued, leased and acked soon after has its row written once, finished,
//! instead of being inserted and rewritten twice.
//!
//! Invariants:
//! - a dirty task's state equals its rows replayed with the journal: every change
//!   to it after its row was last written is a journal record, in order;
//! - a journal row is deleted only when no dirty task has a record in it or before
//!   it (`since`), so replaying what is left gives every dirty task back;
//! - the memory held by dirty tasks and the size of the journal are bounded
//!   ([`Limits`]): past them, new tasks go to rows at once and the oldest dirty
//!   tasks are settled.

// Bulk actions (`bulk.rs`) reach into the writer's memory, so they are a child module.
#[path = "bulk.rs"]
mod bulk;

use crate::checkpoint::{self, Checkpointer};
use crate::journal::{self, Record};
use crate::rows::{self, Db, QUEUE_COLUMNS, RowWriter, task_columns};
use crate::sync::{Pace, Syncer};
use crate::{Job, Limits, Options, Reply, schema, seqs};
use cherga_core::{
    AckOutcome, Change, Index, LeaseToken, Millis, NewTask, QueueName, QueueSettings, QueueSettingsPatch,
    Refusal, SeqHash, Task, TaskId, TaskSlot, TaskState, Transition, fingerprint,
};
use cherga_store::events::EventBatch;
use cherga_store::{
    Ack, Claim, Effects, Enqueued, EventId, ListTasks, Nack, QueueInfo, Revocation, StoreError, TickReport,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// Most jobs in one transaction: bounds the latency a single commit adds.
const MAX_BATCH: usize = 2048;
/// Most timer transitions in one tick; the rest wait for the next tick.
const TICK_LIMIT: usize = 10_000;
/// Purge and key expiry run at most this often.
const PURGE_EVERY_MS: Millis = 1_000;
/// Most dirty tasks settled in one batch because a limit was passed: the work is
/// spread over batches so that no single commit takes long.
const SETTLE_PER_BATCH: usize = 2_048;

pub struct Engine {
    conn: Connection,
    mem: Memory,
    queues: HashMap<String, QueueSettings>,
    /// The highest sequence number given in each queue's range (`seqs.rs`), by
    /// queue number; a queue not here has given none.
    highest: HashMap<i64, u64>,
    /// Whether rows numbered before schema version 6 may exist (their index
    /// does), so that a listing must look for them too.
    legacy_rows: bool,
    last_purge: Millis,
    /// Set when a job failed in the backend: the batch must roll back.
    poisoned: bool,
    /// How long the event log keeps events (`None`: there is no log).
    event_retention_ms: Option<Millis>,
    /// The number of the last event whose batch is durable: readers of the log
    /// read no further. Raised when the batch's answers go out, after its sync.
    events_durable: Arc<AtomicU64>,
}

/// What the writer lock guards: the connection and the index ([`Engine`]), the
/// syncer, the checkpointer and the pace of batches. Whoever holds it is the
/// only user of the connection: the writer thread, which takes every job waiting
/// and runs them as one batch, or a caller that found the writer idle and runs
/// its own job as a batch of one, syncing and answering itself (no hand-over to
/// the writer thread and back).
///
/// Batches are group-committed: the syncer fdatasyncs the WAL for every batch
/// committed since its last sync and only then answers, while the next batch
/// runs. While batches rarely collide with the fsync before them ([`Pace`]), a
/// batch that nothing waits behind is synced and answered by whoever ran it.
pub struct Writer {
    engine: Engine,
    syncer: Syncer,
    checkpointer: Checkpointer,
    pace: Pace,
    /// Jobs were waiting when the last batch was answered: the next batch
    /// collides with it.
    collided: bool,
    /// Set by [`Writer::finish`]: no batch runs any more.
    closed: bool,
}

impl Writer {
    pub fn new(engine: Engine, syncer: Syncer, checkpointer: Checkpointer) -> Self {
        Self { engine, syncer, checkpointer, pace: Pace::default(), collided: false, closed: false }
    }

    /// Whether a caller may run its job now instead of queueing it for the
    /// writer thread: nothing is being synced and batches have been quiet.
    /// (The caller also checks that no job waits.)
    pub fn idle(&self) -> bool {
        !self.closed && !self.collided && self.pace.quiet() && !self.syncer.busy()
    }

    /// Runs `batch`, commits it and has it answered; `queued` counts jobs sent to
    /// the writer thread and not yet taken. Only before [`Writer::finish`]: the
    /// writer thread finishes after its last batch, and callers run theirs only
    /// while [`Writer::idle`].
    pub fn run(&mut self, batch: Vec<Job>, queued: &AtomicUsize) {
        // A batch that starts while the last one is still being synced, or right
        // behind jobs that waited for it, is a collision.
        let collided = std::mem::take(&mut self.collided) || self.syncer.busy();
        self.pace.batch(collided);
        let Self { engine, syncer, checkpointer, pace, .. } = self;
        engine.run_batch(batch, |engine, replies| {
            syncer.after_commit(replies, queued.load(Ordering::Acquire) > 0, pace);
            checkpointer.after_commit(&engine.conn);
        });
        self.collided = queued.load(Ordering::Acquire) > 0;
    }

    /// Answers what is in flight, settles the dirty tasks and checkpoints the WAL;
    /// later batches are refused.
    pub fn finish(&mut self) {
        self.closed = true;
        // Every answer is sent before the connection closes.
        self.syncer.finish();
        if let Err(e) = self.engine.settle_all() {
            let error = &e as &dyn std::error::Error;
            tracing::warn!(
                error,
                "could not settle the dirty tasks at close; the journal will be replayed at next open"
            );
        }
        self.checkpointer.finish();
        if let Err(e) = self.engine.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "checkpoint at close failed; the WAL will be replayed at next open");
        }
    }
}

/// The writer thread: takes every job waiting (at most [`MAX_BATCH`]) and runs
/// them as one batch under the writer lock, until the channel closes.
pub fn run_writer(writer: &Mutex<Writer>, jobs: &mpsc::Receiver<Job>, queued: &AtomicUsize) {
    while let Ok(first) = jobs.recv() {
        let mut writer = writer.lock().expect("writer lock");
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        writer.run(batch, queued);
    }
    writer.lock().expect("writer lock").finish();
}

/// A task whose state is ahead of its row (see the module's documentation).
struct Dirty {
    task: Task,
    /// The batch (journal `txn`) of the task's first record since its row was
    /// last written: the journal from here on is needed to replay it.
    since: u64,
    /// Whether the task has a row at all (else settling it inserts one).
    has_row: bool,
    /// What [`task_bytes`] counted for it when it was put here.
    bytes: usize,
}

/// Where a task taken out for a transition came from; what settling or keeping it
/// must do.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// A new task: it has neither row nor journal record.
    New,
    /// Its row holds its state.
    Row,
    /// It was dirty.
    Dirty { since: u64, has_row: bool },
}

/// What the writer keeps in memory about tasks, beside their rows. Apart from
/// [`Engine`] so that a statement borrowing the connection can stay prepared
/// across a loop that updates it.
struct Memory {
    index: Index,
    /// Dirty tasks by sequence number. Only the holder of the writer lock (the
    /// writer thread, or a caller running its job as a batch of one) changes
    /// tasks, and every change to one of these is also a record in
    /// [`Memory::batch`].
    /// Boxed, so that the table holds 16 bytes per task: when it grows, every
    /// entry is copied into new memory that the kernel zeroes first, and with
    /// whole tasks in it that stalled the writer for up to 60 ms at about
    /// 100,000 dirty tasks (`docs/storage.md`).
    dirty: HashMap<u64, Box<Dirty>, SeqHash>,
    /// `(since, seq)` in the order tasks became dirty, so the front gives the
    /// oldest journal row still needed. An entry is stale once its task was
    /// settled (or settled and made dirty again, with a later `since`); stale
    /// entries are dropped at the front and, when they pile up, everywhere.
    order: VecDeque<(u64, u64)>,
    /// The sum of [`Dirty::bytes`].
    dirty_bytes: usize,
    /// The journal rows on disk, oldest first, with their sizes.
    retained: VecDeque<(u64, usize)>,
    /// The sum of the sizes in [`Memory::retained`].
    journal_bytes: usize,
    /// The records of the batch being run, written at its end.
    batch: journal::Batch,
    /// The journal `txn` of the batch being run.
    txn: u64,
    limits: Limits,
    /// Each queue's number (`queues.id`, the tasks' `qid`).
    qids: HashMap<String, i64>,
    /// What the job being run changed, handed to its caller when it ends
    /// ([`Engine::take_effects`]).
    effects: Effects,
    /// The events of the batch being run, written with it as one row of the
    /// event log; `None` when no log is kept.
    events: Option<EventBatch>,
    /// The number the batch's first event gets: one past every event on disk.
    next_event: EventId,
    /// The finished tasks with rows, by queue number: `(finished_at, seq)` in the
    /// order they finished, which is the order retention purges them in. This
    /// replaces an index of finished rows, which was an eighth of the writer's
    /// work per task (`docs/storage.md`), for 16 bytes of memory per finished
    /// task kept. An entry may be stale (the task was retried since, or purged):
    /// a purge deletes a row only if its `finished_at` is still the entry's.
    finished: HashMap<i64, VecDeque<(Millis, u64)>>,
}

/// About how much memory a dirty task holds: the entry and the strings it owns.
fn task_bytes(task: &Task) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let lease = task.lease.as_ref().map_or(0, |l| l.token.as_str().len() + opt(&l.worker));
    let history = match task.history.entries() {
        [] => 0,
        entries => {
            std::mem::size_of_val(entries)
                + entries.iter().map(|e| opt(&e.worker) + opt(&e.error)).sum::<usize>()
        }
    };
    std::mem::size_of::<(u64, Box<Dirty>)>()
        + std::mem::size_of::<Dirty>()
        + task.queue.len()
        + task.kind.len()
        + task.payload.len()
        + opt(&task.idempotency_key)
        + opt(&task.group)
        + opt(&task.result)
        + opt(&task.last_error)
        + lease
        + history
}

impl Memory {
    fn new(limits: Limits, log_events: bool) -> Self {
        Memory {
            index: Index::new(),
            dirty: HashMap::with_hasher(SeqHash),
            order: VecDeque::new(),
            dirty_bytes: 0,
            retained: VecDeque::new(),
            journal_bytes: 0,
            batch: journal::Batch::default(),
            txn: 1,
            limits,
            qids: HashMap::new(),
            finished: HashMap::new(),
            effects: Effects::none(),
            events: log_events.then(EventBatch::default),
            next_event: 1,
        }
    }

    /// The number of `queue`, which exists: every task's queue was stored first.
    fn qid(&self, queue: &str) -> i64 {
        self.qids.get(queue).copied().unwrap_or(0)
    }

    /// Whether a new task may be kept dirty. New tasks get half of the room, so
    /// that a backlog cannot crowd out the running tasks whose acks are coming.
    fn room_for_new(&self) -> bool {
        self.dirty_bytes < self.limits.dirty_bytes / 2
    }

    fn room_for_running(&self) -> bool {
        self.dirty_bytes < self.limits.dirty_bytes
    }

    /// A copy of task `seq` as it is now, from memory or from its row.
    fn task(&self, conn: &Connection, seq: u64) -> Result<Task, StoreError> {
        match self.dirty.get(&seq) {
            Some(dirty) => Ok(dirty.task.clone()),
            None => rows::load_seq(conn, seq),
        }
    }

    /// Takes task `seq` out for a transition. The caller must hand it back with
    /// [`Memory::restore`] (unchanged), [`Memory::created`] or [`Memory::leased`]
    /// (kept dirty, or its row written) or [`Memory::settle`] (row written); a task dropped instead
    /// would be lost from memory though not from disk.
    fn take_seq(&mut self, reader: &mut rows::Reader<'_>, seq: u64) -> Result<(Task, Origin), StoreError> {
        match self.dirty.remove(&seq) {
            Some(dirty) => {
                self.dirty_bytes -= dirty.bytes;
                Ok((dirty.task, Origin::Dirty { since: dirty.since, has_row: dirty.has_row }))
            }
            None => Ok((reader.load_seq(seq)?, Origin::Row)),
        }
    }

    /// [`Memory::take_seq`] by id, checking the whole id, not only its sequence.
    fn take(&mut self, conn: &Connection, id: TaskId) -> Result<(Task, Origin), StoreError> {
        let (task, origin) = self.take_seq(&mut rows::Reader::new(conn), id.seq())?;
        if task.id == id {
            Ok((task, origin))
        } else {
            self.restore(task, origin);
            Err(StoreError::NotFound)
        }
    }

    /// Puts back a task taken out and not changed.
    fn restore(&mut self, task: Task, origin: Origin) {
        if let Origin::Dirty { since, has_row } = origin {
            self.put(task, since, has_row);
        }
    }

    fn put(&mut self, task: Task, since: u64, has_row: bool) {
        let bytes = task_bytes(&task);
        self.dirty_bytes += bytes;
        self.dirty.insert(task.id.seq(), Box::new(Dirty { task, since, has_row, bytes }));
    }

    /// Keeps `task`, changed by a transition from `origin`, dirty: from now on
    /// the journal is needed to replay it.
    fn keep(&mut self, task: Task, origin: Origin) {
        let (since, has_row) = match origin {
            Origin::Dirty { since, has_row } => (since, has_row),
            Origin::New | Origin::Row => {
                self.order.push_back((self.txn, task.id.seq()));
                (self.txn, matches!(origin, Origin::Row))
            }
        };
        self.put(task, since, has_row);
    }

    /// Notes that `change` moved `task` (as it is now) out of `from`.
    fn changed(&mut self, task: &Task, change: Change, from: Option<TaskState>, now: Millis) {
        self.record(Transition::of(task, change, from, now));
    }

    /// Notes a transition: for the job's caller, and in the batch's events.
    fn record(&mut self, transition: Transition) {
        if let Some(events) = &mut self.events {
            events.push(&transition);
        }
        self.effects.transitions.push(transition);
    }

    /// Records the new task `task` in the journal and keeps it dirty.
    fn created(&mut self, task: Task) {
        self.batch.created(&task);
        self.keep(task, Origin::New);
    }

    /// Records the lease (or extension) of `task` in the journal and keeps it
    /// dirty; a task that was settled is written to its row instead when memory
    /// is full.
    fn leased(&mut self, rows: &mut RowWriter<'_>, task: &Task, origin: Origin) -> Result<(), StoreError> {
        if matches!(origin, Origin::Dirty { .. }) || self.room_for_running() {
            self.batch.leased(task);
            self.keep(task.clone(), origin);
            Ok(())
        } else {
            self.settle(rows, task, origin)
        }
    }

    /// Writes `task`, changed by a transition from `origin`, to its row; its
    /// journal records, if any, are void from now on.
    fn settle(&mut self, rows: &mut RowWriter<'_>, task: &Task, origin: Origin) -> Result<(), StoreError> {
        let qid = self.qid(&task.queue);
        match origin {
            Origin::New => rows.write(task, qid, false)?,
            Origin::Row => rows.write(task, qid, true)?,
            Origin::Dirty { has_row, .. } => {
                rows.write(task, qid, has_row)?;
                self.batch.settled(task.id.seq());
            }
        }
        if let Some(at) = task.finished_at.filter(|_| task.state.is_finished()) {
            self.finished.entry(qid).or_default().push_back((at, task.id.seq()));
        }
        Ok(())
    }

    /// Settles the dirty task `seq` as it is (its state does not change, so the
    /// index is not told).
    fn settle_seq(&mut self, rows: &mut RowWriter<'_>, seq: u64) -> Result<(), StoreError> {
        let Some(dirty) = self.dirty.remove(&seq) else { return Ok(()) };
        self.dirty_bytes -= dirty.bytes;
        let origin = Origin::Dirty { since: dirty.since, has_row: dirty.has_row };
        self.settle(rows, &dirty.task, origin)
    }

    fn is_live(&self, (since, seq): (u64, u64)) -> bool {
        self.dirty.get(&seq).is_some_and(|d| d.since == since)
    }

    /// Drops stale entries of [`Memory::order`]: at the front always, and all of
    /// them once they are most of it.
    fn prune_order(&mut self) {
        while let Some(&front) = self.order.front() {
            if self.is_live(front) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.dirty.len() + 1024 {
            let dirty = &self.dirty;
            self.order.retain(|&(since, seq)| dirty.get(&seq).is_some_and(|d| d.since == since));
        }
    }

    /// Ends the batch being run, inside its transaction: settles the oldest dirty
    /// tasks while a limit is passed, writes the batch's records as one journal
    /// row, deletes the journal rows no dirty task needs any more, and writes
    /// the batch's events as one row of the event log. Returns the number of the
    /// last event written, if any.
    fn finish_batch(&mut self, conn: &Connection) -> Result<Option<EventId>, StoreError> {
        let mut rows = RowWriter::new(conn);
        let mut settled = 0;
        let mut delete_before = None;
        loop {
            self.prune_order();
            let keep_from = self.order.front().map_or(self.txn + 1, |&(since, _)| since);
            while let Some(&(txn, bytes)) = self.retained.front() {
                if txn >= keep_from {
                    break;
                }
                self.retained.pop_front();
                self.journal_bytes -= bytes;
                delete_before = Some(keep_from);
            }
            let over =
                self.journal_bytes > self.limits.journal_bytes || self.dirty_bytes > self.limits.dirty_bytes;
            let Some(&(_, oldest)) = self.order.front() else { break };
            if !over || settled == SETTLE_PER_BATCH {
                break;
            }
            self.settle_seq(&mut rows, oldest)?;
            settled += 1;
        }
        if let Some(before) = delete_before {
            conn.prepare_cached("DELETE FROM journal WHERE txn < ?1")
                .db()?
                .execute(params![before as i64])
                .db()?;
        }
        let records = self.batch.take();
        // With no task dirty, every record of this batch is void already.
        if !records.is_empty() && !self.order.is_empty() {
            conn.prepare_cached("INSERT INTO journal (txn, records) VALUES (?1, ?2)")
                .db()?
                .execute(params![self.txn as i64, records])
                .db()?;
            self.retained.push_back((self.txn, records.len()));
            self.journal_bytes += records.len();
        }
        self.txn += 1;
        let Some(events) = self.events.as_mut().filter(|events| !events.is_empty()) else { return Ok(None) };
        let (first, n, at) = (self.next_event, events.len(), events.first_at());
        conn.prepare_cached("INSERT INTO events (first, n, at, records) VALUES (?1, ?2, ?3, ?4)")
            .db()?
            .execute(params![first as i64, n, at, events.take()])
            .db()?;
        self.next_event += u64::from(n);
        Ok(Some(self.next_event - 1))
    }
}

impl Engine {
    pub fn open(options: &Options) -> Result<Self, StoreError> {
        let mut conn = Connection::open(&options.path).db()?;
        schema::configure(&conn, options.durable).db()?;
        schema::migrate(&mut conn).map_err(|e| StoreError::Unavailable(e.into()))?;
        checkpoint::watch(&conn);
        let mut engine = Engine {
            conn,
            mem: Memory::new(options.limits, options.event_retention_ms.is_some()),
            queues: HashMap::new(),
            highest: HashMap::new(),
            legacy_rows: false,
            last_purge: 0,
            poisoned: false,
            event_retention_ms: options.event_retention_ms,
            events_durable: Arc::new(AtomicU64::new(0)),
        };
        engine.rebuild()?;
        Ok(engine)
    }

    /// Loads queue settings, replays the journal, and rebuilds the index from the
    /// rows on disk and the dirty tasks. Whatever was in memory is dropped: this
    /// is also how a rolled-back batch is forgotten.
    fn rebuild(&mut self) -> Result<(), StoreError> {
        let mut queues = HashMap::new();
        let mut qids = HashMap::new();
        {
            let mut stmt = self.conn.prepare(&format!("SELECT {QUEUE_COLUMNS}, id FROM queues")).db()?;
            let rows =
                stmt.query_map([], |row| Ok((rows::queue_from_row(row)?, row.get::<_, i64>(11)?))).db()?;
            for row in rows {
                let ((name, settings), id) = row.db()?;
                qids.insert(name.clone(), id);
                queues.insert(name, settings);
            }
        }
        let mut mem = self.replay()?;
        mem.qids = qids;
        let index = &mut mem.index;
        for (name, settings) in &queues {
            index.configure_queue(name, settings.concurrency, settings.paused);
        }
        // The highest number given in each queue's range: past every row, every
        // dirty task and every number a purge deleted (its queue's counter).
        let mut highest: HashMap<i64, u64> = HashMap::new();
        let mut given = |seq: u64| {
            if let Some(qid) = seqs::queue_of(seq) {
                let high = highest.entry(qid).or_insert(seq);
                *high = (*high).max(seq);
            }
        };
        {
            let mut stmt = self.conn.prepare("SELECT name, value FROM counters").db()?;
            let mut rows = stmt.query([]).db()?;
            while let Some(row) = rows.next().db()? {
                let name: String = row.get(0).db()?;
                if seqs::counter_queue(&name).is_some() {
                    given(row.get::<_, i64>(1).db()? as u64);
                }
            }
        }
        self.legacy_rows = self
            .conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)",
                [seqs::LEGACY_INDEX],
                |r| r.get(0),
            )
            .db()?;
        // The index's table makes each chunk that follows another at its full
        // size (see `cherga_core::index`), so the scan needs no room reserved;
        // the loader shrinks the chunks it filled only in part.
        {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT seq, qid, priority, run_at, grp, state, lease_expires_at, finished_at FROM tasks",
                )
                .db()?;
            let mut rows = stmt.query([]).db()?;
            // Finished tasks are only counted and listed for retention: per queue
            // number, counts by state and the `(finished_at, seq)` of each.
            type Finished = ([u64; 6], Vec<(Millis, u64)>);
            let mut finished: HashMap<i64, Finished> = HashMap::new();
            let mut loader = index.loader();
            // The index's number for each queue, by its stored number.
            let max_qid = mem.qids.values().copied().max().unwrap_or(0).max(0) as usize;
            let mut index_ids: Vec<Option<u32>> = vec![None; max_qid + 1];
            for (name, &qid) in &mem.qids {
                index_ids[qid as usize] = Some(loader.queue_id(name));
            }
            let index_id =
                |qid: i64| usize::try_from(qid).ok().and_then(|qid| index_ids.get(qid).copied().flatten());
            let any_dirty = !mem.dirty.is_empty();
            while let Some(row) = rows.next().db()? {
                let seq: i64 = row.get(0).db()?;
                given(seq as u64);
                // The journal is ahead of this row: the task is added below as it is now.
                if any_dirty && mem.dirty.contains_key(&(seq as u64)) {
                    continue;
                }
                let qid: i64 = row.get(1).db()?;
                let code: u8 = row.get(5).db()?;
                let state = TaskState::from_code(code)
                    .ok_or_else(|| StoreError::Corrupt(format!("task {seq} has unknown state {code}")))?;
                if state.is_finished() {
                    let at: Option<Millis> = row.get(7).db()?;
                    let (counts, list) = finished.entry(qid).or_default();
                    counts[usize::from(code)] += 1;
                    list.push((at.unwrap_or(0), seq as u64));
                    continue;
                }
                let queue = index_id(qid).ok_or_else(|| {
                    StoreError::Corrupt(format!("task {seq} is in queue number {qid}, which is not stored"))
                })?;
                let group: Option<String> = row.get(4).db()?;
                loader.add(
                    seq as u64,
                    TaskSlot {
                        queue,
                        priority: row.get(2).db()?,
                        run_at: row.get(3).db()?,
                        group: group.map(|g| std::sync::Arc::from(g.as_str())),
                        state,
                        lease_expires_at: row.get(6).db()?,
                    },
                );
            }
            for (&seq, dirty) in &mem.dirty {
                given(seq);
                let queue = loader.queue_id(&dirty.task.queue);
                loader.add(seq, TaskSlot::of(&dirty.task, queue));
            }
            loader.finish();
            for (qid, (counts, mut list)) in finished {
                let Some(queue) = index_id(qid) else {
                    return Err(StoreError::Corrupt(format!(
                        "finished tasks in queue number {qid}, which is not stored"
                    )));
                };
                for state in TaskState::ALL.into_iter().filter(|s| s.is_finished()) {
                    index.add_finished(queue, state, counts[usize::from(state.code())]);
                }
                list.sort_unstable();
                mem.finished.insert(qid, list.into());
            }
        }
        // Events are numbered on past every row of the log and every number a
        // retention purge deleted.
        let written: i64 =
            self.conn.query_row("SELECT coalesce(max(first + n), 1) FROM events", [], |r| r.get(0)).db()?;
        let purged = self.events_purged()?;
        mem.next_event = (written.max(1) as u64).max(purged + 1);
        self.events_durable.fetch_max(mem.next_event - 1, Ordering::AcqRel);
        self.mem = mem;
        self.queues = queues;
        self.highest = highest;
        Ok(())
    }

    /// The number of the last event a retention purge deleted (0 if none).
    fn events_purged(&self) -> Result<EventId, StoreError> {
        let value: Option<i64> = self
            .conn
            .query_row("SELECT value FROM counters WHERE name = 'events_purged'", [], |r| r.get(0))
            .optional()
            .db()?;
        Ok(value.map_or(0, |v| v.max(0) as u64))
    }

    /// The watermark readers of the event log stop at: the number of the last
    /// event whose batch is durable.
    pub fn events_durable(&self) -> Arc<AtomicU64> {
        self.events_durable.clone()
    }

    /// The dirty tasks as of the last commit: the journal replayed, in order,
    /// over the rows it names. The index is left empty.
    fn replay(&self) -> Result<Memory, StoreError> {
        let mut mem = Memory::new(self.mem.limits, self.event_retention_ms.is_some());
        let mut stmt = self.conn.prepare("SELECT txn, records FROM journal ORDER BY txn").db()?;
        let mut journal = stmt.query([]).db()?;
        let mut reader = rows::Reader::new(&self.conn);
        let mut last_txn = 0;
        while let Some(row) = journal.next().db()? {
            let txn = row.get::<_, i64>(0).db()? as u64;
            let bytes = row.get_ref(1).db()?.as_blob().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let corrupt = |message: String| StoreError::Corrupt(format!("journal row {txn}: {message}"));
            for record in journal::decode(bytes).map_err(corrupt)? {
                match record {
                    Record::Created(task) => {
                        let (since, has_row) =
                            mem.dirty.remove(&task.id.seq()).map_or((txn, false), |d| (d.since, d.has_row));
                        mem.dirty
                            .insert(task.id.seq(), Box::new(Dirty { task: *task, since, has_row, bytes: 0 }));
                    }
                    Record::Leased(fields) => match mem.dirty.get_mut(&fields.seq) {
                        Some(dirty) => fields.apply(&mut dirty.task),
                        None => {
                            let seq = fields.seq;
                            let mut task = reader.load_seq(seq).map_err(|e| match e {
                                StoreError::NotFound => {
                                    corrupt(format!("a lease of task {seq}, which has no row"))
                                }
                                other => other,
                            })?;
                            fields.apply(&mut task);
                            mem.dirty
                                .insert(seq, Box::new(Dirty { task, since: txn, has_row: true, bytes: 0 }));
                        }
                    },
                    Record::Settled(seq) => {
                        mem.dirty.remove(&seq);
                    }
                }
            }
            mem.retained.push_back((txn, bytes.len()));
            mem.journal_bytes += bytes.len();
            last_txn = txn;
        }
        let mut order: Vec<(u64, u64)> = Vec::with_capacity(mem.dirty.len());
        for (&seq, dirty) in &mut mem.dirty {
            dirty.bytes = task_bytes(&dirty.task);
            mem.dirty_bytes += dirty.bytes;
            order.push((dirty.since, seq));
        }
        order.sort_unstable();
        mem.order = order.into();
        mem.txn = last_txn + 1;
        Ok(mem)
    }

    /// Runs a statement without parameters, prepared once.
    fn statement(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// What the job that just ran changed; the next job starts with none.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.mem.effects)
    }

    /// Runs `batch` in one transaction; the answers, once it committed, are for
    /// `answer` (the syncer's or the writer's own sync). On failure the batch is
    /// rolled back, the index rebuilt from disk, and every caller answered at once.
    fn run_batch(&mut self, batch: Vec<Job>, answer: impl FnOnce(&mut Self, Vec<Reply>)) {
        let mut replies: Vec<Reply>;
        let mut last_event = None;
        let outcome = match self.statement("BEGIN IMMEDIATE") {
            Ok(()) => {
                replies = batch.into_iter().map(|job| job(Some(&mut *self))).collect();
                if !self.poisoned {
                    match self.mem.finish_batch(&self.conn) {
                        Ok(last) => last_event = last,
                        Err(e) => {
                            tracing::error!(error = %e, "could not write the batch's journal or events");
                            self.poisoned = true;
                        }
                    }
                }
                if self.poisoned {
                    Err("a statement failed; the batch was rolled back".to_owned())
                } else {
                    self.statement("COMMIT").map_err(|e| e.to_string())
                }
            }
            Err(e) => {
                replies = batch.into_iter().map(|job| job(None)).collect();
                Err(e.to_string())
            }
        };
        match outcome {
            Ok(()) => {
                if let Some(last) = last_event {
                    // First of the batch's answers, so that a caller who hears of
                    // its change can read the change's events.
                    let durable = self.events_durable.clone();
                    replies.insert(
                        0,
                        Box::new(move |commit: Result<(), String>| {
                            if commit.is_ok() {
                                durable.fetch_max(last, Ordering::AcqRel);
                            }
                        }),
                    );
                }
                answer(self, replies)
            }
            Err(message) => {
                tracing::error!(error = %message, "batch failed; rolling back and rebuilding the index");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.poisoned = false;
                if let Err(e) = self.rebuild() {
                    tracing::error!(error = %e, "could not rebuild the index after a failed batch");
                }
                // Nothing of a rolled-back batch needs the disk: answer now.
                for reply in replies {
                    reply(Err(message.clone()));
                }
            }
        }
    }

    /// Writes every dirty task to its row and empties the journal, in one
    /// transaction, so that the next open has nothing to replay. Nothing waits
    /// for it: the same state is durable in the journal already.
    fn settle_all(&mut self) -> Result<(), StoreError> {
        if self.mem.dirty.is_empty() && self.mem.retained.is_empty() {
            return Ok(());
        }
        let tx = self.conn.unchecked_transaction().db()?;
        {
            let mut rows = RowWriter::new(&tx);
            for dirty in self.mem.dirty.values() {
                rows.write(&dirty.task, self.mem.qid(&dirty.task.queue), dirty.has_row)?;
            }
        }
        tx.execute("DELETE FROM journal", []).db()?;
        tx.commit().db()?;
        self.mem.dirty.clear();
        self.mem.order.clear();
        self.mem.retained.clear();
        self.mem.dirty_bytes = 0;
        self.mem.journal_bytes = 0;
        Ok(())
    }

    /// The settings of `queue`, creating the queue with defaults on first use.
    fn ensure_queue(&mut self, queue: &str, now: Millis) -> Result<QueueSettings, StoreError> {
        if let Some(s) = self.queues.get(queue) {
            return Ok(s.clone());
        }
        let settings = QueueSettings::defaults();
        let id = self.queue_number(queue)?;
        rows::save_queue(&self.conn, queue, id, &settings, now)?;
        self.mem.index.configure_queue(queue, settings.concurrency, settings.paused);
        self.queues.insert(queue.to_owned(), settings.clone());
        Ok(settings)
    }

    /// The number of `queue`, given to it now if it has none. A batch that rolls
    /// back forgets it with the rest (the rebuild reads the numbers again).
    fn queue_number(&mut self, queue: &str) -> Result<i64, StoreError> {
        if let Some(&id) = self.mem.qids.get(queue) {
            return Ok(id);
        }
        let id = self.mem.qids.values().max().map_or(1, |max| max + 1);
        if id > seqs::MAX_QUEUE {
            return Err(StoreError::InvalidSettings(format!(
                "the embedded store holds at most {} queues",
                seqs::MAX_QUEUE
            )));
        }
        self.mem.qids.insert(queue.to_owned(), id);
        Ok(id)
    }

    pub fn load(&self, id: TaskId) -> Result<Task, StoreError> {
        let task = self.mem.task(&self.conn, id.seq())?;
        if task.id == id { Ok(task) } else { Err(StoreError::NotFound) }
    }

    /// Applies `change` to task `id`, given its queue's settings. A change that
    /// applied is written to the task's row; a refusal or a replay leaves the
    /// task as it was.
    fn settle_change(
        &mut self,
        id: TaskId,
        kind: Change,
        now: Millis,
        change: impl FnOnce(&mut Task, &QueueSettings) -> Result<AckOutcome, Refusal>,
    ) -> Result<Task, StoreError> {
        let (mut task, origin) = self.mem.take(&self.conn, id)?;
        let was = task.state;
        let settings = self.settings_of(&task.queue);
        match change(&mut task, &settings) {
            Ok(AckOutcome::Applied) => {
                self.mem.settle(&mut RowWriter::new(&self.conn), &task, origin)?;
                self.mem.index.upsert_task(Some(was), &task);
                self.mem.changed(&task, kind, Some(was), now);
                Ok(task)
            }
            Ok(AckOutcome::Replayed) => {
                self.mem.restore(task.clone(), origin);
                Ok(task)
            }
            Err(refusal) => {
                self.mem.restore(task, origin);
                Err(refusal.into())
            }
        }
    }

    pub fn enqueue(
        &mut self,
        queue: &QueueName,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
        let settings = self.ensure_queue(queue.as_str(), now)?;
        let qid = self.mem.qid(queue.as_str());
        let (start, end) = seqs::range(qid);
        let mut high = self.highest.get(&qid).copied().unwrap_or(start);
        let mut rows = RowWriter::new(&self.conn);
        let mut out = Vec::with_capacity(tasks.len());
        for new in tasks {
            let seq = high + 1;
            if seq >= end {
                return Err(StoreError::Unavailable(
                    format!("queue {queue} has used all of its task numbers").into(),
                ));
            }
            let one =
                enqueue_one(&self.conn, &mut rows, &mut self.mem, queue.as_str(), new, seq, &settings, now)?;
            if matches!(one, Ok(Enqueued::Created(_))) {
                high = seq;
            }
            out.push(one);
        }
        if high > start {
            self.highest.insert(qid, high);
        }
        Ok(out)
    }

    pub fn claim(&mut self, claim: Claim, now: Millis) -> Result<Vec<Task>, StoreError> {
        let settings = self.ensure_queue(claim.queue.as_str(), now)?;
        let lease_ms = claim.lease_ms.unwrap_or(settings.lease_ms);
        // Picking again after each lease would be needed only if a lease could make
        // another task eligible; it cannot, so one pick serves the whole claim.
        let picked = self.mem.index.pick(claim.queue.as_str(), claim.max);
        let mut leased = Vec::with_capacity(picked.len());
        let mut reader = rows::Reader::new(&self.conn);
        let mut rows = RowWriter::new(&self.conn);
        for seq in picked {
            let (mut task, origin) = self.mem.take_seq(&mut reader, seq)?;
            if task.lease(fastrand::u64(..), lease_ms, claim.worker.clone(), now).is_err() {
                // The index and the tasks disagree: trust the tasks.
                tracing::error!(task = %task.id, state = %task.state, "index offered a task that is not ready");
                let slot_state = self.mem.index.state_of(seq);
                self.mem.index.upsert_task(slot_state, &task);
                self.mem.restore(task, origin);
                continue;
            }
            self.mem.index.upsert_task(Some(TaskState::Ready), &task);
            self.mem.leased(&mut rows, &task, origin)?;
            self.mem.changed(&task, Change::Leased, Some(TaskState::Ready), now);
            leased.push(task);
        }
        Ok(leased)
    }

    pub fn complete(
        &mut self,
        acks: Vec<Ack>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut rows = RowWriter::new(&self.conn);
        let mut out = Vec::with_capacity(acks.len());
        for ack in acks {
            let (mut task, origin) = match self.mem.take(&self.conn, ack.task_id) {
                Ok(taken) => taken,
                Err(StoreError::NotFound) => {
                    out.push(Err(StoreError::NotFound));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match task.ack(&LeaseToken::from_string(ack.token), ack.result, now) {
                Ok(AckOutcome::Applied) => {
                    self.mem.settle(&mut rows, &task, origin)?;
                    self.mem.index.upsert_task(Some(TaskState::Running), &task);
                    self.mem.changed(&task, Change::Acked, Some(TaskState::Running), now);
                    out.push(Ok(task));
                }
                Ok(AckOutcome::Replayed) => {
                    self.mem.restore(task.clone(), origin);
                    out.push(Ok(task));
                }
                Err(refusal) => {
                    self.mem.restore(task, origin);
                    out.push(Err(refusal.into()));
                }
            }
        }
        Ok(out)
    }

    fn settings_of(&self, queue: &str) -> QueueSettings {
        self.queues.get(queue).cloned().unwrap_or_else(QueueSettings::defaults)
    }

    pub fn fail(&mut self, nack: Nack, now: Millis) -> Result<Task, StoreError> {
        let token = LeaseToken::from_string(nack.token);
        let (error, retry_in_ms, dead) = (nack.error, nack.retry_in_ms, nack.dead);
        self.settle_change(nack.task_id, Change::Nacked, now, |task, settings| {
            task.nack(&token, error, retry_in_ms, dead, settings, fastrand::f64(), now)
        })
    }

    /// An extension is a lease record: the task stays dirty, so heartbeats do not
    /// rewrite its row.
    pub fn extend_lease(
        &mut self,
        id: TaskId,
        token: &str,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Task, StoreError> {
        let (mut task, origin) = self.mem.take(&self.conn, id)?;
        if let Err(refusal) = task.extend(&LeaseToken::from_string(token.to_owned()), lease_ms, now) {
            self.mem.restore(task, origin);
            return Err(refusal.into());
        }
        self.mem.index.upsert_task(Some(TaskState::Running), &task);
        self.mem.leased(&mut RowWriter::new(&self.conn), &task, origin)?;
        Ok(task)
    }

    pub fn cancel(&mut self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        self.settle_change(id, Change::Cancelled, now, |task, _| task.cancel(now))
    }

    pub fn retry_dead(&mut self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        self.settle_change(id, Change::Retried, now, |task, settings| {
            task.retry(settings.max_attempts, now).map(|()| AckOutcome::Applied)
        })
    }

    /// Lists the rows of the queue merged with its dirty tasks: the rows of dirty
    /// tasks are stale and left out, so SQL is asked for as many more rows as
    /// there are such tasks, and the dirty tasks that match are added.
    pub fn list_tasks(&self, list: &ListTasks) -> Result<Vec<Task>, StoreError> {
        if !self.queues.contains_key(list.queue.as_str()) {
            return Err(StoreError::NotFound);
        }
        let after = list.after.map_or(0, |id| id.seq());
        let mut stale_rows = 0;
        let mut out: Vec<Task> = Vec::new();
        for (&seq, dirty) in &self.mem.dirty {
            if dirty.task.queue != list.queue.as_str() {
                continue;
            }
            stale_rows += usize::from(dirty.has_row);
            if seq > after && list.state.is_none_or(|state| dirty.task.state == state) {
                out.push(dirty.task.clone());
            }
        }
        let limit = (list.limit + stale_rows) as i64;
        let qid = self.mem.qid(list.queue.as_str());
        let (start, end) = seqs::range(qid);
        // The queue's rows are the rowid range `start..end`; rows numbered before
        // schema version 6 are below every range and come first.
        let legacy = self.legacy_rows && after < seqs::FIRST;
        let (after, from, end) = (after as i64, after.max(start) as i64, end as i64);
        let dirty = &self.mem.dirty;
        let mut push_rows = |stmt: &mut rusqlite::CachedStatement<'_>, params: &[&dyn rusqlite::ToSql]| {
            let mut rows = stmt.query(params).db()?;
            while let Some(row) = rows.next().db()? {
                let task = rows::task_from_row(row).db()??;
                if !dirty.contains_key(&task.id.seq()) {
                    out.push(task);
                }
            }
            Ok::<(), StoreError>(())
        };
        // `?3` is the state asked for, or NULL for every state.
        let state = list.state.map(TaskState::code);
        if legacy {
            const SQL: &str = concat!(
                "SELECT ",
                task_columns!(),
                " FROM tasks WHERE qid = ?1 AND seq > ?2 AND seq < ",
                seqs::first_sql!(),
                " AND (?3 IS NULL OR state = ?3) ORDER BY seq LIMIT ?4"
            );
            let mut stmt = self.conn.prepare_cached(SQL).db()?;
            push_rows(&mut stmt, &[&qid, &after, &state, &limit])?;
        }
        const SQL: &str = concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE seq > ?1 AND seq < ?2 AND (?3 IS NULL OR state = ?3) ORDER BY seq LIMIT ?4"
        );
        let mut stmt = self.conn.prepare_cached(SQL).db()?;
        push_rows(&mut stmt, &[&from, &end, &state, &limit])?;
        out.sort_unstable_by_key(|task| task.id.seq());
        out.truncate(list.limit);
        Ok(out)
    }

    pub fn put_queue(
        &mut self,
        queue: &QueueName,
        patch: &QueueSettingsPatch,
        now: Millis,
    ) -> Result<QueueInfo, StoreError> {
        let current = self.settings_of(queue.as_str());
        let settings = current.with(patch).map_err(StoreError::InvalidSettings)?;
        let id = self.queue_number(queue.as_str())?;
        rows::save_queue(&self.conn, queue.as_str(), id, &settings, now)?;
        self.mem.index.configure_queue(queue.as_str(), settings.concurrency, settings.paused);
        self.queues.insert(queue.as_str().to_owned(), settings);
        self.mem.effects.queues_changed.push(queue.as_str().to_owned());
        Ok(self.queue_info(queue.as_str()).expect("just stored"))
    }

    pub fn queue_info(&self, queue: &str) -> Option<QueueInfo> {
        let settings = self.queues.get(queue)?;
        Some(QueueInfo {
            name: queue.to_owned(),
            settings: settings.clone(),
            counts: self.mem.index.counts(queue),
        })
    }

    pub fn list_queues(&self) -> Vec<QueueInfo> {
        let names: BTreeSet<&String> = self.queues.keys().collect();
        names.into_iter().filter_map(|name| self.queue_info(name)).collect()
    }

    pub fn tick(&mut self, now: Millis) -> Result<TickReport, StoreError> {
        let mut report = TickReport::default();
        let mut reader = rows::Reader::new(&self.conn);
        let mut rows = RowWriter::new(&self.conn);
        for seq in self.mem.index.due(now, TICK_LIMIT) {
            let (mut task, origin) = self.mem.take_seq(&mut reader, seq)?;
            if task.promote(now) {
                report.promoted += 1;
                self.mem.settle(&mut rows, &task, origin)?;
                self.mem.index.upsert_task(Some(TaskState::Scheduled), &task);
                self.mem.changed(&task, Change::Promoted, Some(TaskState::Scheduled), now);
            } else {
                self.mem.restore(task, origin);
            }
        }
        for seq in self.mem.index.expired(now, TICK_LIMIT) {
            let (mut task, origin) = self.mem.take_seq(&mut reader, seq)?;
            let settings = self.settings_of(&task.queue);
            if task.expire(&settings, fastrand::f64(), now) {
                report.expired += 1;
                self.mem.settle(&mut rows, &task, origin)?;
                self.mem.index.upsert_task(Some(TaskState::Running), &task);
                self.mem.changed(&task, Change::Expired, Some(TaskState::Running), now);
            } else {
                self.mem.restore(task, origin);
            }
        }
        drop((reader, rows));
        if now - self.last_purge >= PURGE_EVERY_MS {
            self.last_purge = now;
            report.purged = self.purge(now)?;
        }
        report.next_timer = self.mem.index.next_timer();
        Ok(report)
    }

    /// Deletes finished tasks past their queue's retention, oldest first, unless
    /// an idempotency key still inside its window points at them (those go to the
    /// back of the list, to be tried again); then forgets expired keys.
    fn purge(&mut self, now: Millis) -> Result<usize, StoreError> {
        let mut purged = 0;
        let mut purged_queues = BTreeSet::new();
        let mut moved = Vec::new();
        let mut delete = self
            .conn
            .prepare_cached(
                "DELETE FROM tasks WHERE seq = ?1 AND finished_at = ?2 \
                 AND (idem_key IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM idempotency_keys k \
                   WHERE k.queue = ?3 AND k.key = tasks.idem_key AND k.task_seq = tasks.seq AND k.expires_at > ?4)) \
                 RETURNING body",
            )
            .db()?;
        let mut kept =
            self.conn.prepare_cached("SELECT 1 FROM tasks WHERE seq = ?1 AND finished_at = ?2").db()?;
        for (queue, settings) in &self.queues {
            let qid = self.mem.qid(queue);
            let Some(list) = self.mem.finished.get_mut(&qid) else { continue };
            let cutoff = now.saturating_sub(settings.retention_ms);
            let mut held = Vec::new();
            for _ in 0..TICK_LIMIT {
                let Some(&(at, seq)) = list.front().filter(|&&(at, _)| at <= cutoff) else { break };
                list.pop_front();
                let seq = seq as i64;
                let body = delete.query_row(params![seq, at, queue, now], |r| r.get::<_, Vec<u8>>(0));
                match body.optional().db()? {
                    Some(body) => {
                        let task = journal::decode_task(&body)
                            .map_err(|e| StoreError::Corrupt(format!("purged task row: {e}")))?;
                        self.mem.index.forget_finished(queue, task.state, 1);
                        moved.push(Transition::purged(
                            task.id,
                            queue,
                            &task.kind,
                            task.state,
                            task.attempts,
                            now,
                        ));
                        purged += 1;
                        purged_queues.insert(qid);
                    }
                    None if kept.exists(params![seq, at]).db()? => held.push((at, seq as u64)),
                    None => {}
                }
            }
            list.extend(held);
            if list.is_empty() {
                self.mem.finished.remove(&qid);
            }
        }
        drop((delete, kept));
        for transition in moved {
            self.mem.record(transition);
        }
        // The deleted rows may have held the highest numbers their queues gave;
        // each queue's counter keeps them from being given again after a restart
        // (the start-up scan sees only the rows that are left).
        for qid in purged_queues {
            let Some(&high) = self.highest.get(&qid) else { continue };
            self.conn
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
                )
                .db()?
                .execute(params![seqs::counter(qid), high as i64])
                .db()?;
        }
        self.conn
            .prepare_cached("DELETE FROM idempotency_keys WHERE expires_at <= ?1")
            .db()?
            .execute(params![now])
            .db()?;
        self.conn
            .prepare_cached("DELETE FROM revoked_tokens WHERE expires_at <= ?1")
            .db()?
            .execute(params![now])
            .db()?;
        self.purge_events(now)?;
        Ok(purged)
    }

    /// Deletes the event log's rows older than its retention (at most
    /// [`TICK_LIMIT`] rows a tick) and raises `events_purged` past them.
    fn purge_events(&mut self, now: Millis) -> Result<(), StoreError> {
        let Some(retention_ms) = self.event_retention_ms else { return Ok(()) };
        let cutoff = now.saturating_sub(retention_ms);
        let mut delete = self
            .conn
            .prepare_cached(
                "DELETE FROM events WHERE first IN (SELECT first FROM events WHERE at < ?1 ORDER BY first LIMIT ?2) \
                 RETURNING first + n - 1",
            )
            .db()?;
        let last = delete
            .query_map(params![cutoff, TICK_LIMIT as i64], |r| r.get::<_, i64>(0))
            .db()?
            .try_fold(0i64, |max, last| last.map(|last| max.max(last)))
            .db()?;
        drop(delete);
        if last > 0 {
            self.conn
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES ('events_purged', ?1) \
                     ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
                )
                .db()?
                .execute(params![last])
                .db()?;
        }
        Ok(())
    }

    pub fn revoke_token(&mut self, revocation: &Revocation, now: Millis) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO revoked_tokens (jti, expires_at, revoked_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
            )
            .db()?
            .execute(params![revocation.jti, revocation.expires_at, now])
            .db()?;
        Ok(())
    }

    pub fn revoked_tokens(&self, now: Millis) -> Result<Vec<Revocation>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > ?1 ORDER BY jti")
            .db()?;
        let rows = stmt
            .query_map(params![now], |r| Ok(Revocation { jti: r.get(0)?, expires_at: r.get(1)? }))
            .db()?;
        rows.collect::<Result<Vec<_>, _>>().db()
    }
}

/// Enqueues one task as sequence number `seq` unless its idempotency key was seen.
/// The outer `Result` is the backend; the inner one this item's refusal.
#[allow(clippy::too_many_arguments)]
fn enqueue_one(
    conn: &Connection,
    rows: &mut RowWriter<'_>,
    mem: &mut Memory,
    queue: &str,
    new: NewTask,
    seq: u64,
    settings: &QueueSettings,
    now: Millis,
) -> Result<Result<Enqueued, StoreError>, StoreError> {
    // Only a keyed request needs its fingerprint (hashing the payload byte by byte).
    let print = new.idempotency_key.as_ref().map_or(0, |_| fingerprint(&new) as i64);
    if let Some(key) = &new.idempotency_key {
        let seen: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT fingerprint, task_seq FROM idempotency_keys \
                 WHERE queue = ?1 AND key = ?2 AND expires_at > ?3",
            )
            .db()?
            .query_row(params![queue, key, now], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db()?;
        if let Some((seen_print, seq)) = seen {
            let task = mem.task(conn, seq as u64)?;
            return Ok(if seen_print == print {
                Ok(Enqueued::Replayed(task))
            } else {
                Err(StoreError::KeyReused(task.id))
            });
        }
    }
    let task = Task::create(queue, new, settings, seq, now);
    if let Some(key) = &task.idempotency_key {
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency_keys (queue, key, fingerprint, task_seq, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .db()?
        .execute(params![queue, key, print, seq as i64, now.saturating_add(settings.dedup_window_ms)])
        .db()?;
    }
    mem.index.upsert_task(None, &task);
    mem.changed(&task, Change::Enqueued, None, now);
    if mem.room_for_new() {
        mem.created(task.clone());
    } else {
        mem.settle(rows, &task, Origin::New)?;
    }
    Ok(Ok(Enqueued::Created(task)))
}
