//! The operations of the store, one transaction each: load the rows, move them
//! with the core's transitions, save them. SQL picks candidates (what is claimable,
//! what is due); the rules themselves live in `cherga-core`.
//!
//! Locks, always taken in this order, so that no two transactions wait on each
//! other in a cycle:
//! 1. group locks (`pg_advisory_xact_lock` on a hash of schema, queue and group),
//!    several in ascending hash order, by every transaction that changes which
//!    tasks of a group are unfinished (enqueue, ack, dead nack or expiry, cancel,
//!    retry), because it may have to move the group's `head` flag;
//! 2. the queue lock, by a claim on a queue with a concurrency limit only, so that
//!    counting running tasks and leasing more is atomic across nodes;
//! 3. row locks (`FOR UPDATE`), several in ascending `seq` order; claims, promotion,
//!    expiry and purges use `SKIP LOCKED` and never wait for a row.
//!
//! A claim takes no group lock: a group has one head at any time, and the head is
//! leased under its row lock, so two claims racing on different nodes cannot both
//! lease from one group.

// Bulk actions (`bulk.rs`) share this module's statements and steps.
#[path = "bulk.rs"]
mod bulk;
pub use bulk::{act_on_tasks, delete_queue};

use crate::events::{EventRow, INSERT_EVENTS};
use crate::pool::{CommitError, Conn, Params, Step};
use crate::rows::{
    self, ChangedRows, INSERT_TASKS, NewRows, UPDATE_TASKS, filter_conditions, queue_columns, task_columns,
};
use cherga_core::{
    AckOutcome, Change, LeaseToken, Millis, NewPayload, NewTask, QueueSettings, QueueSettingsPatch, Refusal,
    Task, TaskId, TaskState, Transition, fingerprint,
};
use cherga_store::limits;
use cherga_store::{
    Ack, Changed, Claim, Effects, Enqueued, ListTasks, Nack, QueueInfo, QueueStats, Revocation, SchemaChange,
    SchemaVersion, StoreError,
};
use std::collections::{BTreeSet, HashMap, HashSet};

/// Why a transaction did not return its value.
#[derive(Debug)]
pub enum TxError {
    /// A statement failed and the transaction certainly did not commit: nothing
    /// took effect.
    Statement(tokio_postgres::Error),
    /// `COMMIT` failed, or the connection was lost after it went out: the outcome
    /// is unknown.
    Commit(tokio_postgres::Error),
    /// The domain refused, or the task does not exist; the transaction is rolled back.
    Store(StoreError),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(error: tokio_postgres::Error) -> Self {
        TxError::Statement(error)
    }
}

impl From<StoreError> for TxError {
    fn from(error: StoreError) -> Self {
        TxError::Store(error)
    }
}

impl From<CommitError> for TxError {
    fn from(error: CommitError) -> Self {
        match error {
            CommitError::Statement(error) => TxError::Statement(error),
            CommitError::Commit(error) => TxError::Commit(error),
        }
    }
}

impl From<Refusal> for TxError {
    fn from(refusal: Refusal) -> Self {
        TxError::Store(StoreError::Refused(refusal))
    }
}

pub(crate) type Tx<T> = Result<T, TxError>;

/// [`limits::TICK_LIMIT`] as a SQL parameter.
const TICK_LIMIT: i64 = limits::TICK_LIMIT as i64;

/// Advisory lock names of one store, made distinct per schema so that stores in
/// different schemas of one database do not serialise on each other.
pub struct Keys {
    prefix: String,
    /// Whether transactions write their events to the log.
    pub log_events: bool,
}

impl Keys {
    pub fn new(schema: Option<&str>, log_events: bool) -> Self {
        Self { prefix: format!("cherga:{}:", schema.unwrap_or("")), log_events }
    }

    pub fn migration(&self) -> String {
        format!("{}migrate", self.prefix)
    }

    fn queue(&self, queue: &str) -> String {
        format!("{}q:{queue}", self.prefix)
    }

    /// Queue names cannot contain a newline, so this cannot be ambiguous.
    fn group(&self, queue: &str, group: &str) -> String {
        format!("{}g:{queue}\n{group}", self.prefix)
    }
}

// ---------------------------------------------------------------------------
// SQL shared by several operations, and the shared steps.
// ---------------------------------------------------------------------------

/// Takes the advisory locks named in `$1` (duplicates allowed) in ascending hash order.
const LOCK_KEYS: &str = "SELECT count(pg_advisory_xact_lock(h)) FROM \
     (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY h) AS s";

/// Takes the group locks of the grouped tasks among the `seq`s in `$1` (`$2` is
/// the lock prefix). A task's queue and group never change, so reading them
/// before the lock is safe.
const LOCK_GROUPS_OF: &str = "SELECT count(pg_advisory_xact_lock(h)) FROM \
     (SELECT DISTINCT hashtextextended($2 || 'g:' || queue || E'\\n' || grp, 0) AS h \
      FROM tasks WHERE seq = ANY($1) AND grp IS NOT NULL ORDER BY h) AS s";

/// Marks the oldest unfinished task of each `(queue $1[i], group $2[i])` as its
/// head, if it is not already. Run under the group locks after the group's
/// unfinished set changed.
const REFRESH_HEADS: &str = "UPDATE tasks t SET head = true \
     FROM unnest($1::text[], $2::text[]) AS g(queue, grp) \
     CROSS JOIN LATERAL (SELECT m.seq FROM tasks m \
         WHERE m.queue = g.queue AND m.grp = g.grp AND m.grp IS NOT NULL AND m.state IN (0, 1, 2) \
         ORDER BY m.seq LIMIT 1) AS h \
     WHERE t.seq = h.seq AND NOT t.head";

const SELECT_TASK: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE seq = $1");
const SELECT_TASK_FOR_UPDATE: &str =
    concat!("SELECT ", task_columns!(), " FROM tasks WHERE seq = $1 FOR UPDATE");
const SELECT_TASKS_FOR_UPDATE: &str =
    concat!("SELECT ", task_columns!(), " FROM tasks WHERE seq = ANY($1) ORDER BY seq FOR UPDATE");
