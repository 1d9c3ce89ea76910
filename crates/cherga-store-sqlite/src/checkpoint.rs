//! Checkpoints beside the writer, on a thread and a connection of their own.
//!
//! At a checkpoint SQLite copies the pages in the WAL back into the database file
//! and fsyncs it. Left to itself (auto-checkpoint), the connection that commits
//! does it inside the commit, and every request in flight waited for it: a few
//! milliseconds about twice a second under load, which is what set the p99 of the
//! steady-state benchmark (`docs/storage.md`). Here the writer's connection never
//! checkpoints on its own; a hook tells the writer how many pages its WAL holds
//! after each commit, and the writer asks a checkpointer thread, which has a
//! connection of its own, for a `PASSIVE` checkpoint when the WAL has grown. WAL
//! mode lets that run beside the writer's transactions.
//!
//! A passive checkpoint copies the frames committed when it began, and the WAL
//! starts again from its beginning only at a transaction that finds every frame
//! copied. Under writes that never pause that does not happen by itself, so past
//! [`WAL_HARD_PAGES`] the writer runs a passive checkpoint itself, once its batch
//! is with the syncer: it copies only what the checkpointer has not, and the next
//! transaction starts the WAL again. Only one connection can checkpoint at a
//! time (a second one's passive checkpoint returns busy and copies nothing), so
//! the writer's waits for the checkpointer's to finish. Before, it was skipped
//! then, the one way found for what a test once saw while many others ran beside
//! it: the WAL grown past its working size.
//!
//! SQLite fsyncs the database file only at a checkpoint that copies every frame,
//! so under steady writes the checkpointer's copies stayed in the kernel's cache
//! and the writer's own checkpoint paid for flushing all of them: 13–18 ms of
//! `fsync` on the writer thread, six times in a drain of 300,000 tasks, every
//! request in flight waiting (`perf trace`, `docs/storage.md`). So the
//! checkpointer also fdatasyncs the database file after each of its checkpoints,
//! and what is left for the writer's is the little copied since.
//!
//! Durability is SQLite's own: a checkpoint never removes a frame that is not in
//! the synced database file, whichever connection runs it. The checkpointer's
//! extra fdatasync only moves some of that flushing earlier.

use crate::Options;
use cherga_store::StoreError;
use rusqlite::Connection;
use rusqlite::hooks::Wal;
use std::cell::Cell;
use std::fs::File;
use std::os::raw::c_int;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

/// WAL pages (4 KiB) past which the writer asks for a checkpoint: SQLite's own
/// auto-checkpoint size.
const WAL_KICK_PAGES: i32 = 1000;
/// WAL pages past which the writer checkpoints itself, so that the WAL restarts.
const WAL_HARD_PAGES: i32 = 8000;
/// The WAL's working size, in pages, which the syncer prepares it to (`sync.rs`):
/// the hard limit and one ask's worth past it for the batch that crosses it.
pub(crate) const WAL_PREPARED_PAGES: u64 = (WAL_HARD_PAGES + WAL_KICK_PAGES) as u64;

thread_local! {
    /// The pages in the WAL after the last commit on this thread's connection, or
    /// -1 once read. Whichever thread holds the writer lock commits, so each reads
    /// only the commit it made.
    static WAL_PAGES: Cell<i32> = const { Cell::new(-1) };
}

fn note_wal_pages(_wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// Turns off `conn`'s automatic checkpoints and has its commits report the WAL's
/// size to [`take_wal_pages`], on the thread that committed.
pub fn watch(conn: &Connection) {
    conn.wal_hook(Some(note_wal_pages));
}

/// The pages in the WAL after this thread's last commit, if it wrote any since
/// the last call (a commit that writes nothing does not call the hook).
fn take_wal_pages() -> Option<i32> {
    let pages = WAL_PAGES.with(|p| p.replace(-1));
    (pages >= 0).then_some(pages)
}

/// Runs a passive checkpoint on `conn`; `true` when another connection's
/// checkpoint kept it from copying anything.
///
/// # Errors
/// Any SQLite error.
fn passive(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get::<_, i64>(0).map(|busy| busy != 0))
}

/// The checkpointer thread and the way to ask it for a checkpoint.
pub struct Checkpointer {
    asks: Option<mpsc::SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The WAL's size when a checkpoint was last asked for.
    asked_at: i32,
    /// Held by whichever connection is checkpointing.
    copying: Arc<Mutex<()>>,
}

impl Checkpointer {
    /// Opens a connection of its own to `options.path` and starts the thread.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the connection or the thread cannot be made.
    pub fn start(options: &Options) -> Result<Self, StoreError> {
        let unavailable = |e: rusqlite::Error| StoreError::Unavailable(Box::new(e));
        let conn = Connection::open(&options.path).map_err(unavailable)?;
        // The checkpoint fsyncs the WAL before copying it and the database after.
        conn.pragma_update(None, "synchronous", if options.durable { "NORMAL" } else { "OFF" })
            .map_err(unavailable)?;
        // One ask waiting is enough: a checkpoint copies whatever is there by then.
        let (asks, asked) = mpsc::sync_channel::<()>(1);
        let copying = Arc::new(Mutex::new(()));
        let copying_here = Arc::clone(&copying);
        // A descriptor of the database file, only to fdatasync what was copied.
        let db = if options.durable {
            Some(File::open(&options.path).map_err(|e| StoreError::Unavailable(Box::new(e)))?)
        } else {
            None
        };
        let thread = std::thread::Builder::new()
            .name("cherga-sqlite-checkpointer".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    let copied = {
                        let _copying = copying_here.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        passive(&conn)
                    };
                    if let Err(error) = copied {
                        tracing::warn!(%error, "checkpoint failed; the WAL keeps the pages until the next one");
                    } else if let Some(db) = &db
                        && let Err(error) = db.sync_data()
                    {
                        // Only an early flush failed; the checkpoint that lets the
                        // WAL restart syncs the file itself and fails on its own.
                        tracing::warn!(%error, "fdatasync of the database after a checkpoint failed");
                    }
                }
            })
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self { asks: Some(asks), thread: Some(thread), asked_at: 0, copying })
    }

    /// Called by the writer after each commit on its connection `conn` (watched
    /// with [`watch`]), once the batch is with the syncer: asks the thread for a
    /// checkpoint each time the WAL has grown by [`WAL_KICK_PAGES`] since the last
    /// ask, and past [`WAL_HARD_PAGES`] checkpoints on `conn` itself, after the
    /// thread's checkpoint if one is running.
    pub fn after_commit(&mut self, conn: &Connection) {
        let Some(pages) = take_wal_pages() else { return };
        if pages < self.asked_at {
            // The WAL started again from its beginning.
            self.asked_at = 0;
        }
        if pages >= WAL_HARD_PAGES {
            let _copying = self.copying.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match passive(conn) {
                Ok(false) => {}
                Ok(true) => tracing::warn!(
                    "checkpoint found another one running; the WAL keeps growing until the next"
                ),
                Err(error) => {
                    tracing::warn!(%error, "checkpoint failed; the WAL keeps the pages until the next one")
                }
            }
        } else if pages >= self.asked_at + WAL_KICK_PAGES {
            // One ask waiting is enough; a full channel means one is.
            if let Some(asks) = &self.asks {
                let _ = asks.try_send(());
            }
            self.asked_at = pages;
        }
    }

    /// Stops the thread after the checkpoint it is running, if any.
    pub fn finish(&mut self) {
        self.asks.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
