//! Retention: deleting finished tasks past their queue's retention, expired
//! idempotency keys and revoked tokens, and event-log rows past the log's
//! retention. Runs from the tick, at most every [`PURGE_EVERY_MS`].

use super::Engine;
use crate::journal;
use crate::rows::Db;
use crate::seqs;
use cherga_core::{Millis, Transition};
use cherga_store::StoreError;
use cherga_store::limits::{PURGE_EVERY_MS, TICK_LIMIT};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeSet;

impl Engine {
    /// Purges (see [`Engine::purge`]) if the last purge was at least
    /// [`PURGE_EVERY_MS`] ago; returns the number of tasks purged.
    pub(super) fn purge_if_due(&mut self, now: Millis) -> Result<usize, StoreError> {
        if now - self.last_purge < PURGE_EVERY_MS {
            return Ok(0);
        }
        self.last_purge = now;
        self.purge(now)
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
            raise_counter(&self.conn, &seqs::counter(qid), high as i64)?;
        }
        for sql in [
            "DELETE FROM idempotency_keys WHERE expires_at <= ?1",
            "DELETE FROM revoked_tokens WHERE expires_at <= ?1",
        ] {
            self.conn.prepare_cached(sql).db()?.execute(params![now]).db()?;
        }
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
            raise_counter(&self.conn, "events_purged", last)?;
        }
        Ok(())
    }
}

/// Raises the counter `name` to `value`, unless it is higher already.
fn raise_counter(conn: &Connection, name: &str, value: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = max(value, excluded.value)",
    )
    .db()?
    .execute(params![name, value])
    .db()?;
    Ok(())
}
