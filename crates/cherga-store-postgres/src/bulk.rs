//! Bulk actions on PostgreSQL: one [`BulkStep`] as one transaction, and the
//! deletion of an empty queue.
//!
//! A step first picks up to `max` matching tasks after its cursor without
//! locks (the `tasks_by_state` index), then takes the group locks of those in
//! groups and the rows (`SKIP LOCKED`: a task another transaction holds is left
//! for it), checks each against the filter again, moves it with the core's
//! transition and saves, deletes, refreshes group heads and writes the events,
//! all in one commit: the same lock order as every other transaction.

use super::{Keys, LOCK_GROUPS_OF, REFRESH_HEADS, SELECT_QUEUE, Tx, changed_group, settings_from};
use crate::events::{EventRow, INSERT_EVENTS};
use crate::pool::{Conn, Step};
use crate::rows::{self, ChangedRows, UPDATE_TASKS, filter_conditions, task_columns};
use cherga_core::{AckOutcome, Change, Millis, Task, TaskId, Transition};
use cherga_store::{BulkAction, BulkPage, BulkStep, Changed, Effects, StoreError};
use std::collections::BTreeSet;

const CANDIDATES: &str = concat!(
    "SELECT seq FROM tasks WHERE queue = $1 AND state = ANY($2) AND seq > $3 ",
    filter_conditions!(),
    " ORDER BY seq LIMIT $8"
);

const LOCK_CANDIDATES: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE seq = ANY($1) ORDER BY seq FOR UPDATE SKIP LOCKED"
);

/// Before the heads of groups where tasks were retried are refreshed: a retried
/// task is older than the group's head, so every head of those groups steps down.
const UNHEAD: &str = "UPDATE tasks t SET head = false FROM unnest($1::text[], $2::text[]) AS g(queue, grp) \
     WHERE t.queue = g.queue AND t.grp = g.grp AND t.head AND t.state IN (0, 1, 2)";

