//! The engine: owns the connection and the in-memory state, and applies every
//! operation as core transitions on tasks held in memory or loaded from their
//! rows. It runs on whichever thread holds the writer lock: the writer thread
//! (`run_writer`), or a caller that found the writer idle ([`Writer`]).
//!
//! This module holds the operations (enqueue, claim, ack, nack, timers, queues);
//! the rest is split by concern:
//! - `writer`: the writer lock, batches, their transaction and commit;
//! - `memory`: the dirty tasks and the journal that keeps them durable, the
//!   index, and what a job changed (effects, events);
//! - `recovery`: opening the store, replaying the journal, rebuilding memory;
//! - `retention`: purging finished tasks, expired keys, tokens and events.

mod memory;
mod recovery;
mod retention;
mod writer;
// Bulk actions (`bulk.rs`) reach into the writer's memory, so they are a child module.
#[path = "bulk.rs"]
mod bulk;

use crate::rows::{self, Db, RowWriter, task_columns};
use crate::seqs;
use cherga_core::{
    AckOutcome, Change, LeaseToken, Millis, NewPayload, NewTask, QueueName, QueueSettings,
    QueueSettingsPatch, Refusal, Task, TaskId, TaskState, Transition, fingerprint,
};
use cherga_store::limits::TICK_LIMIT;
use cherga_store::{
    Ack, Claim, Enqueued, ListTasks, Nack, QueueInfo, QueueStats, Revocation, SchemaChange, SchemaVersion,
    StoreError, TickReport,
};
use memory::{Memory, Origin};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
pub use writer::{Writer, run_writer};

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
    /// Set with `poisoned` when the failure was a full disk.
    out_of_space: bool,
    /// How long the event log keeps events (`None`: there is no log).
    event_retention_ms: Option<Millis>,
    /// The number of the last event whose batch is durable: readers of the log
    /// read no further. Raised when the batch's answers go out, after its sync.
    events_durable: Arc<AtomicU64>,
}

impl Engine {
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

    pub fn retry_dead(
        &mut self,
        id: TaskId,
        new_payload: Option<NewPayload>,
        now: Millis,
    ) -> Result<Task, StoreError> {
        let (mut task, origin) = self.mem.take(&self.conn, id)?;
        let settings = self.settings_of(&task.queue);
        let payload_edited = new_payload.is_some();
        if let Err(refusal) = task.retry(settings.max_attempts, new_payload, now) {
            self.mem.restore(task, origin);
            return Err(refusal.into());
        }
        self.mem.settle(&mut RowWriter::new(&self.conn), &task, origin)?;
        self.mem.index.upsert_task(Some(TaskState::Dead), &task);
        let transition = Transition::of(&task, Change::Retried, Some(TaskState::Dead), now);
        self.mem.record(Transition { payload_edited, ..transition });
        Ok(task)
    }

    /// Lists the queue's tasks in enqueue order: its dirty tasks (in memory; their
    /// rows, if any, are stale and skipped) merged with its rows. Only the first
    /// `limit` dirty tasks that match are cloned, and rows are read in order only
    /// until `limit` match, so a page costs one pass over the dirty tasks'
    /// entries plus the rows it returns (and the stale or unmatched ones between).
    pub fn list_tasks(&self, list: &ListTasks) -> Result<Vec<Task>, StoreError> {
        let queue = list.queue.as_str();
        if !self.queues.contains_key(queue) {
            return Err(StoreError::NotFound);
        }
        let after = list.after.map_or(0, |id| id.seq());
        let mask = list.filter.list_mask();
        let wanted = |task: &Task| mask & (1 << task.state.code()) != 0 && list.filter.matches_fields(task);
        if let Some(key) = &list.key {
            let seq: Option<i64> = self
                .conn
                .prepare_cached("SELECT task_seq FROM idempotency_keys WHERE queue = ?1 AND key = ?2")
                .db()?
                .query_row(params![queue, key], |row| row.get(0))
                .optional()
                .db()?;
            let Some(seq) = seq.map(|seq| seq as u64).filter(|&seq| seq > after) else {
                return Ok(Vec::new());
            };
            let task = match self.mem.dirty.get(&seq) {
                Some(dirty) => dirty.task.clone(),
                None => match rows::Reader::new(&self.conn).load_seq(seq) {
                    Ok(task) => task,
                    Err(StoreError::NotFound) => return Ok(Vec::new()),
                    Err(e) => return Err(e),
                },
            };
            return Ok(if task.queue == queue && wanted(&task) { vec![task] } else { Vec::new() });
        }
        let mut dirty: Vec<(u64, &Task)> = self
            .mem
            .dirty
            .iter()
            .filter(|&(&seq, d)| seq > after && d.task.queue == queue && wanted(&d.task))
            .map(|(&seq, d)| (seq, &d.task))
            .collect();
        if dirty.len() > list.limit {
            dirty.select_nth_unstable_by_key(list.limit, |&(seq, _)| seq);
            dirty.truncate(list.limit);
        }
        dirty.sort_unstable_by_key(|&(seq, _)| seq);
        // Past this sequence number no row can make the page: `limit` dirty
        // tasks come before it.
        let stop_after =
            if dirty.len() == list.limit { dirty.last().map_or(u64::MAX, |d| d.0) } else { u64::MAX };
        let mut found: Vec<Task> = Vec::new();
        let qid = self.mem.qid(queue);
        let (start, end) = seqs::range(qid);
        // The queue's rows are the rowid range `start..end`; rows numbered before
        // schema version 6 are below every range and come first.
        let legacy = self.legacy_rows && after < seqs::FIRST;
        let (from, end) = (after.max(start) as i64, end as i64);
        let state_mask = i64::from(mask);
        let group = list.filter.group.as_deref();
        let mut read_rows = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
            let mut stmt = self.conn.prepare_cached(sql).db()?;
            let mut rows = stmt.query(params).db()?;
            while found.len() < list.limit
                && let Some(row) = rows.next().db()?
            {
                let seq = row.get::<_, i64>(1).db()? as u64;
                if seq > stop_after {
                    break;
                }
                if self.mem.dirty.contains_key(&seq) {
                    continue;
                }
                let task = rows::task_from_row(row).db()??;
                if list.filter.matches_fields(&task) {
                    found.push(task);
                }
            }
            Ok::<(), StoreError>(())
        };
        // `?3` is the bit set of the states asked for, `?4` the group or NULL.
        if legacy {
            const SQL: &str = concat!(
                "SELECT ",
                task_columns!(),
                ", seq FROM tasks WHERE qid = ?1 AND seq > ?2 AND seq < ",
                seqs::first_sql!(),
                " AND (?3 >> state) & 1 AND (?4 IS NULL OR grp = ?4) ORDER BY seq"
            );
            read_rows(SQL, &[&qid, &(after as i64), &state_mask, &group])?;
        }
        const SQL: &str = concat!(
            "SELECT ",
            task_columns!(),
            ", seq FROM tasks WHERE seq > ?1 AND seq < ?2 AND (?3 >> state) & 1 \
             AND (?4 IS NULL OR grp = ?4) ORDER BY seq"
        );
        read_rows(SQL, &[&from, &end, &state_mask, &group])?;
        found.extend(dirty.into_iter().map(|(_, task)| task.clone()));
        found.sort_unstable_by_key(|task| task.id.seq());
        found.truncate(list.limit);
        Ok(found)
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

