//! Reading and writing task and queue rows.

use cherga_core::{Backoff, Lease, LeaseToken, QueueSettings, Task, TaskId, TaskState};
use cherga_store::StoreError;
use rusqlite::{CachedStatement, Connection, Row, params};

/// Turns a SQLite failure into [`StoreError::Unavailable`].
pub trait Db<T> {
    /// # Errors
    /// [`StoreError::Unavailable`] carrying the SQLite error.
    fn db(self) -> Result<T, StoreError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Unavailable(Box::new(e)))
    }
}

/// The columns of a task row, in the order [`task_from_row`] reads them. A macro so
/// that statements can be built with `concat!` at compile time.
macro_rules! task_columns {
    () => {
        "seq, id, queue, kind, payload, priority, run_at, idem_key, grp, max_attempts, attempts, \
         state, result, last_error, lease_token, lease_expires_at, worker, created_at, updated_at, \
         finished_at"
    };
}
pub(crate) use task_columns;

/// Reads a row selected with [`task_columns`].
pub fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Task, StoreError>> {
    let id: Vec<u8> = row.get(1)?;
    let Ok(id) = <[u8; 16]>::try_from(id.as_slice()) else {
        return Ok(Err(StoreError::Corrupt("task id is not 16 bytes".into())));
    };
    let state: u8 = row.get(11)?;
    let Some(state) = TaskState::from_code(state) else {
        return Ok(Err(StoreError::Corrupt(format!("unknown task state {state}"))));
    };
    let token: Option<String> = row.get(14)?;
    let lease = match token {
        Some(token) => Some(Lease {
            token: LeaseToken::from_string(token),
            expires_at: row.get::<_, Option<i64>>(15)?.unwrap_or(0),
            worker: row.get(16)?,
        }),
        None => None,
    };
    Ok(Ok(Task {
        id: TaskId::from_bytes(id),
        queue: row.get(2)?,
        kind: row.get(3)?,
        payload: row.get(4)?,
        priority: row.get(5)?,
        run_at: row.get(6)?,
        idempotency_key: row.get(7)?,
        group: row.get(8)?,
        max_attempts: row.get(9)?,
        attempts: row.get(10)?,
        state,
        result: row.get(12)?,
        last_error: row.get(13)?,
        lease,
        created_at: row.get(17)?,
        updated_at: row.get(18)?,
        finished_at: row.get(19)?,
    }))
}

/// Loads the task with sequence number `seq`.
///
/// # Errors
/// [`StoreError::NotFound`], [`StoreError::Corrupt`], [`StoreError::Unavailable`].
pub fn load_seq(conn: &Connection, seq: u64) -> Result<Task, StoreError> {
    Reader::new(conn).load_seq(seq)
}

/// Reads task rows by sequence number in a loop, preparing its statement on
/// first use: many loops find every task in memory and never need it.
pub struct Reader<'c> {
    conn: &'c Connection,
    stmt: Option<CachedStatement<'c>>,
}