pub async fn act_on_tasks(c: &mut Conn, keys: &Keys, step: &BulkStep, now: Millis) -> Tx<Changed<BulkPage>> {
    let queue = step.queue.as_str();
    let states = rows::state_codes(step.filter.state_mask(step.action));
    let after = step.after.and_then(rows::seq_of).unwrap_or(0);
    let limit = i64::try_from(step.max).unwrap_or(i64::MAX);
    let [kind, group, enqueued_after, enqueued_before] = rows::filter_params(&step.filter);
    let mut results = c
        .run(&[
            (SELECT_QUEUE, &[&queue]),
            (CANDIDATES, &[&queue, &states, &after, kind, group, enqueued_after, enqueued_before, &limit]),
        ])
        .await?;
    let seqs: Vec<i64> = results.pop().expect("candidates").iter().map(|row| row.get(0)).collect();
    let settings = settings_from(&results.pop().expect("queue"))?.ok_or(StoreError::NotFound)?;
    let next = seqs.last().filter(|_| seqs.len() as i64 == limit).map(|&seq| TaskId::new(0, seq as u64));
    if seqs.is_empty() {
        return Ok(Changed::nothing(BulkPage { changed: 0, next }));
    }
    c.begin();
    let mut results = c.run(&[(LOCK_GROUPS_OF, &[&seqs, &keys.prefix]), (LOCK_CANDIDATES, &[&seqs])]).await?;
    let mut tasks: Vec<Task> =
        results.pop().expect("tasks").iter().map(rows::task_from_row).collect::<Result<_, _>>()?;
    let mut groups = BTreeSet::new();
    let mut retried_groups = BTreeSet::new();
    let mut saved: Vec<&Task> = Vec::new();
    let mut deleted: Vec<i64> = Vec::new();
    let mut transitions = Vec::new();
    for task in &mut tasks {
        if !step.filter.matches(step.action, task) {
            continue;
        }
        let was = task.state;
        let change = match step.action {
            BulkAction::Retry => task.retry(settings.max_attempts, None, now).ok().map(|()| Change::Retried),
            BulkAction::Cancel => {
                matches!(task.cancel(now), Ok(AckOutcome::Applied)).then_some(Change::Cancelled)
            }
            BulkAction::Purge => Some(Change::Purged),
        };
        match change {
            Some(Change::Purged) => {
                deleted.push(task.id.seq() as i64);
                transitions.push(Transition::purged(task.id, queue, &task.kind, was, task.attempts, now));
                if let Some(group) = task.group.as_ref().filter(|_| !was.is_finished()) {
                    groups.insert((task.queue.clone(), group.clone()));
                }
            }
            Some(change) => {
                transitions.push(Transition::of(task, change, Some(was), now));
                changed_group(was, task, &mut groups);
                if change == Change::Retried
                    && let Some(group) = &task.group
                {
                    retried_groups.insert((task.queue.clone(), group.clone()));
                }
            }
            None => {}
        }
    }
    for task in &tasks {
        if transitions.iter().any(|t| t.task_id == task.id && t.change != Change::Purged) {
            saved.push(task);
        }
    }
    let mut changed_rows = ChangedRows::default();
    for task in &saved {
        changed_rows.push(task);
    }
    let save = changed_rows.params();
    let (unhead_queues, unhead_groups): (Vec<&str>, Vec<&str>) =
        retried_groups.iter().map(|(q, g)| (q.as_str(), g.as_str())).unzip();
    let (refresh_queues, refresh_groups): (Vec<&str>, Vec<&str>) =
        groups.iter().map(|(q, g)| (q.as_str(), g.as_str())).unzip();
    let unhead: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&unhead_queues, &unhead_groups];
    let refresh: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&refresh_queues, &refresh_groups];
    let delete: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&deleted];
    let delete_keys: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&queue, &deleted];
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(6);
    if !changed_rows.is_empty() {
        steps.push((UPDATE_TASKS, &save));
    }
    if !deleted.is_empty() {
        steps.push(("DELETE FROM tasks WHERE seq = ANY($1)", &delete));
        steps.push(("DELETE FROM idempotency_keys WHERE queue = $1 AND task_seq = ANY($2)", &delete_keys));
    }
    if !retried_groups.is_empty() {
        steps.push((UNHEAD, &unhead));
    }
    if !groups.is_empty() {
        steps.push((REFRESH_HEADS, &refresh));
    }
    let events = EventRow::of(&transitions, keys.log_events)?;
    let event_params = events.as_ref().map(EventRow::params);
    steps.extend(event_params.as_ref().map(|p| (INSERT_EVENTS, &p[..])));
    c.commit_with(&steps).await?;
    let page = BulkPage { changed: transitions.len(), next };
    Ok(Changed::new(page, Effects { transitions, ..Effects::none() }))
}

/// Deletes `queue` with its idempotency keys if no task is left in it. The
/// queue's row is locked first, so a concurrent put or delete waits.
pub async fn delete_queue(c: &mut Conn, queue: &str) -> Tx<Changed<()>> {
    c.begin();
    let mut results = c
        .run(&[
            ("SELECT name FROM queues WHERE name = $1 FOR UPDATE", &[&queue]),
            ("SELECT count(*) FROM tasks WHERE queue = $1", &[&queue]),
        ])
        .await?;
    let left: i64 = results.pop().expect("count")[0].get(0);
    if results.pop().expect("queue").is_empty() {
        return Err(StoreError::NotFound.into());
    }
    if left > 0 {
        return Err(StoreError::NotEmpty(left as u64).into());
    }
    c.commit_with(&[
        ("DELETE FROM idempotency_keys WHERE queue = $1", &[&queue]),
        ("DELETE FROM queues WHERE name = $1", &[&queue]),
    ])
    .await?;
    Ok(Changed::new((), Effects { queues_changed: vec![queue.to_owned()], ..Effects::none() }))
}
