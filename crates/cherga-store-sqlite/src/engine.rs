//! The writer thread: owns the connection and the in-memory index, and applies
//! every operation as core transitions on rows loaded from and saved to SQLite.

use crate::rows::{self, Db, QUEUE_COLUMNS, task_columns};
use crate::sync::Syncer;
use crate::{Job, Options, Reply, schema};
use cherga_core::{
    AckOutcome, Index, LeaseToken, Millis, NewTask, QueueName, QueueSettings, QueueSettingsPatch, SeqHash,
    Task, TaskId, TaskState, fingerprint,
};
use cherga_store::{Ack, Claim, Enqueued, ListTasks, Nack, QueueInfo, Revocation, StoreError, TickReport};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc;

/// Most jobs in one transaction: bounds the latency a single commit adds.
const MAX_BATCH: usize = 2048;
/// Most timer transitions in one tick; the rest wait for the next tick.
const TICK_LIMIT: usize = 10_000;
/// Purge and key expiry run at most this often.
const PURGE_EVERY_MS: Millis = 1_000;
/// Most unfinished tasks kept in memory as last written (see [`Memory::cached`]).
const CACHE_LIMIT: usize = 65_536;

pub struct Engine {
    conn: Connection,
    mem: Memory,
    queues: HashMap<String, QueueSettings>,
    next_seq: u64,
    last_purge: Millis,
    /// Set when a job failed in the backend: the batch must roll back.
    poisoned: bool,
}

/// What the writer keeps in memory about tasks, beside their rows. Apart from
/// [`Engine`] so that a statement borrowing the connection can stay prepared
/// across a loop that updates it.
struct Memory {
    index: Index,
    /// Unfinished tasks as last written, by sequence number, so that the lease
    /// that follows an enqueue, and the ack (or nack, or extend) that follows a
    /// lease, need not read the row back. Only the writer thread writes rows; the
    /// enqueue and [`Memory::saved`] keep each entry equal to its row, and a
    /// rebuild empties the map. Bounded: a task not here is read from the table.
    cached: HashMap<u64, Task, SeqHash>,
}

impl Memory {
    /// The task with sequence number `seq`, for a transition: from memory when it
    /// is cached, else from its row. The entry is taken out; saving the task puts
    /// it back while it is unfinished. Debug builds check the entry against the row.
    fn take_seq(&mut self, reader: &mut rows::Reader<'_>, seq: u64) -> Result<Task, StoreError> {
        match self.cached.remove(&seq) {
            Some(task) => {
                #[cfg(debug_assertions)]
                assert_eq!(
                    reader.load_seq(seq).ok().as_ref(),
                    Some(&task),
                    "a cached task differs from its row"
                );
                Ok(task)
            }
            None => reader.load_seq(seq),
        }
    }

    /// [`Memory::take_seq`] by id, checking the whole id, not only its sequence.
    fn take(&mut self, conn: &Connection, id: TaskId) -> Result<Task, StoreError> {
        let task = self.take_seq(&mut rows::Reader::new(conn), id.seq())?;
        if task.id == id { Ok(task) } else { Err(StoreError::NotFound) }
    }

    /// Keeps `task`, just written as it is, in memory while it is unfinished and
    /// there is room; forgets it otherwise. Tasks waiting for a lease get half of
    /// the room, so that a backlog (or tasks scheduled far ahead) cannot crowd out
    /// the running tasks whose acks are coming.
    fn remember(&mut self, task: &Task) {
        let seq = task.id.seq();
        let room = if task.state == TaskState::Running { CACHE_LIMIT } else { CACHE_LIMIT / 2 };
        if !task.state.is_finished() && (self.cached.len() < room || self.cached.contains_key(&seq)) {
            self.cached.insert(seq, task.clone());
        } else {
            self.cached.remove(&seq);
        }
    }

    /// Tells the index and the cache that `task`, which was in state `was`, is
    /// now saved as it is.
    fn saved(&mut self, was: TaskState, task: &Task) {
        self.index.upsert_task(Some(was), task);
        self.remember(task);
    }
}