    /// Every queue's counts and oldest ready task, from the index alone.
    pub fn queue_stats(&self) -> Vec<QueueStats> {
        let names: BTreeSet<&String> = self.queues.keys().collect();
        names
            .into_iter()
            .map(|name| QueueStats {
                name: name.clone(),
                counts: self.mem.index.counts(name),
                oldest_ready_at: self.mem.index.oldest_ready(name),
            })
            .collect()
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
        report.purged = self.purge_if_due(now)?;
        report.next_timer = self.mem.index.next_timer();
        Ok(report)
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

impl Engine {
    /// Records `change` as the queue's next schema version.
    pub fn put_payload_schema(
        &mut self,
        queue: &str,
        change: SchemaChange,
        now: Millis,
    ) -> Result<SchemaVersion, StoreError> {
        let version: i64 = self
            .conn
            .prepare_cached("SELECT coalesce(max(version), 0) + 1 FROM payload_schemas WHERE queue = ?1")
            .db()?
            .query_row(params![queue], |r| r.get(0))
            .db()?;
        self.conn
            .prepare_cached(
                "INSERT INTO payload_schemas (queue, version, kind, schema, subject, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .db()?
            .execute(params![queue, version, change.kind, change.schema, change.subject, now])
            .db()?;
        Ok(SchemaVersion {
            queue: queue.to_owned(),
            version: version as u64,
            kind: change.kind,
            schema: change.schema,
            subject: change.subject,
            created_at: now,
        })
    }

    /// Every version of the queue's schemas, oldest first.
    pub fn payload_schemas(&self, queue: &str) -> Result<Vec<SchemaVersion>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT version, kind, schema, subject, created_at FROM payload_schemas \
                 WHERE queue = ?1 ORDER BY version",
            )
            .db()?;
        let rows = stmt
            .query_map(params![queue], |r| {
                Ok(SchemaVersion {
                    queue: queue.to_owned(),
                    version: r.get::<_, i64>(0)? as u64,
                    kind: r.get(1)?,
                    schema: r.get(2)?,
                    subject: r.get(3)?,
                    created_at: r.get(4)?,
                })
            })
            .db()?;
        rows.collect::<Result<Vec<_>, _>>().db()
    }

    /// The latest schema version of every queue that has one.
    pub fn payload_schema_versions(&self) -> Result<HashMap<String, u64>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT queue, max(version) FROM payload_schemas GROUP BY queue").db()?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).db()?;
        rows.collect::<Result<HashMap<_, _>, _>>().db()
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
        if let Some((held_print, seq)) = seen {
            let holder = mem.task(conn, seq as u64)?;
            return Ok(Enqueued::under_held_key(held_print as u64, holder, &new));
        }
    }
    // Only a keyed request needs its fingerprint (hashing the payload byte by byte).
    let print = new.idempotency_key.as_ref().map_or(0, |_| fingerprint(&new) as i64);
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
