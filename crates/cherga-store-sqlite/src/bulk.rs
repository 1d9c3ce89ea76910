//! Bulk actions of the embedded store: one [`BulkStep`] as one writer job (one
//! commit), and the deletion of an empty queue.
//!
//! A queue's tasks are the sequence numbers of its range (`seqs.rs`), so a step
//! walks a stretch of at most [`BULK_SCAN`] numbers past its cursor: unfinished
//! tasks are found in the index (they may be dirty, with stale rows), finished
//! ones in their rows (a finished task is always settled). Each match is moved
//! by the core's transition and settled, or deleted, exactly as a single call
//! would, with its transition recorded for the caller and the event log.
//!
//! Rows numbered before schema version 6 (below every queue's range) are not
//! reached by bulk actions.

use super::{Engine, Origin};
use crate::rows::{Db, Reader, RowWriter};
use crate::seqs;
use cherga_core::{AckOutcome, Change, TaskId, TaskState, Transition};
use cherga_store::bulk::BULK_SCAN;
use cherga_store::{BulkAction, BulkPage, BulkStep, StoreError};
use rusqlite::params;

/// The bits of [`TaskFilter::state_mask`](cherga_store::TaskFilter::state_mask)
/// for unfinished states, which the index holds.
const UNFINISHED: u8 = (1 << 0) | (1 << 1) | (1 << 2);

impl Engine {
    /// Does one step of a bulk action (see the module's documentation).
    pub fn act_on_tasks(
        &mut self,
        step: &BulkStep,
        now: cherga_core::Millis,
    ) -> Result<BulkPage, StoreError> {
        let queue = step.queue.as_str();
        if !self.queues.contains_key(queue) {
            return Err(StoreError::NotFound);
        }
        debug_assert_eq!(TaskState::Running.code(), 2, "UNFINISHED names the first three states");
        let qid = self.mem.qid(queue);
        let (start, end) = seqs::range(qid);
        let high = self.highest.get(&qid).copied().unwrap_or(start);
        let from = step.after.map_or(start, |id| id.seq().clamp(start, end));
        let window_end = from.saturating_add(BULK_SCAN).min(high);
        let mask = step.filter.state_mask(step.action);
        let mut candidates = Vec::new();
        if mask & UNFINISHED != 0 {
            for seq in from.saturating_add(1)..=window_end {
                if let Some(state) = self.mem.index.state_of(seq)
                    && mask & (1 << state.code()) != 0
                {
                    candidates.push(seq);
                }
            }
        }
        if mask & !UNFINISHED != 0 && window_end > from {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT seq FROM tasks WHERE seq > ?1 AND seq <= ?2 AND ((1 << state) & ?3) != 0 ORDER BY seq",
                )
                .db()?;
            let finished = i64::from(mask & !UNFINISHED);
            let rows =
                stmt.query_map(params![from as i64, window_end as i64, finished], |r| r.get::<_, i64>(0));
            for seq in rows.db()? {
                candidates.push(seq.db()? as u64);
            }
            candidates.sort_unstable();
        }
        let settings = self.settings_of(queue);
        let mut reader = Reader::new(&self.conn);
        let mut rows = RowWriter::new(&self.conn);
        let mut changed = 0;
        let mut purged = false;
        let mut stopped_at = None;
        for seq in candidates {
            if changed == step.max {
                break;
            }
            stopped_at = Some(seq);
            let (mut task, origin) = match self.mem.take_seq(&mut reader, seq) {
                Ok(taken) => taken,
                Err(StoreError::NotFound) => continue,
                Err(e) => return Err(e),
            };
            if !step.filter.matches(step.action, &task) {
                self.mem.restore(task, origin);
                continue;
            }
            let was = task.state;
            let change = match step.action {
                BulkAction::Retry => task.retry(settings.max_attempts, None, now).map(|()| Change::Retried),
                BulkAction::Cancel => match task.cancel(now) {
                    Ok(AckOutcome::Applied) => Ok(Change::Cancelled),
                    Ok(AckOutcome::Replayed) => {
                        self.mem.restore(task, origin);
                        continue;
                    }
                    Err(refusal) => Err(refusal),
                },
                BulkAction::Purge => Ok(Change::Purged),
            };
            match change {
                Ok(Change::Purged) => {
                    let has_row = match origin {
                        Origin::New => false,
                        Origin::Row => true,
                        Origin::Dirty { has_row, .. } => {
                            // Its journal records are void: a replay drops it.
                            self.mem.batch.settled(seq);
                            has_row
                        }
                    };
                    if has_row {
                        self.conn
                            .prepare_cached("DELETE FROM tasks WHERE seq = ?1")
                            .db()?
                            .execute(params![seq as i64])
                            .db()?;
                    }
                    if let Some(key) = &task.idempotency_key {
                        self.conn
                            .prepare_cached(
                                "DELETE FROM idempotency_keys WHERE queue = ?1 AND key = ?2 AND task_seq = ?3",
                            )
                            .db()?
                            .execute(params![queue, key, seq as i64])
                            .db()?;
                    }
                    if was.is_finished() {
                        self.mem.index.forget_finished(queue, was, 1);
                    } else {
                        self.mem.index.forget(seq);
                    }
                    self.mem.record(Transition::purged(task.id, queue, &task.kind, was, task.attempts, now));
                    purged = true;
                }
                Ok(change) => {
                    self.mem.settle(&mut rows, &task, origin)?;
                    self.mem.index.upsert_task(Some(was), &task);
                    self.mem.changed(&task, change, Some(was), now);
                }
                Err(_) => {
                    self.mem.restore(task, origin);
                    continue;
                }
            }
            changed += 1;
        }
        drop((reader, rows));
        if purged {
            self.keep_numbers(qid)?;
        }
        let next = match stopped_at {
            // Stopped at `max` before looking at the rest of the stretch.
            Some(seq) if changed == step.max && seq < window_end => Some(seq),
            _ if window_end < high => Some(window_end),
            _ => None,
        };
        Ok(BulkPage { changed, next: next.map(|seq| TaskId::new(0, seq)) })
    }

    /// Deletes `queue` if it holds no task: its settings and idempotency keys.
    pub fn delete_queue(&mut self, queue: &str) -> Result<(), StoreError> {
        if !self.queues.contains_key(queue) {
            return Err(StoreError::NotFound);
        }
        let left: u64 = self.mem.index.counts(queue).iter().sum();
        if left > 0 {
            return Err(StoreError::NotEmpty(left));
        }
        let qid = self.mem.qid(queue);
        // A queue made again under this name (or given this number) numbers its
        // tasks past every number this one gave.
        self.keep_numbers(qid)?;
        self.conn.prepare_cached("DELETE FROM queues WHERE name = ?1").db()?.execute(params![queue]).db()?;
        self.conn
            .prepare_cached("DELETE FROM idempotency_keys WHERE queue = ?1")
            .db()?
            .execute(params![queue])
            .db()?;
        self.queues.remove(queue);
        self.mem.qids.remove(queue);
        self.mem.finished.remove(&qid);
        self.mem.effects.queues_changed.push(queue.to_owned());
        Ok(())
    }

    /// Raises queue `qid`'s counter to the highest number it gave, so that no
    /// number of a deleted row is given again after a restart.
    fn keep_numbers(&mut self, qid: i64) -> Result<(), StoreError> {
        let Some(&high) = self.highest.get(&qid) else { return Ok(()) };
        self.conn
            .prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
            )
            .db()?
            .execute(params![seqs::counter(qid), high as i64])
            .db()?;
        Ok(())
    }
}