impl Engine {
    pub fn open(options: &Options) -> Result<Self, StoreError> {
        let mut conn = Connection::open(&options.path).db()?;
        schema::configure(&conn, options.durable).db()?;
        schema::migrate(&mut conn).map_err(|e| StoreError::Unavailable(e.into()))?;
        let mut engine = Engine {
            conn,
            mem: Memory {
                index: Index::new(),
                // Allocated once: only the control bytes are touched until used.
                cached: HashMap::with_capacity_and_hasher(CACHE_LIMIT, SeqHash),
            },
            queues: HashMap::new(),
            next_seq: 1,
            last_purge: 0,
            poisoned: false,
        };
        engine.rebuild()?;
        Ok(engine)
    }

    /// Loads queue settings and rebuilds the index from the rows on disk.
    fn rebuild(&mut self) -> Result<(), StoreError> {
        let mut index = Index::new();
        let mut queues = HashMap::new();
        {
            let mut stmt = self.conn.prepare(&format!("SELECT {QUEUE_COLUMNS} FROM queues")).db()?;
            let rows = stmt.query_map([], rows::queue_from_row).db()?;
            for row in rows {
                let (name, settings) = row.db()?;
                index.configure_queue(&name, settings.concurrency, settings.paused);
                queues.insert(name, settings);
            }
        }
        let mut max_seq: i64 = self
            .conn
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'tasks'", [], |r| r.get(0))
            .optional()
            .db()?
            .unwrap_or(0);
        // Room for every unfinished task at once: growing the map step by step
        // was a sixth of a rebuild of 10 M tasks. Both counts read only an index.
        let count = |sql: &str| self.conn.query_row(sql, [], |r| r.get::<_, i64>(0)).db();
        let all = count("SELECT count(*) FROM tasks")?;
        let finished = count("SELECT count(*) FROM tasks WHERE finished_at IS NOT NULL")?;
        index.reserve(usize::try_from(all - finished).unwrap_or(0));
        {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, queue, priority, run_at, grp, state, lease_expires_at FROM tasks")
                .db()?;
            let mut rows = stmt.query([]).db()?;
            // Finished tasks are only counted, per queue and state.
            let mut finished: HashMap<String, [u64; 6]> = HashMap::new();
            // Rows come in enqueue order, mostly runs of one queue: look its name up
            // once per run, not once per row.
            let mut queue: Option<std::sync::Arc<str>> = None;
            let mut loader = index.loader();
            while let Some(row) = rows.next().db()? {
                let seq: i64 = row.get(0).db()?;
                max_seq = max_seq.max(seq);
                let name = row.get_ref(1).db()?.as_str().map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let code: u8 = row.get(5).db()?;
                let state = TaskState::from_code(code)
                    .ok_or_else(|| StoreError::Corrupt(format!("task {seq} has unknown state {code}")))?;
                if state.is_finished() {
                    match finished.get_mut(name) {
                        Some(counts) => counts[usize::from(code)] += 1,
                        None => finished.entry(name.to_owned()).or_default()[usize::from(code)] += 1,
                    }
                    continue;
                }
                let queue = match &queue {
                    Some(q) if &**q == name => q.clone(),
                    _ => queue.insert(loader.queue_name(name)).clone(),
                };
                let group: Option<String> = row.get(4).db()?;
                loader.add(
                    seq as u64,
                    cherga_core::TaskSlot {
                        queue,
                        priority: row.get(2).db()?,
                        run_at: row.get(3).db()?,
                        group: group.map(|g| std::sync::Arc::from(g.as_str())),
                        state,
                        lease_expires_at: row.get(6).db()?,
                    },
                );
            }
            loader.finish();
            for (queue, counts) in finished {
                for state in TaskState::ALL.into_iter().filter(|s| s.is_finished()) {
                    index.add_finished(&queue, state, counts[usize::from(state.code())]);
                }
            }
        }
        self.mem.index = index;
        self.mem.cached.clear();
        self.queues = queues;
        self.next_seq = max_seq as u64 + 1;
        Ok(())
    }

