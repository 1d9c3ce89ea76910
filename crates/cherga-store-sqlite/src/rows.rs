//! Reading and writing task and queue rows.
//!
//! A task row holds the whole task in `body`, in the journal's encoding, and
//! beside it copies of the fields SQL searches or the start-up scan reads (`qid`,
//! `priority`, `run_at`, `grp`, `state`, `lease_expires_at`, `finished_at`,
//! `idem_key`). Both are written together, only here: a row with ten columns
//! costs a quarter less to insert than one with a column per field, and a read
//! decodes one blob instead of twenty columns (`docs/storage.md`).

use crate::journal;
use cherga_core::{Backoff, QueueSettings, Task};
use cherga_store::StoreError;
use rusqlite::types::Type;
use rusqlite::{CachedStatement, Connection, Row, params};

/// Turns a SQLite failure into [`StoreError::Unavailable`], or
/// [`StoreError::StorageFull`] when the disk is full.
pub trait Db<T> {
    /// # Errors
    /// [`StoreError::Unavailable`] or [`StoreError::StorageFull`] carrying the
    /// SQLite error.
    fn db(self) -> Result<T, StoreError>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(store_error)
    }
}

/// [`StoreError::StorageFull`] when `error` is a full disk, else
/// [`StoreError::Unavailable`].
pub fn store_error(error: rusqlite::Error) -> StoreError {
    if out_of_space(&error) {
        StoreError::StorageFull(Box::new(error))
    } else {
        StoreError::Unavailable(Box::new(error))
    }
}

/// Whether SQLite failed for want of space: `SQLITE_FULL` (a write that got
/// `ENOSPC` or `EDQUOT`), or a WAL index (`-shm`) that could not grow, which on
/// a tmpfs or a full disk is the same cause.
pub fn out_of_space(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.code == rusqlite::ErrorCode::DiskFull
                || failure.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
    )
}

/// The column a task is read from: its `body`, the whole task in the journal's
/// encoding (`journal::encode_task`); the other columns are copies of some of its
/// fields for SQL to search. A macro so that statements can be built with
/// `concat!` at compile time.
macro_rules! task_columns {
    () => {
        "body"
    };
}
pub(crate) use task_columns;

/// Reads a row selected with [`task_columns`].
pub fn task_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Task, StoreError>> {
    let body = row
        .get_ref(0)?
        .as_blob()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, Type::Blob, Box::new(e)))?;
    Ok(journal::decode_task(body).map_err(|e| StoreError::Corrupt(format!("task row: {e}"))))
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

/// Inserts new task rows, prepared once and then run for each row of a loop:
/// fetching a statement from the connection's cache hashes its whole text, on the
/// way out and back in, which was a tenth of an insert (callgrind,
/// `docs/storage.md`). The body is encoded into a buffer kept across rows.
pub struct InsertTask<'c> {
    stmt: CachedStatement<'c>,
    body: Vec<u8>,
}

impl<'c> InsertTask<'c> {
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub fn prepare(conn: &'c Connection) -> Result<Self, StoreError> {
        let stmt = conn
            .prepare_cached(
                "INSERT INTO tasks (seq, qid, priority, run_at, grp, state, lease_expires_at, finished_at, \
                 idem_key, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .db()?;
        Ok(Self { stmt, body: Vec::with_capacity(512) })
    }

    /// Inserts `task`, whose queue has the number `qid`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub fn run(&mut self, task: &Task, qid: i64) -> Result<(), StoreError> {
        self.body.clear();
        journal::encode_task(&mut self.body, task);
        self.stmt
            .execute(params![
                task.id.seq() as i64,
                qid,
                task.priority,
                task.run_at,
                task.group,
                task.state.code(),
                task.lease.as_ref().map(|l| l.expires_at),
                task.finished_at,
                task.idempotency_key,
                &self.body[..],
            ])
            .db()?;
        Ok(())
    }
}

/// Writes a task row again after a transition: the body and the copies of the
/// fields a transition may change (`priority`, `grp`, `idem_key` and the queue
/// never change).
pub struct SaveTask<'c> {
    stmt: CachedStatement<'c>,
    body: Vec<u8>,
}

impl<'c> SaveTask<'c> {
    /// # Errors
    /// [`StoreError::Unavailable`].
    pub fn prepare(conn: &'c Connection) -> Result<Self, StoreError> {
        let stmt = conn
            .prepare_cached(
                "UPDATE tasks SET run_at = ?2, state = ?3, lease_expires_at = ?4, finished_at = ?5, body = ?6 \
                 WHERE seq = ?1",
            )
            .db()?;
        Ok(Self { stmt, body: Vec::with_capacity(512) })
    }

    /// # Errors
    /// [`StoreError::Unavailable`].
    pub fn run(&mut self, task: &Task) -> Result<(), StoreError> {
        self.body.clear();
        journal::encode_task(&mut self.body, task);
        self.stmt
            .execute(params![
                task.id.seq() as i64,
                task.run_at,
                task.state.code(),
                task.lease.as_ref().map(|l| l.expires_at),
                task.finished_at,
                &self.body[..],
            ])
            .db()?;
        Ok(())
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
