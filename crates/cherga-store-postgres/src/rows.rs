//! Reading and writing task and queue rows. SQL text lives in `'static` strings
//! (each connection prepares it once), so the column lists are macros that
//! `concat!` can splice.
//!
//! A task's attempt history, its finished attempts, is one `jsonb` column, an
//! array of objects in attempt order (`{"attempt", "worker", "started_at",
//! "finished_at", "outcome", "error"}`, times in milliseconds as in every other
//! column), so that SQL can look into it; it travels as text, written by
//! [`history_json`] and read by [`history_from_json`]. The running attempt is
//! the lease's columns (`worker`, `leased_at`).

use cherga_core::{
    Attempt, AttemptOutcome, Backoff, History, Lease, LeaseToken, PayloadEdit, QueueSettings, Task, TaskId,
    TaskState,
};
use cherga_store::StoreError;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Statement parameters, borrowed from the value that owns them.
type Param<'a> = &'a (dyn ToSql + Sync);

/// The columns [`task_from_row`] reads, in its order.
macro_rules! task_columns {
    () => {
        "seq, id, queue, kind, payload, priority, run_at, idem_key, grp, max_attempts, attempts, state, \
         result, last_error, lease_token, lease_expires_at, worker, created_at, updated_at, finished_at, \
         leased_at, history::text"
    };
}

/// The columns [`queue_from_row`] reads, in its order.
macro_rules! queue_columns {
    () => {
        "name, max_attempts, lease_ms, backoff_initial_ms, backoff_max_ms, backoff_multiplier, \
         backoff_jitter, concurrency, paused, retention_ms, dedup_window_ms"
    };
}

/// The conditions of a [`TaskFilter`](cherga_store::TaskFilter) but its states,
/// on parameters `$4` to `$7`, bound by [`filter_params`] (a statement puts the
/// queue in `$1`, the states in `$2` and the cursor in `$3`).
macro_rules! filter_conditions {
    () => {
        "AND ($4::text IS NULL OR kind = $4) AND ($5::text IS NULL OR grp = $5) \
         AND ($6::bigint IS NULL OR created_at >= $6) AND ($7::bigint IS NULL OR created_at < $7)"
    };
}

pub(crate) use {filter_conditions, queue_columns, task_columns};

/// The parameters `$4` to `$7` of [`filter_conditions`].
pub fn filter_params(filter: &cherga_store::TaskFilter) -> [Param<'_>; 4] {
    [&filter.kind, &filter.group, &filter.enqueued_after, &filter.enqueued_before]
}

/// The states of a bit set by [`TaskState::code`](cherga_core::TaskState::code),
/// as the `smallint[]` a statement compares `state` with.
pub fn state_codes(mask: u8) -> Vec<i16> {
    cherga_core::TaskState::ALL
        .iter()
        .filter(|s| mask & (1 << s.code()) != 0)
        .map(|s| i16::from(s.code()))
        .collect()
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {error}"))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    row.try_get(index).map_err(|e| corrupt("unreadable task or queue column", e))
}

fn get_u32(row: &Row, index: usize) -> Result<u32, StoreError> {
    let value: i64 = get(row, index)?;
    u32::try_from(value).map_err(|e| corrupt("count out of range", e))
}

/// Reads a row selected with [`task_columns!`].
///
/// # Errors
/// [`StoreError::Corrupt`] when a column cannot be read as a task.
pub fn task_from_row(row: &Row) -> Result<Task, StoreError> {
    task_from_row_at(row, 0)
}