    /// Runs a statement without parameters, prepared once.
    fn statement(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// The writer loop: batch, commit, hand the answers to the syncer, which sends
    /// them once the WAL holding the commit is on disk. The writer goes on with the
    /// next batch while the syncer waits for the disk.
    pub fn run(mut self, jobs: mpsc::Receiver<Job>, syncer: Syncer) {
        while let Ok(first) = jobs.recv() {
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let replies: Vec<Reply>;
            let outcome = match self.statement("BEGIN IMMEDIATE") {
                Ok(()) => {
                    replies = batch.into_iter().map(|job| job(Some(&mut self))).collect();
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
                Ok(()) => syncer.after_sync(replies),
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
        // Every answer is sent before the connection closes.
        syncer.finish();
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "checkpoint at close failed; the WAL will be replayed at next open");
        }
    }

    /// The settings of `queue`, creating the queue with defaults on first use.
    fn ensure_queue(&mut self, queue: &str, now: Millis) -> Result<QueueSettings, StoreError> {
        if let Some(s) = self.queues.get(queue) {
            return Ok(s.clone());
        }
        let settings = QueueSettings::defaults();
        rows::save_queue(&self.conn, queue, &settings, now)?;
        self.mem.index.configure_queue(queue, settings.concurrency, settings.paused);
        self.queues.insert(queue.to_owned(), settings.clone());
        Ok(settings)
    }

    pub fn load(&self, id: TaskId) -> Result<Task, StoreError> {
        rows::load_task(&self.conn, id)
    }

    /// Saves a task changed from state `was` and tells the index.
    fn save(&mut self, was: TaskState, task: &Task) -> Result<(), StoreError> {
        rows::SaveTask::prepare(&self.conn)?.run(task)?;
        self.mem.saved(was, task);
        Ok(())
    }

    pub fn enqueue(
        &mut self,
        queue: &QueueName,
        tasks: Vec<NewTask>,
        now: Millis,
    ) -> Result<Vec<Result<Enqueued, StoreError>>, StoreError> {
        let settings = self.ensure_queue(queue.as_str(), now)?;
        let mut insert = rows::InsertTask::prepare(&self.conn)?;
        let mut out = Vec::with_capacity(tasks.len());
        for new in tasks {
            let seq = self.next_seq;
            let one = enqueue_one(
                &self.conn,
                &mut insert,
                &mut self.mem,
                queue.as_str(),
                new,
                seq,
                &settings,
                now,
            )?;
            if matches!(one, Ok(Enqueued::Created(_))) {
                self.next_seq += 1;
            }
            out.push(one);
        }
        Ok(out)
    }

    pub fn claim(&mut self, claim: Claim, now: Millis) -> Result<Vec<Task>, StoreError> {
        let settings = self.ensure_queue(claim.queue.as_str(), now)?;
        let lease_ms = claim.lease_ms.unwrap_or(settings.lease_ms);
        let mut leased = Vec::new();
        // Picking again after each lease would be needed only if a lease could make
        // another task eligible; it cannot, so one pick serves the whole claim.
        let mut reader = rows::Reader::new(&self.conn);
        let mut save = rows::SaveLease::prepare(&self.conn)?;
        for seq in self.mem.index.pick(claim.queue.as_str(), claim.max) {
            let mut task = self.mem.take_seq(&mut reader, seq)?;
            #[cfg(debug_assertions)]
            let before = task.clone();
            if task.lease(fastrand::u64(..), lease_ms, claim.worker.clone(), now).is_err() {
                // The index and the rows disagree: trust the rows.
                tracing::error!(task = %task.id, state = %task.state, "index offered a task that is not ready");
                let slot_state = self.mem.index.state_of(seq);
                self.mem.index.upsert_task(slot_state, &task);
                continue;
            }
            #[cfg(debug_assertions)]
            changed_only(&before, &task, "save_lease", |t, after| {
                t.attempts = after.attempts;
                t.state = after.state;
                t.lease.clone_from(&after.lease);
                t.updated_at = after.updated_at;
            });
            save.run(&task)?;
            self.mem.saved(TaskState::Ready, &task);
            leased.push(task);
        }
        Ok(leased)
    }

    pub fn complete(
        &mut self,
        acks: Vec<Ack>,
        now: Millis,
    ) -> Result<Vec<Result<Task, StoreError>>, StoreError> {
        let mut save = rows::SaveAck::prepare(&self.conn)?;
        let mut out = Vec::with_capacity(acks.len());
        for ack in acks {
            let mut task = match self.mem.take(&self.conn, ack.task_id) {
                Ok(task) => task,
                Err(StoreError::NotFound) => {
                    out.push(Err(StoreError::NotFound));
                    continue;
                }
                Err(e) => return Err(e),
            };
            #[cfg(debug_assertions)]
            let before = task.clone();
            match task.ack(&LeaseToken::from_string(ack.token), ack.result, now) {
                Ok(AckOutcome::Applied) => {
                    #[cfg(debug_assertions)]
                    changed_only(&before, &task, "save_ack", |t, after| {
                        t.state = after.state;
                        t.result.clone_from(&after.result);
                        t.finished_at = after.finished_at;
                        t.updated_at = after.updated_at;
                    });
                    save.run(&task)?;
                    self.mem.saved(TaskState::Running, &task);
                    out.push(Ok(task));
                }
                Ok(AckOutcome::Replayed) => out.push(Ok(task)),
                Err(refusal) => out.push(Err(refusal.into())),
            }
        }
        Ok(out)
    }

    fn settings_of(&self, queue: &str) -> QueueSettings {
        self.queues.get(queue).cloned().unwrap_or_else(QueueSettings::defaults)
    }

    pub fn fail(&mut self, nack: Nack, now: Millis) -> Result<Task, StoreError> {
        let mut task = self.mem.take(&self.conn, nack.task_id)?;
        let settings = self.settings_of(&task.queue);
        let token = LeaseToken::from_string(nack.token);
        let outcome =
            task.nack(&token, nack.error, nack.retry_in_ms, nack.dead, &settings, fastrand::f64(), now)?;
        if outcome == AckOutcome::Applied {
            self.save(TaskState::Running, &task)?;
        }
        Ok(task)
    }

    pub fn extend_lease(
        &mut self,
        id: TaskId,
        token: &str,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Task, StoreError> {
        let mut task = self.mem.take(&self.conn, id)?;
        task.extend(&LeaseToken::from_string(token.to_owned()), lease_ms, now)?;
        self.save(TaskState::Running, &task)?;
        Ok(task)
    }

    pub fn cancel(&mut self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        let mut task = self.mem.take(&self.conn, id)?;
        let was = task.state;
        if task.cancel(now)? == AckOutcome::Applied {
            self.save(was, &task)?;
        }
        Ok(task)
    }

    pub fn retry_dead(&mut self, id: TaskId, now: Millis) -> Result<Task, StoreError> {
        let mut task = self.load(id)?;
        let extra = self.settings_of(&task.queue).max_attempts;
        task.retry(extra, now)?;
        self.save(TaskState::Dead, &task)?;
        Ok(task)
    }

    pub fn list_tasks(&self, list: &ListTasks) -> Result<Vec<Task>, StoreError> {
        if !self.queues.contains_key(list.queue.as_str()) {
            return Err(StoreError::NotFound);
        }
        let after = list.after.map_or(0, |id| id.seq() as i64);
        let limit = list.limit as i64;
        let mut out = Vec::new();
        let mut push_rows = |stmt: &mut rusqlite::CachedStatement<'_>, params: &[&dyn rusqlite::ToSql]| {
            let mut rows = stmt.query(params).db()?;
            while let Some(row) = rows.next().db()? {
                out.push(rows::task_from_row(row).db()??);
            }
            Ok::<(), StoreError>(())
        };
        match list.state {
            Some(state) => {
                const SQL: &str = concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE queue = ?1 AND seq > ?2 AND state = ?3 ORDER BY seq LIMIT ?4"
                );
                let mut stmt = self.conn.prepare_cached(SQL).db()?;
                push_rows(&mut stmt, &[&list.queue.as_str(), &after, &state.code(), &limit])?;
            }
            None => {
                const SQL: &str = concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE queue = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
                );
                let mut stmt = self.conn.prepare_cached(SQL).db()?;
                push_rows(&mut stmt, &[&list.queue.as_str(), &after, &limit])?;
            }
        }
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
        rows::save_queue(&self.conn, queue.as_str(), &settings, now)?;
        self.mem.index.configure_queue(queue.as_str(), settings.concurrency, settings.paused);
        self.queues.insert(queue.as_str().to_owned(), settings);
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
        let mut woken = BTreeSet::new();
        for seq in self.mem.index.due(now, TICK_LIMIT) {
            let mut task = self.mem.take_seq(&mut rows::Reader::new(&self.conn), seq)?;
            if task.promote(now) {
                report.promoted += 1;
                woken.insert(task.queue.clone());
                self.save(TaskState::Scheduled, &task)?;
            }
        }
        for seq in self.mem.index.expired(now, TICK_LIMIT) {
            let mut task = self.mem.take_seq(&mut rows::Reader::new(&self.conn), seq)?;
            let settings = self.settings_of(&task.queue);
            if task.expire(&settings, fastrand::f64(), now) {
                report.expired += 1;
                woken.insert(task.queue.clone());
                self.save(TaskState::Running, &task)?;
            }
        }
        if now - self.last_purge >= PURGE_EVERY_MS {
            self.last_purge = now;
            report.purged = self.purge(now)?;
        }
        report.woken_queues = woken.into_iter().collect();
        report.next_timer = self.mem.index.next_timer();
        Ok(report)
    }

