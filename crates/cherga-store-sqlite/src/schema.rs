//! The schema and the pragmas of the embedded store. `docs/storage.md` explains
//! the choices.

use rusqlite::Connection;

/// The version this build writes; `PRAGMA user_version` holds the version on disk.
pub const VERSION: i64 = 3;

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

/// Version 3: the journal of changes not yet in their task rows (`journal.rs`),
/// one row per writer batch that has such changes, deleted from the oldest on
/// once no task depends on it; and a number per queue, so that the task indexes
/// compare integers instead of queue names (a third of an insert's work went to
/// comparing names while walking the two index B-trees; `docs/storage.md`).
const V3: &str = "
CREATE TABLE journal (
    txn     INTEGER PRIMARY KEY,
    records BLOB NOT NULL
);
ALTER TABLE queues ADD COLUMN id INTEGER;
UPDATE queues SET id = (SELECT count(*) FROM queues AS q WHERE q.name <= queues.name);
CREATE UNIQUE INDEX queues_by_id ON queues (id);
ALTER TABLE tasks ADD COLUMN qid INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET qid = coalesce((SELECT id FROM queues WHERE queues.name = tasks.queue), 0);
DROP INDEX tasks_by_queue;
DROP INDEX tasks_finished;
CREATE INDEX tasks_by_queue ON tasks (qid, seq);
CREATE INDEX tasks_finished ON tasks (qid, finished_at) WHERE finished_at IS NOT NULL;
";

/// Every migration in version order: index 0 makes version 1.
const MIGRATIONS: [&str; 3] = [V1, V2, V3];

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
    let version: i64 =
        conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(|e| e.to_string())?;
    if version > VERSION {
        return Err(format!("database schema version {version} is newer than this cherga ({VERSION})"));
    }
    // Each version in its own transaction together with its user_version, so a
    // crash between two leaves the database at one version or the next.
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let target = index as i64 + 1;
        if version >= target {
            continue;
        }
        let tx = conn.transaction().map_err(|e| e.to_string())?;
        tx.execute_batch(sql).map_err(|e| e.to_string())?;
        tx.pragma_update(None, "user_version", target).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made by versions 1 and 2, with tasks in two queues, migrates to
    /// version 3: every task gets its queue's number and the indexes are on it.
    #[test]
    fn version_2_database_migrates_to_3() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..2] {
            conn.execute_batch(sql).expect("old migration");
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
        for (seq, queue) in [(1, "zeta"), (2, "alpha"), (3, "zeta")] {
            conn.execute(
                "INSERT INTO tasks (seq, id, queue, kind, payload, priority, run_at, max_attempts, attempts, \
                 state, created_at, updated_at) VALUES (?1, x'00', ?2, 'k', '{}', 0, 0, 25, 0, 1, 0, 0)",
                rusqlite::params![seq, queue],
            )
            .expect("task");
        }
        migrate(&mut conn).expect("migrate");
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).expect("version");
        assert_eq!(version, VERSION);
        let ids: Vec<(String, i64)> = conn
            .prepare("SELECT name, id FROM queues ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("queue ids");
        assert_eq!(ids, [("alpha".to_owned(), 1), ("zeta".to_owned(), 2)]);
        let qids: Vec<(i64, i64)> = conn
            .prepare("SELECT seq, qid FROM tasks ORDER BY seq")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .expect("task qids");
        assert_eq!(qids, [(1, 2), (2, 1), (3, 2)]);
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT seq FROM tasks WHERE qid = 2 AND seq > 0 ORDER BY seq",
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(plan.contains("tasks_by_queue"), "listing uses the index: {plan}");
        conn.execute("INSERT INTO journal (txn, records) VALUES (1, x'01')", []).expect("the journal exists");
    }
}