const SELECT_QUEUE: &str = concat!("SELECT ", queue_columns!(), " FROM queues WHERE name = $1");
const SELECT_QUEUE_OF_TASK: &str = concat!(
    "SELECT ",
    queue_columns!(),
    " FROM queues WHERE name = (SELECT queue FROM tasks WHERE seq = $1)"
);
const INSERT_QUEUE: &str = concat!(
    "INSERT INTO queues (",
    queue_columns!(),
    ", created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
     ON CONFLICT (name) DO NOTHING"
);

/// The groups whose unfinished set a change of `task` from `was` altered.
fn changed_group(was: TaskState, task: &Task, groups: &mut BTreeSet<(String, String)>) {
    if let Some(group) = &task.group
        && was.is_finished() != task.state.is_finished()
    {
        groups.insert((task.queue.clone(), group.clone()));
    }
}

/// The one task a single-row `SELECT` found, if it is the task `id` (the whole id
/// is compared, not only the sequence number).
fn the_task(found: &[tokio_postgres::Row], id: TaskId) -> Tx<Task> {
    let task = rows::task_from_row(found.first().ok_or(StoreError::NotFound)?)?;
    if task.id == id { Ok(task) } else { Err(StoreError::NotFound.into()) }
}

fn settings_from(found: &[tokio_postgres::Row]) -> Tx<Option<QueueSettings>> {
    Ok(match found.first() {
        Some(row) => Some(rows::queue_from_row(row)?.1),
        None => None,
    })
}

/// Saves `tasks`, moves the heads of `groups`, writes the transaction's events
/// and commits, in one round trip.
async fn save_and_commit(
    c: &mut Conn,
    tasks: &[&Task],
    groups: &BTreeSet<(String, String)>,
    events: Option<&EventRow>,
) -> Tx<()> {
    save(c, tasks, groups, Some(events)).await
}

/// Saves `tasks` and moves the heads of `groups` in one round trip, and, when
/// `commit` is given, writes its events (if any) and commits with them;
/// otherwise the transaction stays open.
async fn save(
    c: &mut Conn,
    tasks: &[&Task],
    groups: &BTreeSet<(String, String)>,
    commit: Option<Option<&EventRow>>,
) -> Tx<()> {
    let mut changed = ChangedRows::default();
    for task in tasks {
        changed.push(task);
    }
    let (queues, names): (Vec<&str>, Vec<&str>) =
        groups.iter().map(|(q, g)| (q.as_str(), g.as_str())).unzip();
    let save = changed.params();
    let refresh: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&queues, &names];
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(3);
    if !changed.is_empty() {
        steps.push((UPDATE_TASKS, &save));
    }
    if !groups.is_empty() {
        steps.push((REFRESH_HEADS, &refresh));
    }
    match commit {
        Some(events) => {
            let event_params = events.map(EventRow::params);
            steps.extend(event_params.as_ref().map(|p| (INSERT_EVENTS, &p[..])));
            c.commit_with(&steps).await?;
        }
        None if !steps.is_empty() => {
            c.run(&steps).await?;
        }
        None => {}
    }
    Ok(())
}

/// Commits the open transaction, writing `events` first.
async fn commit_events(c: &mut Conn, events: Option<&EventRow>) -> Tx<()> {
    let event_params = events.map(EventRow::params);
    let steps: Vec<Step<'_>> = event_params.as_ref().map(|p| (INSERT_EVENTS, &p[..])).into_iter().collect();
    c.commit_with(&steps).await?;
    Ok(())
}

async fn insert_default_queue(c: &mut Conn, queue: &str, now: Millis) -> Tx<()> {
    let s = QueueSettings::defaults();
    c.query(
        INSERT_QUEUE,
        &[
            &queue,
            &i64::from(s.max_attempts),
            &s.lease_ms,
            &s.backoff.initial_ms,
            &s.backoff.max_ms,
            &s.backoff.multiplier,
            &s.backoff.jitter,
            &s.concurrency.map(i64::from),
            &s.paused,
            &s.retention_ms,
            &s.dedup_window_ms,
            &now,
        ],
    )
    .await?;
    Ok(())
}

/// Creates `queue` with the defaults (a concurrent creator makes this wait for its
/// commit, then do nothing) and returns its settings.
async fn create_queue(c: &mut Conn, queue: &str, now: Millis) -> Tx<QueueSettings> {
    insert_default_queue(c, queue, now).await?;
    settings_from(&c.query(SELECT_QUEUE, &[&queue]).await?)?
        .ok_or_else(|| StoreError::Corrupt(format!("queue {queue} vanished while being created")).into())
}

// ---------------------------------------------------------------------------
// Enqueue.
// ---------------------------------------------------------------------------

enum Plan {
    /// No key: created.
    Plain(Task),
    /// The first item of the batch with its key: created if the key is free.
    Keyed(Task),
    /// A later item with the key of an earlier one.
    Duplicate,
}

/// The queue's settings (all NULL when it does not exist) and `$2` new sequence
/// numbers, in one statement.
const SETTINGS_AND_SEQS: &str = concat!(
    "SELECT ",
    queue_columns!(),
    ", ARRAY(SELECT nextval('task_seq') FROM generate_series(1, $2::bigint)) \
     FROM (SELECT 1) AS one LEFT JOIN queues ON name = $1"
);

const CLAIM_KEYS: &str = "
    INSERT INTO idempotency_keys AS k (queue, key, fingerprint, task_seq, expires_at)
    SELECT $1, u.key, u.fingerprint, u.task_seq, $5
    FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(key, fingerprint, task_seq)
    ORDER BY u.key
    ON CONFLICT (queue, key) DO UPDATE
        SET fingerprint = EXCLUDED.fingerprint, task_seq = EXCLUDED.task_seq, expires_at = EXCLUDED.expires_at
        WHERE k.expires_at <= $6
    RETURNING k.key";

/// The keys of `$2` already held in queue `$1`, with the task each names (a
/// task's columns are NULL should it be missing).
const HELD_KEYS: &str = concat!(
    "SELECT k.k_key, k.k_print, ",
    task_columns!(),
    " FROM (SELECT key AS k_key, fingerprint AS k_print, task_seq AS k_seq FROM idempotency_keys \
            WHERE queue = $1 AND key = ANY($2)) AS k \
      LEFT JOIN tasks ON tasks.seq = k.k_seq"
);

