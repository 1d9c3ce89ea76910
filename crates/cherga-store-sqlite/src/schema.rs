//! The schema and the pragmas of the embedded store. `docs/storage.md` explains
//! the choices.

use cherga_core::{Lease, LeaseToken, Task, TaskId, TaskState};
use rusqlite::{Connection, OptionalExtension};

/// The version this build writes; `PRAGMA user_version` holds the version on disk.
pub const VERSION: i64 = 9;

const V1: &str = "
CREATE TABLE queues (
    name               TEXT PRIMARY KEY,
    max_attempts       INTEGER NOT NULL,
    lease_ms           INTEGER NOT NULL,
    backoff_initial_ms INTEGER NOT NULL,
    backoff_max_ms     INTEGER NOT NULL,
    backoff_multiplier REAL NOT NULL,
    backoff_jitter     REAL NOT NULL,
    concurrency        INTEGER,
    paused             INTEGER NOT NULL,
    retention_ms       INTEGER NOT NULL,
    dedup_window_ms    INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
) WITHOUT ROWID;

-- seq is the enqueue order and is carried inside the task id, so a lookup by id
-- is a lookup by rowid. AUTOINCREMENT keeps purged sequence numbers from returning.
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               BLOB NOT NULL,
    queue            TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    idem_key         TEXT,
    grp              TEXT,
    max_attempts     INTEGER NOT NULL,
    attempts         INTEGER NOT NULL,
    state            INTEGER NOT NULL,
    result           TEXT,
    last_error       TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    worker           TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
);
-- Listing a queue in enqueue order.
CREATE INDEX tasks_by_queue ON tasks (queue, seq);
-- Retention: only finished tasks are in this index.
CREATE INDEX tasks_finished ON tasks (queue, finished_at) WHERE finished_at IS NOT NULL;