    /// Deletes finished tasks past their queue's retention, unless an idempotency
    /// key still inside its window points at them; then forgets expired keys.
    fn purge(&mut self, now: Millis) -> Result<usize, StoreError> {
        let mut purged = 0;
        let queues: Vec<(String, Millis)> =
            self.queues.iter().map(|(name, s)| (name.clone(), s.retention_ms)).collect();
        for (queue, retention_ms) in queues {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "DELETE FROM tasks WHERE seq IN ( \
                       SELECT seq FROM tasks WHERE queue = ?1 AND finished_at IS NOT NULL AND finished_at <= ?2 \
                       AND (idem_key IS NULL OR NOT EXISTS ( \
                         SELECT 1 FROM idempotency_keys k \
                         WHERE k.queue = tasks.queue AND k.key = tasks.idem_key \
                         AND k.task_seq = tasks.seq AND k.expires_at > ?3)) \
                       LIMIT ?4) \
                     RETURNING state",
                )
                .db()?;
            let states = stmt
                .query_map(params![queue, now.saturating_sub(retention_ms), now, TICK_LIMIT as i64], |r| {
                    r.get::<_, u8>(0)
                })
                .db()?
                .collect::<Result<Vec<u8>, _>>()
                .db()?;
            for code in states {
                if let Some(state) = TaskState::from_code(code) {
                    self.mem.index.forget_finished(&queue, state, 1);
                }
                purged += 1;
            }
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
        Ok(purged)
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

/// Checks that a transition from `before` to `after` changed only the fields
/// `copy` copies: those the narrow statement `statement` writes.
#[cfg(debug_assertions)]
fn changed_only(before: &Task, after: &Task, statement: &str, copy: impl Fn(&mut Task, &Task)) {
    let mut expected = before.clone();
    copy(&mut expected, after);
    assert_eq!(&expected, after, "the transition changed a field {statement} does not write");
}

/// Enqueues one task as sequence number `seq` unless its idempotency key was seen.
/// The outer `Result` is the backend; the inner one this item's refusal.
#[allow(clippy::too_many_arguments)]
fn enqueue_one(
    conn: &Connection,
    insert: &mut rows::InsertTask<'_>,
    mem: &mut Memory,
    queue: &str,
    new: NewTask,
    seq: u64,
    settings: &QueueSettings,
    now: Millis,
) -> Result<Result<Enqueued, StoreError>, StoreError> {
    let print = fingerprint(&new) as i64;
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
            let task = rows::load_seq(conn, seq as u64)?;
            return Ok(if seen_print == print {
                Ok(Enqueued::Replayed(task))
            } else {
                Err(StoreError::KeyReused(task.id))
            });
        }
    }
    let task = Task::create(queue, new, settings, seq, now);
    insert.run(&task)?;
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
    mem.remember(&task);
    Ok(Ok(Enqueued::Created(task)))
}