/// Stores new tasks. Idempotency keys are claimed with `INSERT ... ON CONFLICT`
/// on the key table's primary key: of concurrent duplicates on any nodes one
/// inserts, the others wait for its commit and then find its key.
pub async fn enqueue(
    c: &mut Conn,
    keys: &Keys,
    queue: &str,
    tasks: &[NewTask],
    now: Millis,
) -> Tx<Changed<Vec<Result<Enqueued, StoreError>>>> {
    c.begin();
    let group_locks: Vec<String> =
        tasks.iter().filter_map(|t| t.group.as_deref()).map(|g| keys.group(queue, g)).collect();
    let n_tasks = tasks.len() as i64;
    // Numbered after the group locks: members of a group are numbered in the
    // order their enqueues commit, so the newest member has the highest number.
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&group_locks];
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(2);
    if !group_locks.is_empty() {
        steps.push((LOCK_KEYS, &lock_params));
    }
    let settings_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&queue, &n_tasks];
    steps.push((SETTINGS_AND_SEQS, &settings_params));
    let found = c.run(&steps).await?.pop().expect("one result per statement");
    let row = found.first().ok_or_else(|| StoreError::Corrupt("no settings row".into()))?;
    let mut seqs: Vec<i64> = row.get(11);
    seqs.sort_unstable();
    if seqs.len() != tasks.len() {
        return Err(StoreError::Corrupt("the task sequence gave too few numbers".into()).into());
    }
    let settings = match row.get::<_, Option<String>>(0) {
        Some(_) => rows::queue_from_row(row)?.1,
        None => create_queue(c, queue, now).await?,
    };

    let mut keys_seen: HashSet<&str> = HashSet::new();
    let mut plans = Vec::with_capacity(tasks.len());
    for (index, new) in tasks.iter().enumerate() {
        let create = || Task::create(queue, new.clone(), &settings, seqs[index] as u64, now);
        plans.push(match new.idempotency_key.as_deref() {
            None => Plan::Plain(create()),
            Some(key) if keys_seen.insert(key) => Plan::Keyed(create()),
            Some(_) => Plan::Duplicate,
        });
    }

    // Claim the keys, in key order so that batches cannot deadlock on them.
    let mut claims: Vec<(&str, i64, i64)> = plans
        .iter()
        .zip(tasks)
        .filter_map(|(plan, new)| match plan {
            Plan::Keyed(task) => Some((
                new.idempotency_key.as_deref().expect("keyed"),
                fingerprint(new) as i64,
                task.id.seq() as i64,
            )),
            _ => None,
        })
        .collect();
    claims.sort_unstable();
    let mut won: HashSet<String> = HashSet::new();
    // key -> (fingerprint, task) of keys an existing task holds.
    let mut held: HashMap<String, (i64, Option<Task>)> = HashMap::new();
    if !claims.is_empty() {
        let names: Vec<&str> = claims.iter().map(|c| c.0).collect();
        let prints: Vec<i64> = claims.iter().map(|c| c.1).collect();
        let task_seqs: Vec<i64> = claims.iter().map(|c| c.2).collect();
        let expires_at = now.saturating_add(settings.dedup_window_ms);
        let claimed = c.query(CLAIM_KEYS, &[&queue, &names, &prints, &task_seqs, &expires_at, &now]).await?;
        won = claimed.iter().map(|row| row.get(0)).collect();
        let lost: Vec<&str> = names.iter().copied().filter(|k| !won.contains(*k)).collect();
        if !lost.is_empty() {
            for row in c.query(HELD_KEYS, &[&queue, &lost]).await? {
                let task = match row.get::<_, Option<i64>>(2) {
                    Some(_) => Some(rows::task_from_row_at(&row, 2)?),
                    None => None,
                };
                held.insert(row.get(0), (row.get(1), task));
            }
        }
    }

    let is_new = |plan: &Plan, new: &NewTask| match plan {
        Plan::Plain(_) => true,
        Plan::Keyed(_) => won.contains(new.idempotency_key.as_deref().expect("keyed")),
        Plan::Duplicate => false,
    };
    let mut new_rows = NewRows::default();
    let mut groups = BTreeSet::new();
    let mut effects = Effects::none();
    for (plan, new) in plans.iter().zip(tasks) {
        if let (Plan::Plain(task) | Plan::Keyed(task), true) = (plan, is_new(plan, new)) {
            new_rows.push(task);
            effects.transitions.push(Transition::of(task, Change::Enqueued, None, now));
            if let Some(group) = &task.group {
                groups.insert((queue.to_owned(), group.clone()));
            }
        }
    }
    let insert = new_rows.params(&queue);
    let (group_queues, group_names): (Vec<&str>, Vec<&str>) =
        groups.iter().map(|(q, g)| (q.as_str(), g.as_str())).unzip();
    let refresh: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&group_queues, &group_names];
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(3);
    if !new_rows.is_empty() {
        steps.push((INSERT_TASKS, &insert));
    }
    if !groups.is_empty() {
        steps.push((REFRESH_HEADS, &refresh));
    }
    let events = EventRow::of(&effects.transitions, keys.log_events)?;
    let event_params = events.as_ref().map(EventRow::params);
    steps.extend(event_params.as_ref().map(|p| (INSERT_EVENTS, &p[..])));
    c.commit_with(&steps).await?;

    // The answers, in item order. `stored` is what each key names after this
    // batch: (fingerprint, task).
    let mut stored: HashMap<&str, (i64, Option<Task>)> = HashMap::new();
    let mut answers = Vec::with_capacity(tasks.len());
    for (plan, new) in plans.iter().zip(tasks) {
        let answer = match plan {
            Plan::Plain(task) => Ok(Enqueued::Created(task.clone())),
            Plan::Keyed(task) if is_new(plan, new) => {
                let key = new.idempotency_key.as_deref().expect("keyed");
                stored.insert(key, (fingerprint(new) as i64, Some(task.clone())));
                Ok(Enqueued::Created(task.clone()))
            }
            Plan::Keyed(_) | Plan::Duplicate => {
                let key = new.idempotency_key.as_deref().expect("keyed");
                if let Plan::Keyed(_) = plan {
                    stored.insert(key, held.remove(key).unwrap_or((0, None)));
                }
                match stored.get(key) {
                    Some((print, Some(holder))) => {
                        Enqueued::under_held_key(*print as u64, holder.clone(), new)
                    }
                    _ => Err(StoreError::Corrupt(format!("idempotency key {key:?} names a missing task"))),
                }
            }
        };
        answers.push(answer);
    }
    Ok(Changed::new(answers, effects))
}

