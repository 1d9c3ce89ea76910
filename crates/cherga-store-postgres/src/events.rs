//! The event log on PostgreSQL: one row per transaction that changed tasks,
//! written by that transaction just before its `COMMIT`, holding its events as
//! one record (`cherga_store::events`).
//!
//! **Ordering without gaps.** Transactions take their ids (xids) when they
//! begin to write but commit in another order, so a reader that has seen the
//! row of transaction 105 may later find the row of 103, which was still running
//! when it looked: the classic sequence gap of outbox tables. Each row is keyed
//! by its transaction's xid, and readers read only rows whose xid is below the
//! `xmin` of a fresh snapshot — the oldest transaction still running anywhere —
//! so every transaction that could still add a row below what a reader has read
//! has ended. An event's id is `xid << 20 | index in its row`: ids grow in the
//! order readers see events, on every node. The price is latency: a long
//! transaction holds back the events of every later one until it ends
//! (`EventPage::pending` says so).

use crate::ops::{Tx, TxError};
use crate::pool::Conn;
use cherga_core::{Millis, Transition};
use cherga_store::StoreError;
use cherga_store::events::{self, Event, EventBatch, EventId, EventPage};

/// Bits of an event id below its transaction's xid: the event's index in its row.
const INDEX_BITS: u32 = 20;
/// Most events one transaction may write.
pub const MAX_EVENTS_PER_TX: usize = 1 << INDEX_BITS;

/// Appends the row of the transaction's events.
pub const INSERT_EVENTS: &str = "INSERT INTO events (at, n, records) VALUES ($1, $2, $3)";

/// The event row of a transaction, ready to be bound to [`INSERT_EVENTS`].
pub struct EventRow {
    pub at: Millis,
    pub n: i32,
    pub records: Vec<u8>,
}

impl EventRow {
    /// The parameters of [`INSERT_EVENTS`].
    pub fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 3] {
        [&self.at, &self.n, &self.records]
    }

    /// The row for `transitions`, or `None` when there are none (or no log is kept).
    ///
    /// # Errors
    /// More transitions than one row may hold (never for cherga's own calls,
    /// which are bounded far below it).
    pub fn of(transitions: &[Transition], log: bool) -> Tx<Option<EventRow>> {
        if !log || transitions.is_empty() {
            return Ok(None);
        }
        if transitions.len() >= MAX_EVENTS_PER_TX {
            return Err(TxError::Store(StoreError::Corrupt(format!(
                "{} events in one transaction; at most {} fit an event row",
                transitions.len(),
                MAX_EVENTS_PER_TX - 1
            ))));
        }
        let mut batch = EventBatch::default();
        for transition in transitions {
            batch.push(transition);
        }
        let (at, n) = (batch.first_at(), batch.len() as i32);
        Ok(Some(EventRow { at, n, records: batch.take() }))
    }
}

fn id(tx: i64, index: u64) -> EventId {
    ((tx.max(0) as u64) << INDEX_BITS) | index
}

/// Reads up to `limit` events after `after`, from rows below the horizon.
///
/// # Errors
/// A database error, or a row that cannot be decoded.
pub async fn read(c: &mut Conn, after: EventId, limit: usize) -> Tx<EventPage> {
    let after_tx = i64::try_from(after >> INDEX_BITS).unwrap_or(i64::MAX);
    let rows = i64::try_from(limit).unwrap_or(i64::MAX).max(1);
    let mut results = c
        .run(&[
            (
                "SELECT tx, at, records FROM events \
                 WHERE tx >= $1 AND tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 ORDER BY tx LIMIT $2",
                &[&after_tx, &rows],
            ),
            (
                "SELECT (SELECT tx FROM events WHERE tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                         ORDER BY tx DESC LIMIT 1), \
                        (SELECT n FROM events WHERE tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                         ORDER BY tx DESC LIMIT 1), \
                        EXISTS (SELECT 1 FROM events \
                                WHERE tx >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint), \
                        coalesce((SELECT purged FROM event_horizon), 0)",
                &[],
            ),
        ])
        .await?;
    let state = results.pop().expect("the log's state");
    let row = state.first().ok_or_else(|| StoreError::Corrupt("no event log state".into()))?;
    let (last_tx, last_n): (Option<i64>, Option<i32>) = (row.get(0), row.get(1));
    let mut page = EventPage {
        events: Vec::new(),
        head: last_tx.map_or(0, |tx| id(tx, last_n.unwrap_or(1).max(1) as u64 - 1)),
        pending: row.get(2),
        purged_through: row.get::<_, i64>(3).max(0) as u64,
    };
    for row in &results.pop().expect("events") {
        let (tx, at, record): (i64, i64, &[u8]) = (row.get(0), row.get(1), row.get(2));
        let transitions =
            events::decode(record, at).map_err(|e| StoreError::Corrupt(format!("event row {tx}: {e}")))?;
        for (index, transition) in transitions.into_iter().enumerate() {
            let event_id = id(tx, index as u64);
            if event_id > after && page.events.len() < limit {
                page.events.push(Event { id: event_id, transition });
            }
        }
        if page.events.len() >= limit {
            break;
        }
    }
    Ok(page)
}

/// Deletes rows older than `retention_ms` (at most `limit` a call) and raises
/// the horizon past their events, inside the open transaction.
///
/// # Errors
/// A database error.
pub async fn purge(c: &mut Conn, now: Millis, retention_ms: Millis, limit: i64) -> Tx<()> {
    let cutoff = now.saturating_sub(retention_ms);
    let deleted = c
        .query(
            "DELETE FROM events WHERE tx IN \
               (SELECT tx FROM events WHERE at < $1 ORDER BY tx LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING tx, n",
            &[&cutoff, &limit],
        )
        .await?;
    let last = deleted.iter().map(|row| id(row.get(0), row.get::<_, i32>(1).max(1) as u64 - 1)).max();
    if let Some(last) = last {
        let last = i64::try_from(last).unwrap_or(i64::MAX);
        c.query(
            "INSERT INTO event_horizon (purged) VALUES ($1) \
             ON CONFLICT (id) DO UPDATE SET purged = GREATEST(event_horizon.purged, EXCLUDED.purged)",
            &[&last],
        )
        .await?;
    }
    Ok(())
}
