//! The start-up scan of every task row, for the index.
//!
//! Reading and decoding the rows (SQLite, and copying the file's pages out of
//! the kernel's cache) was about half of a restart with 10 M pending tasks and
//! adding them to the index most of the rest (`perf`, `docs/storage.md`). So
//! when the store is a file, two threads of their own read the rows, each on a
//! connection of its own and each half of the sequence numbers, and hand them
//! over in chunks while the writer thread adds those that arrived to the index.
//! Chunks arrive in any order, the rows of one chunk in the order of their
//! sequence numbers; the index's loader takes them in any order. Nothing writes
//! meanwhile: the scan runs on the writer thread's behalf, before it takes jobs
//! (or after a rollback, before the next one).

use crate::rows::Db;
use cherga_core::Millis;
use cherga_store::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::sync::{Arc, mpsc};

/// A task row as the scan reads it: the columns the index and the counts of
/// finished tasks need.
pub struct Scanned {
    pub seq: u64,
    pub qid: i64,
    /// The state's code (`TaskState::code`), checked by the caller.
    pub state: u8,
    pub priority: i32,
    pub run_at: Millis,
    pub group: Option<Arc<str>>,
    pub lease_expires_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// Rows per chunk, and chunks read ahead of the one being added.
const CHUNK_ROWS: usize = 4096;
const CHUNKS_AHEAD: usize = 4;
/// Below this span of sequence numbers the rows are read on the calling
/// thread: starting threads and connections would cost more than they save.
const SPLIT_ABOVE: i64 = 100_000;

/// Calls `each` with every task row of `conn`'s database, in chunks (see the
/// module's documentation); `each` returning an error stops the scan with it.
/// The rows are read on threads of their own when the database is a file, else
/// on this one.
///
/// # Errors
/// Any SQLite error, or the first error of `each`.
pub fn tasks(
    conn: &Connection,
    mut each: impl FnMut(Vec<Scanned>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let (first, last): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(seq), max(seq) FROM tasks", [], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
    let (Some(first), Some(last)) = (first, last) else { return Ok(()) };
    let path = conn.path().filter(|p| !p.is_empty()).map(str::to_owned);
    let Some(path) = path.filter(|_| last - first >= SPLIT_ABOVE) else {
        return read(conn, (first, last), &mut |chunk| each(chunk).map_err(Stop::Caller))
            .map_err(Stop::into_error);
    };
    let middle = first + (last - first) / 2;
    std::thread::scope(|scope| {
        let (chunks, arrived) = mpsc::sync_channel::<Result<Vec<Scanned>, StoreError>>(CHUNKS_AHEAD);
        let mut readers = Vec::new();
        for range in [(first, middle), (middle + 1, last)] {
            let (chunks, path) = (chunks.clone(), path.clone());
            let reader = std::thread::Builder::new()
                .name("cherga-scan".into())
                .spawn_scoped(scope, move || {
                    let outcome = Connection::open_with_flags(
                        &path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .db()
                    .and_then(|own| {
                        // A closed receiver means the caller stopped: so does the scan.
                        read(&own, range, &mut |chunk| chunks.send(Ok(chunk)).map_err(|_| Stop::Receiver))
                            .or_else(|stop| match stop {
                                Stop::Receiver => Ok(()),
                                other => Err(other.into_error()),
                            })
                    });
                    if let Err(error) = outcome {
                        let _ = chunks.send(Err(error));
                    }
                })
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            readers.push(reader);
        }
        // The readers hold the only senders left: the loop ends when both are done.
        drop(chunks);
        let mut outcome = Ok(());
        for chunk in arrived.iter() {
            if let Err(error) = chunk.and_then(&mut each) {
                outcome = Err(error);
                break;
            }
        }
        // Dropping the receiver ends a scan stopped early.
        drop(arrived);
        for reader in readers {
            reader.join().map_err(|_| StoreError::Corrupt("the scan of the task rows panicked".into()))?;
        }
        outcome
    })
}

/// Why [`read`] stopped early.
enum Stop {
    Sqlite(StoreError),
    Caller(StoreError),
    /// The chunks' receiver is gone.
    Receiver,
}

impl Stop {
    fn into_error(self) -> StoreError {
        match self {
            Stop::Sqlite(e) | Stop::Caller(e) => e,
            Stop::Receiver => StoreError::Closed,
        }
    }
}

/// Reads the rows whose sequence numbers are in `first..=last`, in order.
fn read(
    conn: &Connection,
    (first, last): (i64, i64),
    each: &mut dyn FnMut(Vec<Scanned>) -> Result<(), Stop>,
) -> Result<(), Stop> {
    let sqlite = |e: rusqlite::Error| Stop::Sqlite(StoreError::Unavailable(Box::new(e)));
    let mut stmt = conn
        .prepare(
            "SELECT seq, qid, priority, run_at, grp, state, lease_expires_at, finished_at FROM tasks \
             WHERE seq BETWEEN ?1 AND ?2",
        )
        .map_err(sqlite)?;
    let mut rows = stmt.query([first, last]).map_err(sqlite)?;
    let mut chunk = Vec::with_capacity(CHUNK_ROWS);
    while let Some(row) = rows.next().map_err(sqlite)? {
        let seq: i64 = row.get(0).map_err(sqlite)?;
        let group: Option<String> = row.get(4).map_err(sqlite)?;
        chunk.push(Scanned {
            seq: seq as u64,
            qid: row.get(1).map_err(sqlite)?,
            priority: row.get(2).map_err(sqlite)?,
            run_at: row.get(3).map_err(sqlite)?,
            group: group.map(|g| Arc::from(g.as_str())),
            state: row.get(5).map_err(sqlite)?,
            lease_expires_at: row.get(6).map_err(sqlite)?,
            finished_at: row.get(7).map_err(sqlite)?,
        });
        if chunk.len() == CHUNK_ROWS {
            each(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_ROWS)))?;
        }
    }
    if !chunk.is_empty() {
        each(chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    use cherga_core::TaskState;

    /// A database file with task rows at `seqs` (state: ready, but every
    /// tenth finished), and its connection.
    fn database(dir: &std::path::Path, seqs: impl Iterator<Item = i64>) -> Connection {
        let mut conn = Connection::open(dir.join("db")).expect("open");
        schema::configure(&conn, false).expect("pragmas");
        schema::migrate(&mut conn).expect("schema");
        let tx = conn.transaction().expect("transaction");
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO tasks (seq, qid, priority, run_at, grp, state, lease_expires_at, finished_at, body) \
                     VALUES (?1, 1, ?1 % 7, ?1 * 2, CASE WHEN ?1 % 3 = 0 THEN 'g' END, ?2, NULL, ?3, x'00')",
                )
                .expect("prepare");
            for seq in seqs {
                let finished = (seq % 10 == 0).then_some(seq);
                insert.execute(rusqlite::params![seq, state_of(seq), finished]).expect("insert");
            }
        }
        tx.commit().expect("commit");
        conn
    }

    /// The state code the rows of [`database`] have.
    fn state_of(seq: i64) -> u8 {
        let state = if seq % 10 == 0 { TaskState::Succeeded } else { TaskState::Ready };
        state.code()
    }

    fn all(conn: &Connection) -> Vec<(u64, i32, Millis, bool, u8, Option<Millis>)> {
        let mut seen = Vec::new();
        tasks(conn, |chunk| {
            seen.extend(
                chunk
                    .into_iter()
                    .map(|r| (r.seq, r.priority, r.run_at, r.group.is_some(), r.state, r.finished_at)),
            );
            Ok(())
        })
        .expect("scan");
        seen.sort_unstable();
        seen
    }

    fn expected(seqs: impl Iterator<Item = i64>) -> Vec<(u64, i32, Millis, bool, u8, Option<Millis>)> {
        seqs.map(|seq| {
            (
                seq as u64,
                (seq % 7) as i32,
                seq * 2,
                seq % 3 == 0,
                state_of(seq),
                (seq % 10 == 0).then_some(seq),
            )
        })
        .collect()
    }

    #[test]
    fn every_row_once_whether_read_here_or_on_two_threads() {
        // A span below the split: read on this thread.
        let dir = tempfile::tempdir().expect("dir");
        let seqs = || 1..=3000;
        assert_eq!(all(&database(dir.path(), seqs())), expected(seqs()));

        // A span above it, with rows on both sides of the middle and chunks
        // cut short at the end of each half.
        let dir = tempfile::tempdir().expect("dir");
        let seqs = || (1..=9000).chain(SPLIT_ABOVE * 3..SPLIT_ABOVE * 3 + 5003);
        assert_eq!(all(&database(dir.path(), seqs())), expected(seqs()));

        // No rows at all.
        let dir = tempfile::tempdir().expect("dir");
        assert!(all(&database(dir.path(), std::iter::empty())).is_empty());
    }

    #[test]
    fn an_error_of_the_caller_stops_the_scan_and_is_returned() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = database(dir.path(), (1..=20_000).chain(SPLIT_ABOVE * 2..SPLIT_ABOVE * 2 + 20_000));
        let mut calls = 0;
        let outcome = tasks(&conn, |_| {
            calls += 1;
            Err(StoreError::Corrupt("stop here".into()))
        });
        assert!(matches!(outcome, Err(StoreError::Corrupt(m)) if m == "stop here"));
        assert_eq!(calls, 1, "no chunk is handed over after the error");
    }
}