/// Reads the [`task_columns!`] that start at column `at` of `row`.
///
/// # Errors
/// [`StoreError::Corrupt`] when a column cannot be read as a task.
pub fn task_from_row_at(row: &Row, at: usize) -> Result<Task, StoreError> {
    let id = task_id_at(row, at + 1)?;
    let code: i16 = get(row, at + 11)?;
    let state = u8::try_from(code)
        .ok()
        .and_then(TaskState::from_code)
        .ok_or_else(|| corrupt("task state", format!("unknown code {code}")))?;
    let token: Option<String> = get(row, at + 14)?;
    let updated_at: i64 = get(row, at + 18)?;
    let lease = match token {
        Some(token) => Some(Lease {
            token: LeaseToken::from_string(token),
            expires_at: get::<Option<i64>>(row, at + 15)?.unwrap_or(0),
            worker: get(row, at + 16)?,
            // Unknown for a lease stored before schema version 3: the task's last
            // change is the closest known time.
            leased_at: get::<Option<i64>>(row, at + 20)?.unwrap_or(updated_at),
        }),
        None => None,
    };
    Ok(Task {
        id,
        queue: get(row, at + 2)?,
        kind: get(row, at + 3)?,
        payload: get(row, at + 4)?,
        priority: get(row, at + 5)?,
        run_at: get(row, at + 6)?,
        idempotency_key: get(row, at + 7)?,
        group: get(row, at + 8)?,
        max_attempts: get_u32(row, at + 9)?,
        attempts: get_u32(row, at + 10)?,
        state,
        result: get(row, at + 12)?,
        last_error: get(row, at + 13)?,
        lease,
        history: history_from_json(get(row, at + 21)?)?,
        created_at: get(row, at + 17)?,
        updated_at,
        finished_at: get(row, at + 19)?,
    })
}

/// The `history` column of `task`: JSON text, which the statements cast to `jsonb`.
pub fn history_json(task: &Task) -> String {
    // Every lease saves the task: most have no finished attempt yet.
    if task.history.is_empty() {
        return "[]".to_owned();
    }
    let entries: Vec<serde_json::Value> = task
        .history
        .entries()
        .iter()
        .map(|e| {
            let mut entry = serde_json::json!({
                "attempt": e.attempt,
                "worker": storable(e.worker.as_deref()),
                "started_at": e.started_at,
                "finished_at": e.finished_at,
                "outcome": e.outcome.as_str(),
                "error": storable(e.error.as_deref()),
            });
            // Only on edited entries, so that entries stored before edits
            // existed read the same as unedited ones.
            if let Some(edit) = &e.payload_edit {
                entry["payload_edit"] =
                    serde_json::json!({ "at": edit.at, "by": storable(edit.by.as_deref()) });
            }
            entry
        })
        .collect();
    serde_json::Value::Array(entries).to_string()
}

/// Reads the `history` column as [`history_json`] wrote it.
///
/// # Errors
/// [`StoreError::Corrupt`] when it is not such an array.
pub fn history_from_json(text: &str) -> Result<History, StoreError> {
    let bad = |what: &str| corrupt("task history", what);
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| corrupt("task history", e))?;
    let items = value.as_array().ok_or_else(|| bad("not an array"))?;
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let int = |key: &str| item.get(key).and_then(serde_json::Value::as_i64);
        let text = |key: &str| -> Result<Option<String>, StoreError> {
            match item.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(key)),
            }
        };
        let outcome = item.get("outcome").and_then(serde_json::Value::as_str);
        let payload_edit = match item.get("payload_edit") {
            None | Some(serde_json::Value::Null) => None,
            Some(edit) => {
                let at =
                    edit.get("at").and_then(serde_json::Value::as_i64).ok_or_else(|| bad("payload_edit"))?;
                let by = match edit.get("by") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(_) => return Err(bad("payload_edit")),
                };
                Some(Box::new(PayloadEdit { at, by }))
            }
        };
        entries.push(Attempt {
            attempt: int("attempt").and_then(|a| u32::try_from(a).ok()).ok_or_else(|| bad("attempt"))?,
            worker: text("worker")?,
            started_at: int("started_at").ok_or_else(|| bad("started_at"))?,
            finished_at: int("finished_at").ok_or_else(|| bad("finished_at"))?,
            outcome: outcome.and_then(AttemptOutcome::parse).ok_or_else(|| bad("outcome"))?,
            error: text("error")?,
            payload_edit,
        });
    }
    History::from_entries(entries).map_err(|e| corrupt("task history", e))
}

