//! Opening the store and rebuilding memory from disk: queue settings, the
//! journal replayed over the rows it names (the dirty tasks), the index from
//! every unfinished row, and the numbering of tasks and events. A batch that
//! rolled back is forgotten the same way.

use super::Engine;
use super::memory::{Dirty, Memory, task_bytes};
use crate::checkpoint;
use crate::index::TaskSlot;
use crate::journal::{self, Record};
use crate::rows::{self, Db, QUEUE_COLUMNS};
use crate::{Options, schema, seqs};
use cherga_core::{Millis, TaskState};
use cherga_store::{EventId, StoreError};
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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
            out_of_space: false,
            event_retention_ms: options.event_retention_ms,
            events_durable: Arc::new(AtomicU64::new(0)),
        };
        engine.rebuild()?;
        Ok(engine)
    }

    /// Loads queue settings, replays the journal, and rebuilds the index from the
    /// rows on disk and the dirty tasks. Whatever was in memory is dropped: this
    /// is also how a rolled-back batch is forgotten.
    pub(super) fn rebuild(&mut self) -> Result<(), StoreError> {
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
        // size (see `index.rs`), so the scan needs no room reserved;
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
}
