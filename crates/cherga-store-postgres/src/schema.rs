//! The schema and its migrations. `docs/storage.md` explains the choices.
//!
//! Migrations run at start-up under a session-level advisory lock, so when several
//! nodes start at once one migrates and the others wait, then find the work done.
//! Each version is applied in its own transaction together with its row in
//! `cherga_schema`.

use crate::pool::Conn;

/// The newest schema version this build knows.
pub const VERSION: i32 = 5;

/// Every migration in version order: index 0 makes version 1.
pub const MIGRATIONS: [&str; 5] = [V1, V2, V3, V4, V5];

const V1: &str = "
CREATE TABLE queues (
    name               text PRIMARY KEY,
    max_attempts       bigint NOT NULL,
    lease_ms           bigint NOT NULL,
    backoff_initial_ms bigint NOT NULL,
    backoff_max_ms     bigint NOT NULL,
    backoff_multiplier double precision NOT NULL,
    backoff_jitter     double precision NOT NULL,
    concurrency        bigint,
    paused             boolean NOT NULL,
    retention_ms       bigint NOT NULL,
    dedup_window_ms    bigint NOT NULL,
    created_at         bigint NOT NULL,
    updated_at         bigint NOT NULL
);

-- Enqueue order. The task id carries it in its low 62 bits, so a lookup by id
-- is a primary-key lookup (the whole id is compared after).
CREATE SEQUENCE task_seq AS bigint;

-- state: 0 scheduled, 1 ready, 2 running, 3 succeeded, 4 dead, 5 cancelled.
-- head: the task is the oldest unfinished task of its group. Kept up to date
-- under the group's advisory lock by every change to the group's unfinished set,
-- so that only group heads are in the claimable index.
CREATE TABLE tasks (
    seq              bigint PRIMARY KEY,
    id               bytea NOT NULL,
    queue            text NOT NULL,
    kind             text NOT NULL,
    payload          text NOT NULL,
    priority         integer NOT NULL,
    run_at           bigint NOT NULL,
    idem_key         text,
    grp              text,
    max_attempts     bigint NOT NULL,
    attempts         bigint NOT NULL,
    state            smallint NOT NULL,
    result           text,
    last_error       text,
    lease_token      text,
    lease_expires_at bigint,
    worker           text,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    finished_at      bigint,
    head             boolean NOT NULL DEFAULT false
);
-- Listing a queue in enqueue order.
CREATE INDEX tasks_by_queue ON tasks (queue, seq);
-- Listing by state, and the counts per state (index-only).
CREATE INDEX tasks_by_state ON tasks (queue, state, seq);
-- What a claim may lease, in lease order.
CREATE INDEX tasks_claimable ON tasks (queue, priority DESC, run_at, seq)
    WHERE state = 1 AND (grp IS NULL OR head);
-- Running tasks per queue (the concurrency limit) and per group.
CREATE INDEX tasks_running ON tasks (queue, grp) WHERE state = 2;
-- Timers.
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE state = 2;
CREATE INDEX tasks_scheduled ON tasks (run_at) WHERE state = 0;
-- The unfinished members of a group, oldest first: finding the next head.
CREATE INDEX tasks_group_unfinished ON tasks (queue, grp, seq)
    WHERE grp IS NOT NULL AND state IN (0, 1, 2);
-- Retention.
CREATE INDEX tasks_finished ON tasks (queue, finished_at) WHERE finished_at IS NOT NULL;

-- Idempotency keys live apart from tasks so that only keyed tasks pay for the
-- index; the primary key is what makes concurrent duplicates create one task.
CREATE TABLE idempotency_keys (
    queue       text NOT NULL,
    key         text NOT NULL,
    fingerprint bigint NOT NULL,
    task_seq    bigint NOT NULL,
    expires_at  bigint NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
";

/// Version 2: revoked bearer tokens. Tokens themselves are never stored; only the
/// `jti` of a revoked one, until the token would have expired anyway.
const V2: &str = "
CREATE TABLE revoked_tokens (
    jti        text PRIMARY KEY,
    expires_at bigint NOT NULL,
    revoked_at bigint NOT NULL
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);
";

/// Version 3: each task's attempt history (`rows.rs`: a JSON array, one object
/// per attempt) and the start of its lease. Columns with a constant default are
/// added without rewriting the table. Tasks stored before have no history of
/// their earlier attempts; a lease of theirs started, as far as this build
/// knows, at the task's `updated_at`.
const V3: &str = "
ALTER TABLE tasks
    ADD COLUMN leased_at bigint,
    ADD COLUMN history   jsonb NOT NULL DEFAULT '[]';
";

/// Version 4: the event log (`events.rs`). One row per transaction that
/// changed tasks, keyed by the transaction's xid; `event_horizon` keeps the id
/// of the last event retention deleted.
const V4: &str = "
CREATE TABLE events (
    tx      bigint PRIMARY KEY DEFAULT (pg_current_xact_id()::text::bigint),
    at      bigint NOT NULL,
    n       integer NOT NULL,
    records bytea NOT NULL
);
CREATE INDEX events_at ON events (at);
CREATE TABLE event_horizon (
    id     boolean PRIMARY KEY DEFAULT true CHECK (id),
    purged bigint NOT NULL
);
";

/// Version 5: payload schemas (`cherga_store::schemas`), one row per version
/// of a queue's schemas; `schema` is NULL for a version that removed one.
const V5: &str = "
CREATE TABLE payload_schemas (
    queue      text NOT NULL,
    version    bigint NOT NULL,
    kind       text,
    schema     text,
    subject    text,
    created_at bigint NOT NULL,
    PRIMARY KEY (queue, version)
);
";

/// Brings the schema (in `schema`, created if missing, or the connection's
/// default) up to [`VERSION`].
///
/// # Errors
/// Any database error, or a schema written by a newer cherga.
pub async fn migrate(conn: &mut Conn, schema: Option<&str>, lock_key: &str) -> Result<(), MigrateError> {
    conn.query("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&lock_key]).await?;
    let outcome = migrate_locked(conn, schema).await;
    // Closing the connection would release the lock too; unlock to reuse it.
    let unlocked = conn.query("SELECT pg_advisory_unlock(hashtextextended($1, 0))", &[&lock_key]).await;
    outcome?;
    unlocked?;
    Ok(())
}

async fn migrate_locked(conn: &mut Conn, schema: Option<&str>) -> Result<(), MigrateError> {
    if let Some(schema) = schema {
        // The name was checked to be [a-z0-9_]: safe to splice.
        conn.batch(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
    }
    conn.batch(
        "CREATE TABLE IF NOT EXISTS cherga_schema (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 =
        conn.query("SELECT coalesce(max(version), 0) FROM cherga_schema", &[]).await?[0].get(0);
    if current > VERSION {
        return Err(MigrateError::Newer(current));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = index as i32 + 1;
        if version <= current {
            continue;
        }
        // One simple-protocol batch: a failed statement aborts the transaction,
        // and the connection is then dropped.
        conn.batch(&format!("BEGIN; {sql}; INSERT INTO cherga_schema (version) VALUES ({version}); COMMIT"))
            .await?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migration failed")]
    Db(#[from] tokio_postgres::Error),
    #[error("the database schema is version {0}, newer than this cherga ({VERSION}); upgrade cherga")]
    Newer(i32),
}