-- Idempotency keys live apart from tasks so that only keyed tasks pay for the index.
CREATE TABLE idempotency_keys (
    queue       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint INTEGER NOT NULL,
    task_seq    INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
";

/// Version 2: revoked bearer tokens. Tokens themselves are never stored; only the
/// `jti` of a revoked one, until the token would have expired anyway.
const V2: &str = "
CREATE TABLE revoked_tokens (
    jti        TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
";

/// Version 3, in SQL: the journal of changes not yet in their task rows
/// (`journal.rs`), one row per writer batch that has such changes, deleted from
/// the oldest on once no task depends on it; a number per queue, so that the task
/// indexes compare integers instead of queue names (a third of an insert's work
/// went to comparing names while walking the two index B-trees); and the task
/// table in its new layout (`rows.rs`: the task in one `body` blob, beside copies
/// of the fields SQL needs), filled from the old one by [`v3_tasks`].
const V3: &str = "
CREATE TABLE journal (
    txn     INTEGER PRIMARY KEY,
    records BLOB NOT NULL
);
ALTER TABLE queues ADD COLUMN id INTEGER;
UPDATE queues SET id = (SELECT count(*) FROM queues AS q WHERE q.name <= queues.name);
CREATE UNIQUE INDEX queues_by_id ON queues (id);
ALTER TABLE tasks RENAME TO tasks_v2;
DROP INDEX tasks_by_queue;
DROP INDEX tasks_finished;
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    qid              INTEGER NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    grp              TEXT,
    state            INTEGER NOT NULL,
    lease_expires_at INTEGER,
    finished_at      INTEGER,
    idem_key         TEXT,
    body             BLOB NOT NULL
);
";

/// Version 4: no index of finished tasks. The writer lists them in memory for
/// retention instead (`engine/memory.rs`, `Memory::finished`), from the start-up scan on:
/// the index cost an eighth of the writer's work per task.
const V4: &str = "DROP INDEX tasks_finished;";

/// Version 5: the task table without `AUTOINCREMENT`. With it, every row insert
/// read and rewrote the table's row in `sqlite_sequence`: 9 % of the writer's work
/// per task (`docs/storage.md`). Sequence numbers are given by the writer
/// (`engine.rs`), never by SQLite; what `AUTOINCREMENT` guarded, that a purged
/// number is not given again, is kept by the `task_seq` counter instead, which a
/// purge raises to the highest number given so far. [`v5_tasks`] moves the rows.
const V5: &str = "
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (name, value) SELECT 'task_seq', seq FROM sqlite_sequence WHERE name = 'tasks';
DROP INDEX tasks_by_queue;
CREATE TABLE tasks_v5 (
    seq              INTEGER PRIMARY KEY,
    qid              INTEGER NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    grp              TEXT,
    state            INTEGER NOT NULL,
    lease_expires_at INTEGER,
    finished_at      INTEGER,
    idem_key         TEXT,
    body             BLOB NOT NULL
);
";

/// The rest of version 5: the rows moved as they are, in order, a slice at a
/// time, each slice deleted from the old table once copied, so that the pages it
/// frees hold the next slices and the file does not grow to twice its size (a
/// single copy left 3.2 GB free in a 6.5 GB file of 10 M tasks); then the
/// listing index on the new table.
fn v5_tasks(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let mut copy = tx.prepare(
        "INSERT INTO tasks_v5 (seq, qid, priority, run_at, grp, state, lease_expires_at, finished_at, idem_key, body) \
         SELECT seq, qid, priority, run_at, grp, state, lease_expires_at, finished_at, idem_key, body \
         FROM tasks ORDER BY seq LIMIT 10000",
    )?;
    let mut delete = tx.prepare("DELETE FROM tasks WHERE seq <= (SELECT max(seq) FROM tasks_v5)")?;
    while copy.execute([])? > 0 {
        delete.execute([])?;
    }
    drop((copy, delete));
    tx.execute_batch(
        "DROP TABLE tasks;
         ALTER TABLE tasks_v5 RENAME TO tasks;
         CREATE INDEX tasks_by_queue ON tasks (qid, seq);",
    )
}

/// Version 6: no index for listing a queue. Each queue numbers its tasks in a
/// range of its own (`seqs.rs`), so its rows are a range of the rowid; the
/// index `tasks(qid, seq)` was 13 % of the writer's work per task
/// (`docs/storage.md`). The rows numbered before keep their numbers (they are
/// in the tasks' ids): when there are any, [`v6_tasks`] keeps them listed by a
/// partial index that new rows, numbered above them, never enter.
const V6: &str = "DROP INDEX tasks_by_queue;";

fn v6_tasks(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let any: bool = tx.query_row("SELECT EXISTS (SELECT 1 FROM tasks)", [], |r| r.get(0))?;
    if any {
        tx.execute_batch(&format!(
            concat!("CREATE INDEX {} ON tasks (qid, seq) WHERE seq < ", crate::seqs::first_sql!(), ";"),
            crate::seqs::LEGACY_INDEX
        ))?;
    }
    Ok(())
}

/// Version 7: task bodies and journal rows of format 2 (`journal.rs`), which
/// carry each task's attempt history and the start of its lease. No table
/// changes and no row is rewritten: rows and journal rows of format 1 are read
/// as they are, their tasks without a history of the attempts made before. The
/// version is raised so that an older build, which cannot read format 2,
/// refuses the database instead of calling its rows corrupt.
const V7: &str = "";

/// Version 8: the event log. One row per batch that changed tasks, written in
/// the batch's transaction: the number of its first event, how many it holds,
/// the time of the first, and the events as one record (`cherga_store::events`).
/// Rows are deleted by retention; the counter `events_purged` keeps the number
/// of the last event deleted, so numbers are never given twice.
const V8: &str = "
CREATE TABLE events (
    first   INTEGER PRIMARY KEY,
    n       INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    records BLOB NOT NULL
);
";

/// Version 9: payload schemas (`cherga_store::schemas`), one row per version
/// of a queue's schemas; `schema` is NULL for a version that removed one.
const V9: &str = "
CREATE TABLE payload_schemas (
    queue      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    kind       TEXT,
    schema     TEXT,
    subject    TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (queue, version)
) WITHOUT ROWID;
";

/// The counter that kept purged sequence numbers from being given again before
/// version 6, when every queue shared one counter; each queue has its own now
/// (`seqs::counter`), and the old numbers are below every queue's range.
#[cfg(test)]
const TASK_SEQ_COUNTER: &str = "task_seq";

/// The rest of version 3: every task row of version 2 moved into the new
/// `tasks`, then its indexes, and the table's highest sequence number ever given
/// (so purged numbers never return).
fn v3_tasks(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    // Renaming the table renamed its AUTOINCREMENT counter with it.
    let high: Option<i64> = tx
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'tasks_v2'", [], |r| r.get(0))
        .optional()?;
    {
        let mut qids = std::collections::HashMap::new();
        let mut stmt = tx.prepare("SELECT name, id FROM queues")?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (name, id) = row?;
            qids.insert(name, id);
        }
        let mut read = tx.prepare(
            "SELECT id, queue, kind, payload, priority, run_at, idem_key, grp, max_attempts, attempts, state, \
             result, last_error, lease_token, lease_expires_at, worker, created_at, updated_at, finished_at \
             FROM tasks_v2 ORDER BY seq",
        )?;
        let mut insert = crate::rows::InsertTask::prepare(tx).map_err(into_sqlite)?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let task = v2_task(row)?;
            let qid = qids.get(&task.queue).copied().unwrap_or(0);
            insert.run(&task, qid).map_err(into_sqlite)?;
        }
    }
    tx.execute_batch(
        "DROP TABLE tasks_v2;
         CREATE INDEX tasks_by_queue ON tasks (qid, seq);
         CREATE INDEX tasks_finished ON tasks (qid, finished_at) WHERE finished_at IS NOT NULL;",
    )?;
    if let Some(high) = high {
        tx.execute("DELETE FROM sqlite_sequence WHERE name = 'tasks'", [])?;
        tx.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('tasks', ?1)", [high])?;
    }
    Ok(())
}

