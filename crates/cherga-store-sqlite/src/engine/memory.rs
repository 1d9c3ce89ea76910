//! What the engine keeps in memory about tasks, beside their rows.
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

use crate::Limits;
use crate::index::{Index, SeqHash};
use crate::journal;
use crate::rows::{self, Db, RowWriter};
use cherga_core::{Change, Millis, Task, TaskId, TaskState, Transition};
use cherga_store::events::EventBatch;
use cherga_store::{Effects, EventId, StoreError};
use rusqlite::{Connection, params};
use std::collections::{HashMap, VecDeque};

/// Most dirty tasks settled in one batch because a limit was passed: the work is
/// spread over batches so that no single commit takes long.
const SETTLE_PER_BATCH: usize = 2_048;

/// A task whose state is ahead of its row (see the module's documentation).
pub(super) struct Dirty {
    pub(super) task: Task,
    /// The batch (journal `txn`) of the task's first record since its row was
    /// last written: the journal from here on is needed to replay it.
    pub(super) since: u64,
    /// Whether the task has a row at all (else settling it inserts one).
    pub(super) has_row: bool,
    /// What [`task_bytes`] counted for it when it was put here.
    pub(super) bytes: usize,
}

/// Where a task taken out for a transition came from; what settling or keeping it
/// must do.
#[derive(Clone, Copy, Debug)]
pub(super) enum Origin {
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
pub(super) struct Memory {
    pub(super) index: Index,
    /// Dirty tasks by sequence number. Only the holder of the writer lock (the
    /// writer thread, or a caller running its job as a batch of one) changes
    /// tasks, and every change to one of these is also a record in
    /// [`Memory::batch`].
    /// Boxed, so that the table holds 16 bytes per task: when it grows, every
    /// entry is copied into new memory that the kernel zeroes first, and with
    /// whole tasks in it that stalled the writer for up to 60 ms at about
    /// 100,000 dirty tasks (`docs/storage.md`).
    pub(super) dirty: HashMap<u64, Box<Dirty>, SeqHash>,
    /// `(since, seq)` in the order tasks became dirty, so the front gives the
    /// oldest journal row still needed. An entry is stale once its task was
    /// settled (or settled and made dirty again, with a later `since`); stale
    /// entries are dropped at the front and, when they pile up, everywhere.
    pub(super) order: VecDeque<(u64, u64)>,
    /// The sum of [`Dirty::bytes`].
    pub(super) dirty_bytes: usize,
    /// The journal rows on disk, oldest first, with their sizes.
    pub(super) retained: VecDeque<(u64, usize)>,
    /// The sum of the sizes in [`Memory::retained`].
    pub(super) journal_bytes: usize,
    /// The records of the batch being run, written at its end.
    pub(super) batch: journal::Batch,
    /// The journal `txn` of the batch being run.
    pub(super) txn: u64,
    pub(super) limits: Limits,
    /// Each queue's number (`queues.id`, the tasks' `qid`).
    pub(super) qids: HashMap<String, i64>,
    /// What the job being run changed, handed to its caller when it ends
    /// ([`Engine::take_effects`]).
    pub(super) effects: Effects,
    /// The events of the batch being run, written with it as one row of the
    /// event log; `None` when no log is kept.
    events: Option<EventBatch>,
    /// The number the batch's first event gets: one past every event on disk.
    pub(super) next_event: EventId,
    /// The finished tasks with rows, by queue number: `(finished_at, seq)` in the
    /// order they finished, which is the order retention purges them in. This
    /// replaces an index of finished rows, which was an eighth of the writer's
    /// work per task (`docs/storage.md`), for 16 bytes of memory per finished
    /// task kept. An entry may be stale (the task was retried since, or purged):
    /// a purge deletes a row only if its `finished_at` is still the entry's.
    pub(super) finished: HashMap<i64, VecDeque<(Millis, u64)>>,
}

/// About how much memory a dirty task holds: the entry and the strings it owns.
pub(super) fn task_bytes(task: &Task) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let lease = task.lease.as_ref().map_or(0, |l| l.token.as_str().len() + opt(&l.worker));
    let history = match task.history.entries() {
        [] => 0,
        entries => {
            std::mem::size_of_val(entries)
                + entries
                    .iter()
                    .map(|e| {
                        let edit = e.payload_edit.as_ref().map_or(0, |edit| {
                            std::mem::size_of::<cherga_core::PayloadEdit>() + opt(&edit.by)
                        });
                        opt(&e.worker) + opt(&e.error) + edit
                    })
                    .sum::<usize>()
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
    pub(super) fn new(limits: Limits, log_events: bool) -> Self {
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
    pub(super) fn qid(&self, queue: &str) -> i64 {
        self.qids.get(queue).copied().unwrap_or(0)
    }

    /// Whether a new task may be kept dirty. New tasks get half of the room, so
    /// that a backlog cannot crowd out the running tasks whose acks are coming.
    pub(super) fn room_for_new(&self) -> bool {
        self.dirty_bytes < self.limits.dirty_bytes / 2
    }

    fn room_for_running(&self) -> bool {
        self.dirty_bytes < self.limits.dirty_bytes
    }

    /// A copy of task `seq` as it is now, from memory or from its row.
    pub(super) fn task(&self, conn: &Connection, seq: u64) -> Result<Task, StoreError> {
        match self.dirty.get(&seq) {
            Some(dirty) => Ok(dirty.task.clone()),
            None => rows::load_seq(conn, seq),
        }
    }

    /// Takes task `seq` out for a transition. The caller must hand it back with
    /// [`Memory::restore`] (unchanged), [`Memory::created`] or [`Memory::leased`]
    /// (kept dirty, or its row written) or [`Memory::settle`] (row written); a task dropped instead
    /// would be lost from memory though not from disk.
    pub(super) fn take_seq(
        &mut self,
        reader: &mut rows::Reader<'_>,
        seq: u64,
    ) -> Result<(Task, Origin), StoreError> {
        match self.dirty.remove(&seq) {
            Some(dirty) => {
                self.dirty_bytes -= dirty.bytes;
                Ok((dirty.task, Origin::Dirty { since: dirty.since, has_row: dirty.has_row }))
            }
            None => Ok((reader.load_seq(seq)?, Origin::Row)),
        }
    }

    /// [`Memory::take_seq`] by id, checking the whole id, not only its sequence.
    pub(super) fn take(&mut self, conn: &Connection, id: TaskId) -> Result<(Task, Origin), StoreError> {
        let (task, origin) = self.take_seq(&mut rows::Reader::new(conn), id.seq())?;
        if task.id == id {
            Ok((task, origin))
        } else {
            self.restore(task, origin);
            Err(StoreError::NotFound)
        }
    }

    /// Puts back a task taken out and not changed.
    pub(super) fn restore(&mut self, task: Task, origin: Origin) {
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
    pub(super) fn changed(&mut self, task: &Task, change: Change, from: Option<TaskState>, now: Millis) {
        self.record(Transition::of(task, change, from, now));
    }

    /// Notes a transition: for the job's caller, and in the batch's events.
    pub(super) fn record(&mut self, transition: Transition) {
        if let Some(events) = &mut self.events {
            events.push(&transition);
        }
        self.effects.transitions.push(transition);
    }

    /// Records the new task `task` in the journal and keeps it dirty.
    pub(super) fn created(&mut self, task: Task) {
        self.batch.created(&task);
        self.keep(task, Origin::New);
    }

    /// Records the lease (or extension) of `task` in the journal and keeps it
    /// dirty; a task that was settled is written to its row instead when memory
    /// is full.
    pub(super) fn leased(
        &mut self,
        rows: &mut RowWriter<'_>,
        task: &Task,
        origin: Origin,
    ) -> Result<(), StoreError> {
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
    pub(super) fn settle(
        &mut self,
        rows: &mut RowWriter<'_>,
        task: &Task,
        origin: Origin,
    ) -> Result<(), StoreError> {
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

    /// Writes every dirty task to its row and empties the journal, in one
    /// transaction, so that the next open has nothing to replay. Nothing waits
    /// for it: the same state is durable in the journal already.
    pub(super) fn settle_all(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.dirty.is_empty() && self.retained.is_empty() {
            return Ok(());
        }
        let tx = conn.unchecked_transaction().db()?;
        {
            let mut rows = RowWriter::new(&tx);
            for dirty in self.dirty.values() {
                rows.write(&dirty.task, self.qid(&dirty.task.queue), dirty.has_row)?;
            }
        }
        tx.execute("DELETE FROM journal", []).db()?;
        tx.commit().db()?;
        self.dirty.clear();
        self.order.clear();
        self.retained.clear();
        self.dirty_bytes = 0;
        self.journal_bytes = 0;
        Ok(())
    }

    /// Ends the batch being run, inside its transaction: settles the oldest dirty
    /// tasks while a limit is passed, writes the batch's records as one journal
    /// row, deletes the journal rows no dirty task needs any more, and writes
    /// the batch's events as one row of the event log. Returns the number of the
    /// last event written, if any.
    pub(super) fn finish_batch(&mut self, conn: &Connection) -> Result<Option<EventId>, StoreError> {
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
