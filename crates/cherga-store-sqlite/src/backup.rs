//! Online backup and restore of the embedded store.
//!
//! A backup is one SQLite snapshot of the database, written with `VACUUM INTO`
//! by a connection of its own beside a serving store: WAL mode gives that reader
//! one consistent view (every transaction committed before its read began,
//! nothing after) while the writer goes on. Every write a caller was told of was
//! committed before it was told, so a backup begun after an answer holds that
//! write. What the store keeps in memory and not yet in its rows is in its
//! journal table, in the same snapshot, and is replayed when the copy is opened.
//!
//! A restore copies a backup into a data directory that holds no store, syncs
//! it, and opens it once as a store (migrating it, rebuilding the index) before
//! saying it is done, so a backup that cannot be opened is found then.

use crate::{Options, SqliteStore};
use cherga_store::Store as _;
use cherga_store::StoreError;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(error))
}

fn refused(message: String) -> StoreError {
    StoreError::Unavailable(message.into())
}

/// Writes a consistent copy of the store's database `database` (its
/// `cherga.db`; the store may be serving) to `dest`, a file that must not exist.
///
/// # Errors
/// [`StoreError::Unavailable`] when `dest` exists, `database` is not there, or
/// SQLite fails (the error says why; a partial `dest` is removed).
pub fn backup(database: &Path, dest: &Path) -> Result<(), StoreError> {
    if dest.exists() {
        return Err(refused(format!("{} exists; a backup is written to a new file", dest.display())));
    }
    if !database.is_file() {
        return Err(refused(format!("no store at {}", database.display())));
    }
    let dest_text =
        dest.to_str().ok_or_else(|| refused(format!("{} is not a UTF-8 path", dest.display())))?;
    // Read-write (without create), as a reader of a WAL database needs its
    // shared-memory file; this connection writes nothing to the database.
    let conn = Connection::open_with_flags(
        database,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(unavailable)?;
    if let Err(error) = conn.execute("VACUUM INTO ?1", [dest_text]) {
        let _ = std::fs::remove_file(dest);
        return Err(unavailable(error));
    }
    drop(conn);
    std::fs::File::open(dest).and_then(|file| file.sync_all()).map_err(unavailable)?;
    Ok(())
}

/// Puts the backup `source` in `data_dir` as its store (`cherga.db`), then
/// opens and closes it once as a store. `data_dir` is made if missing and
/// must hold no store.
///
/// # Errors
/// [`StoreError::Unavailable`] when `data_dir` holds a store, a file cannot
/// be copied, or the copy does not open as a store (then it is removed).
pub async fn restore(source: &Path, data_dir: &Path) -> Result<(), StoreError> {
    let options = Options::in_dir(data_dir);
    if options.path.exists() {
        return Err(refused(format!(
            "{} holds a store already; restore into an empty data directory",
            data_dir.display()
        )));
    }
    if !source.is_file() {
        return Err(refused(format!("no backup at {}", source.display())));
    }
    crate::dir::prepare_dir(&options.path)?;
    let partial = data_dir.join("cherga.db.restoring");
    let copied = std::fs::copy(source, &partial)
        .and_then(|_| std::fs::File::open(&partial)?.sync_all())
        .and_then(|()| std::fs::rename(&partial, &options.path))
        .and_then(|()| std::fs::File::open(data_dir)?.sync_all());
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&partial);
        return Err(unavailable(error));
    }
    match SqliteStore::open(options.clone()) {
        Ok(store) => {
            store.close().await;
            Ok(())
        }
        Err(error) => {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = options.path.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
            Err(error)
        }
    }
}