// ---------------------------------------------------------------------------
// Claim.
// ---------------------------------------------------------------------------

/// The claimable tasks of queue `$1`, best first, at most `$2`, or fewer when the
/// queue has a concurrency limit `$3`: `$3` less the tasks running now.
const SELECT_CLAIMABLE: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks t \
     WHERE t.queue = $1 AND t.state = 1 AND (t.grp IS NULL OR t.head) \
       AND (t.grp IS NULL OR NOT EXISTS \
            (SELECT 1 FROM tasks r WHERE r.queue = t.queue AND r.grp = t.grp AND r.state = 2)) \
     ORDER BY t.priority DESC, t.run_at, t.seq \
     LIMIT CASE WHEN $3::bigint IS NULL THEN $2::bigint \
           ELSE GREATEST(0, LEAST($2::bigint, \
                $3::bigint - (SELECT count(*) FROM tasks WHERE queue = $1 AND state = 2))) END \
     FOR UPDATE OF t SKIP LOCKED"
);

/// Leases the best claimable tasks: ready, and for a grouped task the group's
/// head with no member of the group running. Rows another transaction holds are
/// skipped, so claims on several nodes never hand out one task twice.
pub async fn claim(c: &mut Conn, keys: &Keys, claim: &Claim, now: Millis) -> Tx<Changed<Vec<Task>>> {
    c.begin();
    let (leased, transitions) = lease_and_commit(c, keys, claim, now, Vec::new()).await?;
    Ok(Changed::new(leased, Effects { transitions, ..Effects::none() }))
}

/// The claim of [`claim`] inside the open transaction, which it commits with
/// the events of `transitions` (made earlier in the transaction) and its own.
/// Returns the leased tasks and every transition of the transaction.
async fn lease_and_commit(
    c: &mut Conn,
    keys: &Keys,
    claim: &Claim,
    now: Millis,
    mut transitions: Vec<Transition>,
) -> Tx<(Vec<Task>, Vec<Transition>)> {
    let queue = claim.queue.as_str();
    let settings = match settings_from(&c.query(SELECT_QUEUE, &[&queue]).await?)? {
        Some(settings) => settings,
        None => create_queue(c, queue, now).await?,
    };
    let max = i64::try_from(claim.max).unwrap_or(i64::MAX);
    if settings.paused || max == 0 {
        commit_events(c, EventRow::of(&transitions, keys.log_events)?.as_ref()).await?;
        return Ok((Vec::new(), transitions));
    }
    let concurrency = settings.concurrency.map(i64::from);
    let queue_lock = vec![keys.queue(queue)];
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&queue_lock];
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(2);
    if concurrency.is_some() {
        // Counting running tasks and leasing more must be atomic across nodes.
        steps.push((LOCK_KEYS, &lock_params));
    }
    let claim_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&queue, &max, &concurrency];
    steps.push((SELECT_CLAIMABLE, &claim_params));
    let found = c.run(&steps).await?.pop().expect("one result per statement");
    let lease_ms = claim.lease_ms.unwrap_or(settings.lease_ms);
    let mut leased = Vec::with_capacity(found.len());
    for row in &found {
        let mut task = rows::task_from_row(row)?;
        if let Err(refusal) = task.lease(fastrand::u64(..), lease_ms, claim.worker.clone(), now) {
            // The SQL picked only ready tasks; trust the row and move on.
            tracing::error!(task = %task.id, %refusal, "claim selected a task that is not ready");
            continue;
        }
        transitions.push(Transition::of(&task, Change::Leased, Some(TaskState::Ready), now));
        leased.push(task);
    }
    let events = EventRow::of(&transitions, keys.log_events)?;
    save_and_commit(c, &leased.iter().collect::<Vec<_>>(), &BTreeSet::new(), events.as_ref()).await?;
    Ok((leased, transitions))
}

// ---------------------------------------------------------------------------
// Ack, nack, extend, cancel, retry.
// ---------------------------------------------------------------------------

/// Acknowledges a batch in one transaction and two round trips: the group locks
/// and one row lock each (in `seq` order), then one `UPDATE` for all and the
/// commit.
pub async fn complete(
    c: &mut Conn,
    keys: &Keys,
    acks: &[Ack],
    now: Millis,
) -> Tx<Changed<Vec<Result<Task, StoreError>>>> {
    c.begin();
    let (answers, to_save, groups) = acknowledge(c, keys, acks, now).await?;
    let transitions = acked(&to_save, now);
    let events = EventRow::of(&transitions, keys.log_events)?;
    save_and_commit(c, &to_save.iter().collect::<Vec<_>>(), &groups, events.as_ref()).await?;
    Ok(Changed::new(answers, Effects { transitions, ..Effects::none() }))
}

/// The transitions of the tasks acks finished.
fn acked(saved: &[Task], now: Millis) -> Vec<Transition> {
    saved.iter().map(|task| Transition::of(task, Change::Acked, Some(TaskState::Running), now)).collect()
}

/// Acknowledges `acks` as [`complete`] does, then claims as [`claim`] does, in
/// one transaction and one commit. Lock order: the acks take group locks, then
/// their row locks; the claim then takes the queue lock (a queue with a
/// concurrency limit only) after those row locks, against the order in the
/// module's head. No cycle follows: a holder of the queue lock waits for nothing
/// more (its rows are taken with `SKIP LOCKED` and it takes no group lock).
pub async fn complete_and_claim(
    c: &mut Conn,
    keys: &Keys,
    acks: &[Ack],
    claim: &Claim,
    now: Millis,
) -> Tx<Changed<(Vec<Result<Task, StoreError>>, Vec<Task>)>> {
    c.begin();
    let (answers, to_save, groups) = acknowledge(c, keys, acks, now).await?;
    // Saved first, so that the claim sees the groups and slots the acks freed.
    save(c, &to_save.iter().collect::<Vec<_>>(), &groups, None).await?;
    let (leased, transitions) = lease_and_commit(c, keys, claim, now, acked(&to_save, now)).await?;
    Ok(Changed::new((answers, leased), Effects { transitions, ..Effects::none() }))
}