impl<'c> Reader<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        Reader { conn, stmt: None }
    }

    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Corrupt`], [`StoreError::Unavailable`].
    pub fn load_seq(&mut self, seq: u64) -> Result<Task, StoreError> {
        const SQL: &str = concat!("SELECT ", task_columns!(), " FROM tasks WHERE seq = ?1");
        let seq = i64::try_from(seq).map_err(|_| StoreError::NotFound)?;
        let stmt = match &mut self.stmt {
            Some(stmt) => stmt,
            None => self.stmt.insert(self.conn.prepare_cached(SQL).db()?),
        };
        let mut rows = stmt.query(params![seq]).db()?;
        let Some(row) = rows.next().db()? else { return Err(StoreError::NotFound) };
        task_from_row(row).db()?
    }
}

/// Declares a statement that writes task rows, prepared once and then run for
/// each row of a loop: fetching a statement from the connection's cache hashes
/// its whole text, on the way out and back in, which was a tenth of an insert
/// (callgrind, `docs/storage.md`).
macro_rules! row_statement {
    ($(#[$doc:meta])* $name:ident = $sql:expr) => {
        $(#[$doc])*
        pub struct $name<'c>(CachedStatement<'c>);

        impl<'c> $name<'c> {
            /// # Errors
            /// [`StoreError::Unavailable`].
            pub fn prepare(conn: &'c Connection) -> Result<Self, StoreError> {
                conn.prepare_cached($sql).map(Self).db()
            }
        }
    };
}

row_statement! {
    /// Inserts a new task.
    InsertTask = concat!(
        "INSERT INTO tasks (",
        task_columns!(),
        ", qid) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
    )
}

impl InsertTask<'_> {
    /// Inserts `task`, whose queue has the number `qid`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub fn run(&mut self, task: &Task, qid: i64) -> Result<(), StoreError> {
        let (token, expires_at, worker) = lease_columns(task);
        execute(
            &mut self.0,
            params![
                task.id.seq() as i64,
                &task.id.as_bytes()[..],
                task.queue,
                task.kind,
                task.payload,
                task.priority,
                task.run_at,
                task.idempotency_key,
                task.group,
                task.max_attempts,
                task.attempts,
                task.state.code(),
                task.result,
                task.last_error,
                token,
                expires_at,
                worker,
                task.created_at,
                task.updated_at,
                task.finished_at,
                qid,
            ],
        )
    }
}

row_statement! {
    /// Writes the fields any transition may change.
    SaveTask = "UPDATE tasks SET run_at = ?2, max_attempts = ?3, attempts = ?4, state = ?5, \
        result = ?6, last_error = ?7, lease_token = ?8, lease_expires_at = ?9, worker = ?10, \
        updated_at = ?11, finished_at = ?12 WHERE seq = ?1"
}

impl SaveTask<'_> {
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub fn run(&mut self, task: &Task) -> Result<(), StoreError> {
        let (token, expires_at, worker) = lease_columns(task);
        execute(
            &mut self.0,
            params![
                task.id.seq() as i64,
                task.run_at,
                task.max_attempts,
                task.attempts,
                task.state.code(),
                task.result,
                task.last_error,
                token,
                expires_at,
                worker,
                task.updated_at,
                task.finished_at,
            ],
        )
    }
}

/// Writes task rows in a loop: a new row for a task that has none, else the
/// fields a transition may change. Each statement is prepared on first use.
pub struct RowWriter<'c> {
    conn: &'c Connection,
    insert: Option<InsertTask<'c>>,
    save: Option<SaveTask<'c>>,
}

impl<'c> RowWriter<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        RowWriter { conn, insert: None, save: None }
    }

    /// Writes `task`, whose queue has the number `qid`, as it is: an insert unless
    /// `has_row`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub fn write(&mut self, task: &Task, qid: i64, has_row: bool) -> Result<(), StoreError> {
        if has_row {
            let save = match &mut self.save {
                Some(save) => save,
                None => self.save.insert(SaveTask::prepare(self.conn)?),
            };
            save.run(task)
        } else {
            let insert = match &mut self.insert {
                Some(insert) => insert,
                None => self.insert.insert(InsertTask::prepare(self.conn)?),
            };
            insert.run(task, qid)
        }
    }
}

/// The lease columns of a task row: `lease_token, lease_expires_at, worker`.
fn lease_columns(task: &Task) -> (Option<&str>, Option<i64>, Option<&str>) {
    let lease = task.lease.as_ref();
    (lease.map(|l| l.token.as_str()), lease.map(|l| l.expires_at), lease.and_then(|l| l.worker.as_deref()))
}

fn execute(stmt: &mut CachedStatement<'_>, params: impl rusqlite::Params) -> Result<(), StoreError> {
    stmt.execute(params).db()?;
    Ok(())
}

pub const QUEUE_COLUMNS: &str = "name, max_attempts, lease_ms, backoff_initial_ms, backoff_max_ms, \
     backoff_multiplier, backoff_jitter, concurrency, paused, retention_ms, dedup_window_ms";

pub fn queue_from_row(row: &Row<'_>) -> rusqlite::Result<(String, QueueSettings)> {
    Ok((
        row.get(0)?,
        QueueSettings {
            max_attempts: row.get(1)?,
            lease_ms: row.get(2)?,
            backoff: Backoff {
                initial_ms: row.get(3)?,
                max_ms: row.get(4)?,
                multiplier: row.get(5)?,
                jitter: row.get(6)?,
            },
            concurrency: row.get(7)?,
            paused: row.get(8)?,
            retention_ms: row.get(9)?,
            dedup_window_ms: row.get(10)?,
        },
    ))
}

/// Creates or replaces the settings of a queue; `id` is its number, kept from
/// its creation on.
///
/// # Errors
/// [`StoreError::Unavailable`].
pub fn save_queue(
    conn: &Connection,
    name: &str,
    id: i64,
    s: &QueueSettings,
    now: i64,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "INSERT INTO queues ({QUEUE_COLUMNS}, created_at, updated_at, id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13) \
             ON CONFLICT (name) DO UPDATE SET max_attempts = ?2, lease_ms = ?3, backoff_initial_ms = ?4, \
             backoff_max_ms = ?5, backoff_multiplier = ?6, backoff_jitter = ?7, concurrency = ?8, \
             paused = ?9, retention_ms = ?10, dedup_window_ms = ?11, updated_at = ?12"
        ))
        .db()?;
    stmt.execute(params![
        name,
        s.max_attempts,
        s.lease_ms,
        s.backoff.initial_ms,
        s.backoff.max_ms,
        s.backoff.multiplier,
        s.backoff.jitter,
        s.concurrency,
        s.paused,
        s.retention_ms,
        s.dedup_window_ms,
        now,
        id,
    ])
    .db()?;
    Ok(())
}