fn into_sqlite(e: cherga_store::StoreError) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

/// A task row as version 2 stored it, one column per field.
fn v2_task(row: &rusqlite::Row<'_>) -> rusqlite::Result<Task> {
    let corrupt = |what: String| rusqlite::Error::ToSqlConversionFailure(what.into());
    let id: Vec<u8> = row.get(0)?;
    let id = <[u8; 16]>::try_from(id.as_slice()).map_err(|_| corrupt("task id is not 16 bytes".into()))?;
    let code: u8 = row.get(10)?;
    let state = TaskState::from_code(code).ok_or_else(|| corrupt(format!("unknown task state {code}")))?;
    let updated_at: i64 = row.get(17)?;
    let lease = row.get::<_, Option<String>>(13)?.map(|token| -> rusqlite::Result<Lease> {
        Ok(Lease {
            token: LeaseToken::from_string(token),
            expires_at: row.get::<_, Option<i64>>(14)?.unwrap_or(0),
            worker: row.get(15)?,
            // Not stored then: the task's last change is the closest known time.
            leased_at: updated_at,
        })
    });
    Ok(Task {
        id: TaskId::from_bytes(id),
        queue: row.get(1)?,
        kind: row.get(2)?,
        payload: row.get(3)?,
        priority: row.get(4)?,
        run_at: row.get(5)?,
        idempotency_key: row.get(6)?,
        group: row.get(7)?,
        max_attempts: row.get(8)?,
        attempts: row.get(9)?,
        state,
        result: row.get(11)?,
        last_error: row.get(12)?,
        lease: lease.transpose()?,
        history: cherga_core::History::default(),
        created_at: row.get(16)?,
        updated_at,
        finished_at: row.get(18)?,
    })
}

/// One version's migration: its SQL, then, for some, a step in Rust.
struct Migration {
    sql: &'static str,
    then: Option<fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>>,
}

/// Every migration in version order: index 0 makes version 1.
const MIGRATIONS: [Migration; 9] = [
    Migration { sql: V1, then: None },
    Migration { sql: V2, then: None },
    Migration { sql: V3, then: Some(v3_tasks) },
    Migration { sql: V4, then: None },
    Migration { sql: V5, then: Some(v5_tasks) },
    Migration { sql: V6, then: Some(v6_tasks) },
    Migration { sql: V7, then: None },
    Migration { sql: V8, then: None },
    Migration { sql: V9, then: None },
];

/// The page cache, in KiB.
const CACHE_KIB: i64 = 8 * 1024;