/// The acknowledgements of [`complete`] inside the open transaction: an answer
/// per ack, the tasks to save and the groups whose heads move.
async fn acknowledge(
    c: &mut Conn,
    keys: &Keys,
    acks: &[Ack],
    now: Millis,
) -> Tx<(Vec<Result<Task, StoreError>>, Vec<Task>, BTreeSet<(String, String)>)> {
    let seqs: Vec<i64> = acks.iter().filter_map(|a| rows::seq_of(a.task_id)).collect();
    let found = c
        .run(&[(LOCK_GROUPS_OF, &[&seqs, &keys.prefix]), (SELECT_TASKS_FOR_UPDATE, &[&seqs])])
        .await?
        .pop()
        .expect("one result per statement");
    let mut by_seq: HashMap<i64, Task> = HashMap::with_capacity(found.len());
    for row in &found {
        let task = rows::task_from_row(row)?;
        by_seq.insert(task.id.seq() as i64, task);
    }
    let mut changed: BTreeSet<i64> = BTreeSet::new();
    let mut groups = BTreeSet::new();
    let mut answers = Vec::with_capacity(acks.len());
    for ack in acks {
        let seq = rows::seq_of(ack.task_id).unwrap_or(-1);
        let Some(task) = by_seq.get_mut(&seq).filter(|t| t.id == ack.task_id) else {
            answers.push(Err(StoreError::NotFound));
            continue;
        };
        let token = LeaseToken::from_string(ack.token.clone());
        answers.push(match task.ack(&token, ack.result.clone(), now) {
            Ok(AckOutcome::Applied) => {
                changed.insert(seq);
                changed_group(TaskState::Running, task, &mut groups);
                Ok(task.clone())
            }
            Ok(AckOutcome::Replayed) => Ok(task.clone()),
            Err(refusal) => Err(refusal.into()),
        });
    }
    let to_save: Vec<Task> = changed.iter().filter_map(|seq| by_seq.remove(seq)).collect();
    Ok((answers, to_save, groups))
}

/// Locks and loads the task `id` (after its group lock when `group_lock`) and the
/// settings of its queue, in one round trip.
async fn load_for_update(
    c: &mut Conn,
    keys: &Keys,
    id: TaskId,
    group_lock: bool,
) -> Tx<(Task, QueueSettings)> {
    let seq = rows::seq_of(id).ok_or(StoreError::NotFound)?;
    let seqs = [seq];
    let lock_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&seqs.as_slice(), &keys.prefix];
    let one: Params<'_> = &[&seq];
    let mut steps: Vec<Step<'_>> = Vec::with_capacity(3);
    if group_lock {
        steps.push((LOCK_GROUPS_OF, &lock_params));
    }
    steps.push((SELECT_TASK_FOR_UPDATE, one));
    steps.push((SELECT_QUEUE_OF_TASK, one));
    let mut results = c.run(&steps).await?;
    let settings = settings_from(&results.pop().expect("settings"))?.unwrap_or_else(QueueSettings::defaults);
    let task = the_task(&results.pop().expect("task"), id)?;
    Ok((task, settings))
}

pub async fn fail(c: &mut Conn, keys: &Keys, nack: &Nack, now: Millis) -> Tx<Changed<Task>> {
    c.begin();
    let (mut task, settings) = load_for_update(c, keys, nack.task_id, true).await?;
    let token = LeaseToken::from_string(nack.token.clone());
    let error = rows::storable(nack.error.as_deref());
    let outcome = task.nack(&token, error, nack.retry_in_ms, nack.dead, &settings, fastrand::f64(), now)?;
    settle_one(c, keys, task, outcome, (Change::Nacked, TaskState::Running), now).await
}

/// Saves `task`, moved by `change` out of `was`, and commits; a replayed change
/// only commits (there is nothing to save).
async fn settle_one(
    c: &mut Conn,
    keys: &Keys,
    task: Task,
    outcome: AckOutcome,
    (change, was): (Change, TaskState),
    now: Millis,
) -> Tx<Changed<Task>> {
    if outcome == AckOutcome::Replayed {
        c.commit().await?;
        return Ok(Changed::nothing(task));
    }
    let mut groups = BTreeSet::new();
    changed_group(was, &task, &mut groups);
    let transitions = vec![Transition::of(&task, change, Some(was), now)];
    let events = EventRow::of(&transitions, keys.log_events)?;
    save_and_commit(c, &[&task], &groups, events.as_ref()).await?;
    Ok(Changed::new(task, Effects { transitions, ..Effects::none() }))
}

pub async fn extend_lease(
    c: &mut Conn,
    keys: &Keys,
    task_id: TaskId,
    token: &str,
    lease_ms: i64,
    now: Millis,
) -> Tx<Changed<Task>> {
    c.begin();
    // No group lock: a heartbeat does not change which tasks are unfinished.
    let (mut task, _) = load_for_update(c, keys, task_id, false).await?;
    task.extend(&LeaseToken::from_string(token.to_owned()), lease_ms, now)?;
    save_and_commit(c, &[&task], &BTreeSet::new(), None).await?;
    // A longer lease is no transition: the task stays running.
    Ok(Changed::nothing(task))
}

pub async fn cancel(c: &mut Conn, keys: &Keys, task_id: TaskId, now: Millis) -> Tx<Changed<Task>> {
    c.begin();
    let (mut task, _) = load_for_update(c, keys, task_id, true).await?;
    let was = task.state;
    let outcome = task.cancel(now)?;
    settle_one(c, keys, task, outcome, (Change::Cancelled, was), now).await
}

