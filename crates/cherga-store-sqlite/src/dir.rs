//! The store's directory: one store at a time in it.
//!
//! Two stores on one database would each number tasks from the same counters,
//! keep their own index and journal, and overwrite each other's rows: a task
//! one of them acknowledged could be gone after a restart. So
//! [`SqliteStore::open`](crate::SqliteStore::open) first takes an exclusive,
//! non-blocking `flock` on the lock file beside the database (`cherga.db.lock`
//! for `cherga.db`) and writes its process id into it.
//!
//! **Invariant:** the lock is held from before the database is opened until the
//! store is closed (or dropped) and its writer thread has ended; the kernel
//! drops it when the process dies, `kill -9` included, so a crash never leaves a
//! directory locked. A second open, from another process or from this one (a
//! lock belongs to an open file, not to a process), is refused with
//! [`DataDirInUse`], naming the holder's process id.

use cherga_store::StoreError;
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The lock on a database, held while this value lives.
#[derive(Debug)]
pub(crate) struct DirLock {
    /// The open lock file: closing it releases the lock.
    _file: File,
}

impl DirLock {
    /// Takes the lock of the database `database`, or says who holds it.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] with a [`DataDirInUse`] source when another
    /// store holds it, or with the I/O error when the lock file cannot be opened
    /// or locked.
    pub(crate) fn acquire(database: &Path) -> Result<Self, StoreError> {
        let path = lock_path(database);
        let unavailable = |error: std::io::Error| {
            StoreError::Unavailable(Box::new(LockFileError { path: path.clone(), error }))
        };
        let mut options = OpenOptions::new();
        // Not truncated at open: the holder's pid is in it until the lock is ours.
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(unavailable)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).ok().and_then(|text| text.trim().parse().ok());
                let dir = match database.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                    _ => PathBuf::from("."),
                };
                return Err(StoreError::Unavailable(Box::new(DataDirInUse { dir, lock: path, holder })));
            }
            Err(TryLockError::Error(error)) => return Err(unavailable(error)),
        }
        file.set_len(0).map_err(unavailable)?;
        writeln!(file, "{}", std::process::id()).map_err(unavailable)?;
        Ok(Self { _file: file })
    }
}

/// `<database>.lock`.
fn lock_path(database: &Path) -> PathBuf {
    let mut name = database.file_name().map(ToOwned::to_owned).unwrap_or_default();
    name.push(".lock");
    database.with_file_name(name)
}

/// Another store holds the database's lock: the source of the
/// [`StoreError::Unavailable`] that [`SqliteStore::open`](crate::SqliteStore::open)
/// returns then.
#[derive(Debug)]
pub struct DataDirInUse {
    /// The directory of the database.
    pub dir: PathBuf,
    /// The lock file.
    pub lock: PathBuf,
    /// The process id the holder wrote into the lock file; `None` when it has not
    /// written it yet.
    pub holder: Option<u32>,
}

impl fmt::Display for DataDirInUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        match self.holder {
            Some(pid) if pid == std::process::id() => {
                write!(f, "the data directory {dir} is in use by another store of this process (pid {pid})")
            }
            Some(pid) => write!(
                f,
                "the data directory {dir} is in use by another cherga (pid {pid}); stop it, or give \
                 each cherga a data directory of its own"
            ),
            None => write!(
                f,
                "the data directory {dir} is in use by another cherga (its lock file {} names no \
                 process yet); stop it, or give each cherga a data directory of its own",
                self.lock.display()
            ),
        }
    }
}

impl std::error::Error for DataDirInUse {}

/// The lock file could not be opened, locked or written.
#[derive(Debug)]
struct LockFileError {
    path: PathBuf,
    error: std::io::Error,
}

impl fmt::Display for LockFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot lock {}", self.path.display())
    }
}

impl std::error::Error for LockFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