/// The sequence number of `id` as stored, or `None` when no task can have it.
/// The task id in column `at` (an `id` column).
///
/// # Errors
/// [`StoreError::Corrupt`] when it is not 16 bytes.
pub fn task_id_at(row: &Row, at: usize) -> Result<TaskId, StoreError> {
    let id: &[u8] = get(row, at)?;
    let id = <[u8; 16]>::try_from(id).map_err(|_| corrupt("task id", "not 16 bytes"))?;
    Ok(TaskId::from_bytes(id))
}

/// A state column's value.
///
/// # Errors
/// [`StoreError::Corrupt`] for an unknown code.
pub fn state_at(row: &Row, at: usize) -> Result<TaskState, StoreError> {
    let code: i16 = get(row, at)?;
    u8::try_from(code)
        .ok()
        .and_then(TaskState::from_code)
        .ok_or_else(|| corrupt("task state", format!("unknown code {code}")))
}

/// An attempts column's value.
///
/// # Errors
/// [`StoreError::Corrupt`] when it is out of range.
pub fn attempts_at(row: &Row, at: usize) -> Result<u32, StoreError> {
    get_u32(row, at)
}

pub fn seq_of(id: TaskId) -> Option<i64> {
    i64::try_from(id.seq()).ok()
}

/// Reads a row selected with [`queue_columns!`].
///
/// # Errors
/// [`StoreError::Corrupt`] when a column cannot be read as settings.
pub fn queue_from_row(row: &Row) -> Result<(String, QueueSettings), StoreError> {
    let concurrency: Option<i64> = get(row, 7)?;
    let concurrency =
        concurrency.map(u32::try_from).transpose().map_err(|e| corrupt("queue concurrency", e))?;
    let settings = QueueSettings {
        max_attempts: get_u32(row, 1)?,
        lease_ms: get(row, 2)?,
        backoff: Backoff {
            initial_ms: get(row, 3)?,
            max_ms: get(row, 4)?,
            multiplier: get(row, 5)?,
            jitter: get(row, 6)?,
        },
        concurrency,
        paused: get(row, 8)?,
        retention_ms: get(row, 9)?,
        dedup_window_ms: get(row, 10)?,
    };
    Ok((get(row, 0)?, settings))
}

/// PostgreSQL `text` cannot hold U+0000, which a JSON string may spell as
/// `\u0000` in a nack's error message; it is stored as U+FFFD instead. Payloads
/// and results are JSON text, in which a raw NUL cannot occur.
pub fn storable(text: Option<&str>) -> Option<String> {
    text.map(|t| if t.contains('\0') { t.replace('\0', "\u{FFFD}") } else { t.to_owned() })
}

/// New tasks as column arrays, for one `INSERT ... SELECT FROM unnest(...)`.
#[derive(Default)]
pub struct NewRows {
    pub seq: Vec<i64>,
    pub id: Vec<Vec<u8>>,
    pub kind: Vec<String>,
    pub payload: Vec<String>,
    pub priority: Vec<i32>,
    pub run_at: Vec<i64>,
    pub idem_key: Vec<Option<String>>,
    pub grp: Vec<Option<String>>,
    pub max_attempts: Vec<i64>,
    pub state: Vec<i16>,
    pub created_at: Vec<i64>,
}

impl NewRows {
    /// Adds a task made by `Task::create`: no attempts, lease, result or error yet.
    pub fn push(&mut self, task: &Task) {
        debug_assert!(task.attempts == 0 && task.lease.is_none() && task.finished_at.is_none());
        self.seq.push(task.id.seq() as i64);
        self.id.push(task.id.as_bytes().to_vec());
        self.kind.push(task.kind.clone());
        self.payload.push(task.payload.clone());
        self.priority.push(task.priority);
        self.run_at.push(task.run_at);
        self.idem_key.push(task.idempotency_key.clone());
        self.grp.push(task.group.clone());
        self.max_attempts.push(i64::from(task.max_attempts));
        self.state.push(i16::from(task.state.code()));
        self.created_at.push(task.created_at);
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The parameters of [`INSERT_TASKS`] into `queue`.
    pub fn params<'a>(&'a self, queue: Param<'a>) -> [Param<'a>; 12] {
        [
            queue,
            &self.seq,
            &self.id,
            &self.kind,
            &self.payload,
            &self.priority,
            &self.run_at,
            &self.idem_key,
            &self.grp,
            &self.max_attempts,
            &self.state,
            &self.created_at,
        ]
    }
}