/// Sets the pragmas every connection needs. `durable` = fsync on every commit.
///
/// # Errors
/// Any SQLite error.
pub fn configure(conn: &Connection, durable: bool) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a commit writes its frames to the WAL without fsync, and
    // checkpoints fsync the WAL before copying it and the database after. The store
    // makes commits durable itself: the syncer thread fdatasyncs the WAL after each
    // commit and only then answers (see `sync.rs`). OFF (tests only) never syncs.
    conn.pragma_update(None, "synchronous", if durable { "NORMAL" } else { "OFF" })?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // A small page cache. SQLite scans its whole page-cache hash table at each
    // commit that followed a B-tree page split (the split briefly keys a page past
    // the end of the file), so a 64 MiB cache cost the writer about a tenth of its
    // time under drain load (perf, `docs/storage.md`). Other pages come from the
    // kernel's cache. No `mmap`: mapped pages count in the resident set, and the
    // start-up scan would map the whole file.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

/// Brings the schema up to [`VERSION`].
///
/// # Errors
/// Any SQLite error, or a database written by a newer cherga.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    migrate_to(conn, VERSION)
}

/// Brings the schema up to `last` (tests make databases of earlier versions).
pub(crate) fn migrate_to(conn: &mut Connection, last: i64) -> Result<(), String> {
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(|e| e.to_string())?;
    if version > VERSION {
        return Err(format!(
            "the store was written by a newer cherga (schema version {version}; this cherga reads up to \
             {VERSION}) and is left as it is: run that version or a later one, or restore a backup made \
             by this one"
        ));
    }
    // Each version in its own transaction together with its user_version, so a
    // crash between two leaves the database at one version or the next.
    for (index, migration) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if version >= target || target > last {
            continue;
        }
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(migration.sql).map_err(|e| e.to_string())?;
        if let Some(step) = migration.then {
            step(&tx).map_err(|e| format!("migrating to version {target}: {e}"))?;
        }
        tx.pragma_update(None, "user_version", target).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task as version 2 would have stored it.
    fn old_task(seq: u64, queue: &str, finished: bool) -> Task {
        Task {
            id: TaskId::new(1_700_000_000_000 + seq as i64, seq),
            queue: queue.into(),
            kind: "charge ✓".into(),
            payload: r#"{"n":1}"#.into(),
            priority: -2,
            run_at: 1_700_000_000_500,
            idempotency_key: Some(format!("key-{seq}")),
            group: seq.is_multiple_of(2).then(|| "g".to_owned()),
            max_attempts: 25,
            attempts: 1,
            state: if finished { TaskState::Succeeded } else { TaskState::Running },
            result: finished.then(|| r#"{"ok":true}"#.to_owned()),
            last_error: None,
            lease: Some(Lease {
                token: LeaseToken::new(1, seq),
                expires_at: 1_700_000_030_000,
                worker: Some("w".into()),
                leased_at: 1_700_000_001_000,
            }),
            history: cherga_core::History::default(),
            created_at: 1_700_000_000_000 + seq as i64,
            updated_at: 1_700_000_001_000,
            finished_at: finished.then_some(1_700_000_001_000),
        }
    }

    /// A database made by versions 1 and 2, with tasks in two queues, migrates to
    /// the current version: every task reads back as it was, each gets its queue's
    /// number, the index of finished tasks is gone (version 4), the table has no
    /// `AUTOINCREMENT` (version 5), purged sequence numbers stay used, and the
    /// rows numbered before version 6 are listed by an index of their own.
    #[test]
    fn version_2_database_migrates_to_current() {
        let mut conn = Connection::open_in_memory().expect("open");
        for migration in &MIGRATIONS[..2] {
            conn.execute_batch(migration.sql).expect("old migration");
        }
        conn.pragma_update(None, "user_version", 2).expect("version");
        for name in ["zeta", "alpha"] {
            conn.execute(
                "INSERT INTO queues (name, max_attempts, lease_ms, backoff_initial_ms, backoff_max_ms, \
                 backoff_multiplier, backoff_jitter, concurrency, paused, retention_ms, dedup_window_ms, \
                 created_at, updated_at) VALUES (?1, 25, 30000, 1000, 3600000, 2.0, 0.2, NULL, 0, 1, 1, 0, 0)",
                [name],
            )
            .expect("queue");
        }
        let tasks = [old_task(1, "zeta", true), old_task(2, "alpha", false), old_task(4, "zeta", false)];
        for task in &tasks {
            let lease = task.lease.as_ref().expect("leased");
            conn.execute(
                "INSERT INTO tasks (seq, id, queue, kind, payload, priority, run_at, idem_key, grp, max_attempts, \
                 attempts, state, result, last_error, lease_token, lease_expires_at, worker, created_at, updated_at, \
                 finished_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
                 ?18, ?19, ?20)",
                rusqlite::params![
                    task.id.seq() as i64, &task.id.as_bytes()[..], task.queue, task.kind, task.payload,
                    task.priority, task.run_at, task.idempotency_key, task.group, task.max_attempts,
                    task.attempts, task.state.code(), task.result, task.last_error, lease.token.as_str(),
                    lease.expires_at, lease.worker, task.created_at, task.updated_at, task.finished_at,
                ],
            )
            .expect("task");
        }
        // Task 5 was enqueued and purged: its number must not be given again.
        conn.execute("UPDATE sqlite_sequence SET seq = 5 WHERE name = 'tasks'", []).expect("sequence");
        migrate(&mut conn).expect("migrate");
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("version");
        assert_eq!(version, VERSION);
        let ids: Vec<(String, i64)> = conn
            .prepare("SELECT name, id FROM queues ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("queue ids");
        assert_eq!(ids, [("alpha".to_owned(), 1), ("zeta".to_owned(), 2)]);
        for task in &tasks {
            // Version 2 kept no history, nor the start of a lease: it is taken
            // to be the task's last change.
            assert_eq!(&crate::rows::load_seq(&conn, task.id.seq()).expect("migrated task"), task);
        }
        let copies: Vec<(i64, i64, u8, Option<i64>)> = conn
            .prepare("SELECT seq, qid, state, finished_at FROM tasks ORDER BY seq")
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect()
            })
            .expect("task columns");
        assert_eq!(copies, [(1, 2, 3, Some(1_700_000_001_000)), (2, 1, 2, None), (4, 2, 2, None)]);
        let high: i64 = conn
            .query_row("SELECT value FROM counters WHERE name = ?1", [TASK_SEQ_COUNTER], |r| r.get(0))
            .expect("high");
        assert_eq!(high, 5, "the highest number ever given, from AUTOINCREMENT's counter");
        let sql: String = conn
            .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'tasks'", [], |r| {
                r.get(0)
            })
            .expect("table");
        assert!(!sql.contains("AUTOINCREMENT"), "version 5 drops AUTOINCREMENT: {sql}");
        let counted: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_sequence WHERE name IN ('tasks', 'tasks_v5')", [], |r| {
                r.get(0)
            })
            .expect("sqlite_sequence");
        assert_eq!(counted, 0, "nothing is left in sqlite_sequence for the task table");
        let plan: String = conn
            .query_row(
                concat!(
                    "EXPLAIN QUERY PLAN SELECT seq FROM tasks WHERE qid = 2 AND seq > 0 AND seq < ",
                    crate::seqs::first_sql!(),
                    " ORDER BY seq"
                ),
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains(crate::seqs::LEGACY_INDEX), "listing the old rows uses their index: {plan}");
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' ORDER BY name",
            )
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .expect("indexes");
        assert_eq!(
            indexes,
            [crate::seqs::LEGACY_INDEX],
            "version 4 drops the index of finished tasks, version 6 the listing index but for the old rows"
        );
        conn.execute("INSERT INTO journal (txn, records) VALUES (1, x'01')", []).expect("the journal exists");
    }

    /// A new database has no index on the task table: each queue's rows are a
    /// range of the rowid, and listing one scans that range.
    #[test]
    fn new_database_lists_a_queue_by_its_rowid_range() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("migrate");
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks'",
                [],
                |r| r.get(0),
            )
            .expect("indexes");
        assert_eq!(indexes, 0);
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT seq FROM tasks WHERE seq > ?1 AND seq < ?2 ORDER BY seq",
                [1i64 << 40, 2 << 40],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("INTEGER PRIMARY KEY (rowid>? AND rowid<?)"), "a range of the rowid: {plan}");
    }
}