/// Sends a dead task back to ready, with `new_payload` in place of its payload
/// when given (written in the same commit; the rows of other changes leave the
/// payload alone). In a group it is older than the group's current head (or
/// the group has none), so it becomes the head.
pub async fn retry_dead(
    c: &mut Conn,
    keys: &Keys,
    task_id: TaskId,
    new_payload: Option<&NewPayload>,
    now: Millis,
) -> Tx<Changed<Task>> {
    c.begin();
    let (mut task, settings) = load_for_update(c, keys, task_id, true).await?;
    let edited = new_payload.is_some();
    task.retry(settings.max_attempts, new_payload.cloned(), now)?;
    let transition = Transition {
        payload_edited: edited,
        ..Transition::of(&task, Change::Retried, Some(TaskState::Dead), now)
    };
    let effects = Effects { transitions: vec![transition], ..Effects::none() };
    let events = EventRow::of(&effects.transitions, keys.log_events)?;
    let mut changed = ChangedRows::default();
    changed.push(&task);
    let save = changed.params();
    let seq = task.id.seq() as i64;
    let payload: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&seq, &task.payload];
    let mut steps: Vec<Step<'_>> = vec![(UPDATE_TASKS, &save)];
    if edited {
        steps.push(("UPDATE tasks SET payload = $2 WHERE seq = $1", &payload));
    }
    let group = task.group.clone().unwrap_or_default();
    let (queues, groups) = ([task.queue.as_str()], [group.as_str()]);
    let (queues, groups) = (queues.as_slice(), groups.as_slice());
    let unhead: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&task.queue, &group, &seq];
    let refresh: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&queues, &groups];
    if task.group.is_some() {
        steps.push((
            "UPDATE tasks SET head = false \
             WHERE queue = $1 AND grp = $2 AND grp IS NOT NULL AND state IN (0, 1, 2) AND head AND seq > $3",
            &unhead,
        ));
        steps.push((REFRESH_HEADS, &refresh));
    }
    let event_params = events.as_ref().map(EventRow::params);
    steps.extend(event_params.as_ref().map(|p| (INSERT_EVENTS, &p[..])));
    c.commit_with(&steps).await?;
    Ok(Changed::new(task, effects))
}

// ---------------------------------------------------------------------------
// Reads and queues.
// ---------------------------------------------------------------------------

pub async fn get_task(c: &mut Conn, task_id: TaskId) -> Tx<Task> {
    let seq = rows::seq_of(task_id).ok_or(StoreError::NotFound)?;
    the_task(&c.query(SELECT_TASK, &[&seq]).await?, task_id)
}

pub async fn list_tasks(c: &mut Conn, list: &ListTasks) -> Tx<Vec<Task>> {
    const LIST: &str = concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE queue = $1 AND state = ANY($2) AND seq > $3 ",
        filter_conditions!(),
        " AND ($8::text IS NULL OR seq = (SELECT task_seq FROM idempotency_keys WHERE queue = $1 AND key = $8)) \
         ORDER BY seq LIMIT $9"
    );
    let queue = list.queue.as_str();
    let after = list.after.and_then(rows::seq_of).unwrap_or(0);
    let limit = i64::try_from(list.limit).unwrap_or(i64::MAX);
    let states = rows::state_codes(list.filter.list_mask());
    let [kind, group, enqueued_after, enqueued_before] = rows::filter_params(&list.filter);
    let mut results = c
        .run(&[
            (SELECT_QUEUE, &[&queue]),
            (
                LIST,
                &[&queue, &states, &after, kind, group, enqueued_after, enqueued_before, &list.key, &limit],
            ),
        ])
        .await?;
    let found = results.pop().expect("tasks");
    if settings_from(&results.pop().expect("queue"))?.is_none() {
        return Err(StoreError::NotFound.into());
    }
    found.iter().map(|row| Ok(rows::task_from_row(row)?)).collect()
}

fn add_count(counts: &mut [u64; 6], state: i16, n: i64) {
    if let Some(state) = u8::try_from(state).ok().and_then(TaskState::from_code) {
        counts[usize::from(state.code())] += n.max(0) as u64;
    }
}

const COUNT_STATES: &str = "SELECT state, count(*) FROM tasks WHERE queue = $1 GROUP BY state";

fn counts_from(found: &[tokio_postgres::Row]) -> [u64; 6] {
    let mut counts = [0; 6];
    for row in found {
        add_count(&mut counts, row.get(0), row.get(1));
    }
    counts
}

pub async fn get_queue(c: &mut Conn, queue: &str) -> Tx<QueueInfo> {
    let mut results = c.run(&[(SELECT_QUEUE, &[&queue]), (COUNT_STATES, &[&queue])]).await?;
    let counts = counts_from(&results.pop().expect("counts"));
    let settings = settings_from(&results.pop().expect("settings"))?.ok_or(StoreError::NotFound)?;
    Ok(QueueInfo { name: queue.to_owned(), settings, counts })
}

pub async fn list_queues(c: &mut Conn) -> Tx<Vec<QueueInfo>> {
    let mut results = c
        .run(&[
            (concat!("SELECT ", queue_columns!(), " FROM queues ORDER BY name COLLATE \"C\""), &[]),
            ("SELECT queue, state, count(*) FROM tasks GROUP BY queue, state", &[]),
        ])
        .await?;
    let counted = results.pop().expect("counts");
    let mut queues = Vec::new();
    for row in &results.pop().expect("queues") {
        let (name, settings) = rows::queue_from_row(row)?;
        queues.push(QueueInfo { name, settings, counts: [0; 6] });
    }
    let index: HashMap<String, usize> = queues.iter().enumerate().map(|(i, q)| (q.name.clone(), i)).collect();
    for row in &counted {
        let queue: &str = row.get(0);
        if let Some(&i) = index.get(queue) {
            add_count(&mut queues[i].counts, row.get(1), row.get(2));
        }
    }
    Ok(queues)
}

/// Every queue's counts and oldest ready task. The counts are those of
/// [`list_queues`] (an index-only scan of `tasks_by_state`: its cost grows with
/// the number of tasks, not of queues); the oldest ready task per queue reads
/// `tasks_claimable`, which holds only leasable tasks.
pub async fn queue_stats(c: &mut Conn) -> Tx<Vec<QueueStats>> {
    let queues = list_queues(c).await?;
    let oldest = c
        .query(
            "SELECT queue, min(run_at) FROM tasks WHERE state = 1 AND (grp IS NULL OR head) GROUP BY queue",
            &[],
        )
        .await?;
    let oldest: HashMap<String, Millis> = oldest.iter().map(|row| (row.get(0), row.get(1))).collect();
    Ok(queues
        .into_iter()
        .map(|q| {
            let oldest_ready_at = oldest.get(&q.name).copied();
            QueueStats { name: q.name, counts: q.counts, oldest_ready_at }
        })
        .collect())
}