pub const INSERT_TASKS: &str = "
    INSERT INTO tasks (seq, id, queue, kind, payload, priority, run_at, idem_key, grp, max_attempts,
                       attempts, state, created_at, updated_at)
    SELECT u.seq, u.id, $1, u.kind, u.payload, u.priority, u.run_at, u.idem_key, u.grp, u.max_attempts,
           0, u.state, u.created_at, u.created_at
    FROM unnest($2::bigint[], $3::bytea[], $4::text[], $5::text[], $6::integer[], $7::bigint[],
                $8::text[], $9::text[], $10::bigint[], $11::smallint[], $12::bigint[])
         AS u(seq, id, kind, payload, priority, run_at, idem_key, grp, max_attempts, state, created_at)";

/// Changed tasks as column arrays, for one `UPDATE ... FROM unnest(...)`: the
/// fields a transition may change. A finished task stops heading its group.
#[derive(Default)]
pub struct ChangedRows {
    pub seq: Vec<i64>,
    pub run_at: Vec<i64>,
    pub max_attempts: Vec<i64>,
    pub attempts: Vec<i64>,
    pub state: Vec<i16>,
    pub result: Vec<Option<String>>,
    pub last_error: Vec<Option<String>>,
    pub lease_token: Vec<Option<String>>,
    pub lease_expires_at: Vec<Option<i64>>,
    pub worker: Vec<Option<String>>,
    pub updated_at: Vec<i64>,
    pub finished_at: Vec<Option<i64>>,
    pub leased_at: Vec<Option<i64>>,
    pub history: Vec<String>,
}

impl ChangedRows {
    pub fn push(&mut self, task: &Task) {
        let lease = task.lease.as_ref();
        self.seq.push(task.id.seq() as i64);
        self.run_at.push(task.run_at);
        self.max_attempts.push(i64::from(task.max_attempts));
        self.attempts.push(i64::from(task.attempts));
        self.state.push(i16::from(task.state.code()));
        self.result.push(task.result.clone());
        self.last_error.push(storable(task.last_error.as_deref()));
        self.lease_token.push(lease.map(|l| l.token.as_str().to_owned()));
        self.lease_expires_at.push(lease.map(|l| l.expires_at));
        self.worker.push(lease.and_then(|l| l.worker.clone()));
        self.updated_at.push(task.updated_at);
        self.finished_at.push(task.finished_at);
        self.leased_at.push(lease.map(|l| l.leased_at));
        self.history.push(history_json(task));
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The parameters of [`UPDATE_TASKS`].
    pub fn params(&self) -> [Param<'_>; 14] {
        [
            &self.seq,
            &self.run_at,
            &self.max_attempts,
            &self.attempts,
            &self.state,
            &self.result,
            &self.last_error,
            &self.lease_token,
            &self.lease_expires_at,
            &self.worker,
            &self.updated_at,
            &self.finished_at,
            &self.leased_at,
            &self.history,
        ]
    }
}

pub const UPDATE_TASKS: &str = "
    UPDATE tasks t SET run_at = u.run_at, max_attempts = u.max_attempts, attempts = u.attempts,
           state = u.state, result = u.result, last_error = u.last_error, lease_token = u.lease_token,
           lease_expires_at = u.lease_expires_at, worker = u.worker, updated_at = u.updated_at,
           finished_at = u.finished_at, leased_at = u.leased_at, history = u.history::jsonb,
           head = t.head AND u.state IN (0, 1, 2)
    FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::smallint[], $6::text[],
                $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bigint[], $12::bigint[],
                $13::bigint[], $14::text[])
         AS u(seq, run_at, max_attempts, attempts, state, result, last_error, lease_token,
              lease_expires_at, worker, updated_at, finished_at, leased_at, history)
    WHERE t.seq = u.seq";