/// A write transaction that commits: it takes a transaction id (which a
/// read-only or recovering server refuses) and reads the schema, so it fails
/// when the database, the connection or cherga's tables are gone.
pub async fn check_commit(c: &mut Conn) -> Tx<()> {
    c.begin();
    c.commit_with(&[("SELECT txid_current()", &[]), ("SELECT 1 FROM queues LIMIT 1", &[])]).await?;
    Ok(())
}

pub async fn put_queue(
    c: &mut Conn,
    queue: &str,
    patch: &QueueSettingsPatch,
    now: Millis,
) -> Tx<Changed<QueueInfo>> {
    c.begin();
    // Create first and then lock the row, so that concurrent patches of one queue
    // apply one after the other; a refused patch rolls the creation back.
    insert_default_queue(c, queue, now).await?;
    let found = c
        .query(concat!("SELECT ", queue_columns!(), " FROM queues WHERE name = $1 FOR UPDATE"), &[&queue])
        .await?;
    let current = settings_from(&found)?.ok_or(StoreError::NotFound)?;
    let s = current.with(patch).map_err(StoreError::InvalidSettings)?;
    let (max_attempts, concurrency) = (i64::from(s.max_attempts), s.concurrency.map(i64::from));
    let mut results = c
        .commit_with(&[
            (
                "UPDATE queues SET max_attempts = $2, lease_ms = $3, backoff_initial_ms = $4, \
                 backoff_max_ms = $5, backoff_multiplier = $6, backoff_jitter = $7, concurrency = $8, \
                 paused = $9, retention_ms = $10, dedup_window_ms = $11, updated_at = $12 WHERE name = $1",
                &[
                    &queue,
                    &max_attempts,
                    &s.lease_ms,
                    &s.backoff.initial_ms,
                    &s.backoff.max_ms,
                    &s.backoff.multiplier,
                    &s.backoff.jitter,
                    &concurrency,
                    &s.paused,
                    &s.retention_ms,
                    &s.dedup_window_ms,
                    &now,
                ],
            ),
            (COUNT_STATES, &[&queue]),
        ])
        .await?;
    let counts = counts_from(&results.pop().expect("counts"));
    let effects = Effects { queues_changed: vec![queue.to_owned()], ..Effects::none() };
    Ok(Changed::new(QueueInfo { name: queue.to_owned(), settings: s, counts }, effects))
}

// ---------------------------------------------------------------------------
// Timers. Every node runs them; row locks with SKIP LOCKED split the work.
// ---------------------------------------------------------------------------

/// `scheduled → ready` for tasks whose `run_at` passed, as `Task::promote` does
/// (state and `updated_at`, nothing else), in one statement: loading whole rows
/// to flip two columns would only move payloads back and forth. Returns their
/// transitions.
pub async fn promote(c: &mut Conn, keys: &Keys, now: Millis) -> Tx<Vec<Transition>> {
    c.begin();
    let found = c
        .query(
            "UPDATE tasks SET state = 1, updated_at = $1 \
             WHERE seq IN (SELECT seq FROM tasks WHERE state = 0 AND run_at <= $1 \
                           ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING id, queue, kind, attempts",
            &[&now, &TICK_LIMIT],
        )
        .await?;
    let transitions = found
        .iter()
        .map(|row| {
            Ok(Transition {
                task_id: rows::task_id_at(row, 0)?,
                queue: row.get(1),
                kind: row.get(2),
                change: Change::Promoted,
                from: Some(TaskState::Scheduled),
                to: Some(TaskState::Ready),
                attempt: rows::attempts_at(row, 3)?,
                at: now,
                due: None,
                payload_edited: false,
            })
        })
        .collect::<Tx<Vec<_>>>()?;
    commit_events(c, EventRow::of(&transitions, keys.log_events)?.as_ref()).await?;
    Ok(transitions)
}

/// Ends leases past their expiry with `Task::expire`. Returns their transitions.
pub async fn expire(c: &mut Conn, keys: &Keys, now: Millis) -> Tx<Vec<Transition>> {
    let due = c
        .query(
            "SELECT seq FROM tasks WHERE state = 2 AND lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT $2",
            &[&now, &TICK_LIMIT],
        )
        .await?;
    let seqs: Vec<i64> = due.iter().map(|row| row.get(0)).collect();
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    c.begin();
    let mut results = c
        .run(&[
            (LOCK_GROUPS_OF, &[&seqs, &keys.prefix]),
            (
                concat!(
                    "SELECT ",
                    task_columns!(),
                    " FROM tasks WHERE seq = ANY($1) AND state = 2 AND lease_expires_at <= $2 \
                     ORDER BY seq FOR UPDATE SKIP LOCKED"
                ),
                &[&seqs, &now],
            ),
            (
                concat!(
                    "SELECT ",
                    queue_columns!(),
                    " FROM queues WHERE name IN (SELECT DISTINCT queue FROM tasks WHERE seq = ANY($1))"
                ),
                &[&seqs],
            ),
        ])
        .await?;
    let mut settings: HashMap<String, QueueSettings> = HashMap::new();
    for row in &results.pop().expect("settings") {
        let (name, s) = rows::queue_from_row(row)?;
        settings.insert(name, s);
    }
    let mut tasks = Vec::new();
    for row in &results.pop().expect("tasks") {
        tasks.push(rows::task_from_row(row)?);
    }
    let defaults = QueueSettings::defaults();
    let mut groups = BTreeSet::new();
    let mut expired = Vec::with_capacity(tasks.len());
    for task in &mut tasks {
        let s = settings.get(&task.queue).unwrap_or(&defaults);
        if task.expire(s, fastrand::f64(), now) {
            changed_group(TaskState::Running, task, &mut groups);
            expired.push(&*task);
        }
    }
    let transitions: Vec<Transition> = expired
        .iter()
        .map(|task| Transition::of(task, Change::Expired, Some(TaskState::Running), now))
        .collect();
    let events = EventRow::of(&transitions, keys.log_events)?;
    save_and_commit(c, &expired, &groups, events.as_ref()).await?;
    Ok(transitions)
}

/// Deletes finished tasks past their queue's retention (unless an idempotency
/// key inside its window names them), then forgets expired keys. Returns the
/// transitions of the purged tasks.
pub async fn purge(
    c: &mut Conn,
    keys: &Keys,
    now: Millis,
    event_retention_ms: Option<Millis>,
) -> Tx<Vec<Transition>> {
    c.begin();
    let results = c
        .run(&[
            (
                "DELETE FROM tasks WHERE seq IN ( \
                   SELECT d.seq FROM queues q CROSS JOIN LATERAL ( \
                     SELECT t.seq FROM tasks t \
                     WHERE t.queue = q.name AND t.finished_at IS NOT NULL \
                       AND t.finished_at <= $1 - q.retention_ms \
                       AND (t.idem_key IS NULL OR NOT EXISTS ( \
                         SELECT 1 FROM idempotency_keys k WHERE k.queue = t.queue AND k.key = t.idem_key \
                         AND k.task_seq = t.seq AND k.expires_at > $1)) \
                     ORDER BY t.finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) AS d) \
                 RETURNING id, queue, kind, state, attempts",
                &[&now, &TICK_LIMIT],
            ),
            (
                "DELETE FROM idempotency_keys WHERE (queue, key) IN ( \
                   SELECT queue, key FROM idempotency_keys WHERE expires_at <= $1 \
                   LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&now, &TICK_LIMIT],
            ),
            ("DELETE FROM revoked_tokens WHERE expires_at <= $1", &[&now]),
        ])
        .await?;
    let deleted = results.first().map_or(&[][..], Vec::as_slice);
    let transitions = deleted
        .iter()
        .map(|row| {
            let (queue, kind): (&str, &str) = (row.get(1), row.get(2));
            let (state, attempts) = (rows::state_at(row, 3)?, rows::attempts_at(row, 4)?);
            Ok(Transition::purged(rows::task_id_at(row, 0)?, queue, kind, state, attempts, now))
        })
        .collect::<Tx<Vec<_>>>()?;
    if let Some(retention_ms) = event_retention_ms {
        crate::events::purge(c, now, retention_ms, TICK_LIMIT).await?;
    }
    commit_events(c, EventRow::of(&transitions, keys.log_events)?.as_ref()).await?;
    Ok(transitions)
}

/// When the next scheduled task is due or the next lease expires.
pub async fn next_timer(c: &mut Conn) -> Tx<Option<Millis>> {
    let found = c
        .query(
            "SELECT LEAST((SELECT min(run_at) FROM tasks WHERE state = 0), \
                          (SELECT min(lease_expires_at) FROM tasks WHERE state = 2))",
            &[],
        )
        .await?;
    Ok(found[0].get(0))
}

// ---------------------------------------------------------------------------
// Token revocations.
// ---------------------------------------------------------------------------

/// Records a revocation; revoking again keeps the later expiry.
pub async fn revoke_token(c: &mut Conn, revocation: &Revocation, now: Millis) -> Tx<()> {
    c.query(
        "INSERT INTO revoked_tokens AS r (jti, expires_at, revoked_at) VALUES ($1, $2, $3) \
         ON CONFLICT (jti) DO UPDATE SET expires_at = GREATEST(r.expires_at, EXCLUDED.expires_at)",
        &[&revocation.jti, &revocation.expires_at, &now],
    )
    .await?;
    Ok(())
}

/// Revocations still in force at `now`, in `jti` order (bytewise, as on SQLite).
pub async fn revoked_tokens(c: &mut Conn, now: Millis) -> Tx<Vec<Revocation>> {
    let found = c
        .query(
            "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1 ORDER BY jti COLLATE \"C\"",
            &[&now],
        )
        .await?;
    Ok(found.iter().map(|row| Revocation { jti: row.get(0), expires_at: row.get(1) }).collect())
}

/// Records `change` as the queue's next schema version. The queue's advisory
/// lock on schemas orders concurrent changes, so each takes the next number.
pub async fn put_payload_schema(
    c: &mut Conn,
    queue: &str,
    change: &SchemaChange,
    now: Millis,
) -> Tx<SchemaVersion> {
    let lock_key = format!("cherga-payload-schema:{queue}");
    c.begin();
    c.query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&lock_key]).await?;
    let rows = c
        .query(
            "INSERT INTO payload_schemas (queue, version, kind, schema, subject, created_at) \
             SELECT $1::text, coalesce(max(version), 0) + 1, $2::text, $3::text, $4::text, $5::bigint \
             FROM payload_schemas WHERE queue = $1::text \
             RETURNING version",
            &[&queue, &change.kind, &change.schema, &change.subject, &now],
        )
        .await?;
    c.commit().await?;
    let version: i64 = rows[0].get(0);
    Ok(SchemaVersion {
        queue: queue.to_owned(),
        version: version as u64,
        kind: change.kind.clone(),
        schema: change.schema.clone(),
        subject: change.subject.clone(),
        created_at: now,
    })
}

/// Every version of the queue's schemas, oldest first.
pub async fn payload_schemas(c: &mut Conn, queue: &str) -> Tx<Vec<SchemaVersion>> {
    let rows = c
        .query(
            "SELECT version, kind, schema, subject, created_at FROM payload_schemas \
             WHERE queue = $1 ORDER BY version",
            &[&queue],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| SchemaVersion {
            queue: queue.to_owned(),
            version: row.get::<_, i64>(0) as u64,
            kind: row.get(1),
            schema: row.get(2),
            subject: row.get(3),
            created_at: row.get(4),
        })
        .collect())
}

/// The latest version of the queue's schemas, 0 when none: one index probe.
pub async fn payload_schema_version(c: &mut Conn, queue: &str) -> Tx<u64> {
    let rows =
        c.query("SELECT coalesce(max(version), 0) FROM payload_schemas WHERE queue = $1", &[&queue]).await?;
    Ok(rows[0].get::<_, i64>(0) as u64)
}
