//! The store's directory: one store at a time in it, and no other user reading
//! it.
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
//!
//! Tasks hold whatever producers put in them, so the store's files are for its
//! own user only, whatever the umask: the directory is made `0700` and every
//! file of the store (the database, its `-wal`, `-shm` and `-journal`, the lock
//! file) `0600`. SQLite gives the files it makes beside the database the
//! database's own mode, so making the database `0600` before SQLite opens it is
//! what covers them. **Invariant:** a directory or file of the store that others
//! may read or enter is tightened at open, and the log says so; the exception
//! is a directory with the sticky bit (such as `/tmp`), which is shared on
//! purpose and left alone.

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
            let full = crate::sync::out_of_space(&error);
            let error = Box::new(LockFileError { path: path.clone(), error });
            if full { StoreError::StorageFull(error) } else { StoreError::Unavailable(error) }
        };
        let mut options = OpenOptions::new();
        // Not truncated at open: the holder's pid is in it until the lock is ours.
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
        let mut file = options.open(&path).map_err(unavailable)?;
        #[cfg(unix)]
        make_private(&path, true);
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

/// The mode of the store's directory: its user's only.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// The mode of every file of the store.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// Makes the directory of `database` (and its parents) if it is missing, with
/// mode `0700` whatever the umask, and tightens an existing one that others may
/// read or enter.
///
/// # Errors
/// [`StoreError::Unavailable`] when the directory cannot be made.
pub(crate) fn prepare_dir(database: &Path) -> Result<(), StoreError> {
    let unavailable = crate::sync::io_error;
    if let Some(dir) = database.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
        let mut made = builder.create(dir);
        if let (Err(error), Some(parent)) = (&made, dir.parent())
            && error.kind() == std::io::ErrorKind::NotFound
        {
            // The parents, with the usual mode: only the data directory is private.
            std::fs::create_dir_all(parent).map_err(unavailable)?;
            made = builder.create(dir);
        }
        match made {
            Ok(()) => {
                // The umask may have taken bits from the mode asked for.
                #[cfg(unix)]
                set_mode(dir, DIR_MODE).map_err(unavailable)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {
                #[cfg(unix)]
                tighten_dir(dir);
            }
            Err(error) => return Err(unavailable(error)),
        }
    }
    Ok(())
}

/// Makes the database file, `0600` whatever the umask, if it is missing, and
/// tightens the database's files that exist. Only under the lock: the files
/// are this store's.
///
/// # Errors
/// [`StoreError::Unavailable`] when the database file cannot be made.
pub(crate) fn prepare_files(database: &Path) -> Result<(), StoreError> {
    let unavailable = crate::sync::io_error;
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    let fresh = match options.open(database) {
        Ok(_) => true,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(error) => return Err(unavailable(error)),
    };
    for suffix in ["", "-wal", "-shm", "-journal", "-reserve"] {
        let mut path = database.as_os_str().to_owned();
        path.push(suffix);
        #[cfg(unix)]
        make_private(Path::new(&path), fresh && suffix.is_empty());
    }
    Ok(())
}

/// Gives a file of the store mode `0600`: whatever its mode when `exact` (a
/// file just made, whose mode the umask may have cut, or the lock file), else
/// when other users may read or change it. A file this user may not change (not its owner) is left as it is,
/// with a warning; one that is missing, or not a regular file, too (SQLite
/// says what is wrong with it).
#[cfg(unix)]
fn make_private(path: &Path, exact: bool) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_file() => metadata.permissions().mode() & 0o7777,
        _ => return,
    };
    if mode == FILE_MODE || (mode & 0o077 == 0 && !exact) {
        return;
    }
    let shown = format!("{mode:04o}");
    match set_mode(path, FILE_MODE) {
        Ok(()) if mode & 0o077 != 0 => tracing::warn!(
            file = %path.display(),
            from = %shown,
            "a file of the store was open to other users; its mode is now 0600"
        ),
        Ok(()) => {}
        Err(error) => {
            let error = &error as &dyn std::error::Error;
            tracing::warn!(
                file = %path.display(),
                mode = %shown,
                error,
                "a file of the store is open to other users and its mode cannot be changed"
            );
        }
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Takes the group's and others' bits off an existing data directory, unless it
/// is a shared one (sticky bit). A directory this user may not change (not its
/// owner) is left as it is, with a warning: the files in it are `0600` anyway.
#[cfg(unix)]
fn tighten_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(metadata) = std::fs::metadata(dir) else { return };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return;
    }
    let shown = format!("{mode:04o}");
    if mode & 0o1000 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = %shown,
            "the data directory is a shared one (sticky bit); its mode is left as it is, the store's files are 0600"
        );
        return;
    }
    match set_mode(dir, DIR_MODE) {
        Ok(()) => tracing::warn!(
            dir = %dir.display(),
            from = %shown,
            "the data directory was open to other users; its mode is now 0700"
        ),
        Err(error) => {
            let error = &error as &dyn std::error::Error;
            tracing::warn!(
                dir = %dir.display(),
                mode = %shown,
                error,
                "the data directory is open to other users and its mode cannot be changed; the store's files are 0600"
            );
        }
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

/// Room SQLite needs past the WAL index to open the store and make its first
/// commits (a timer tick, the first writes) before the checkpointer can copy
/// the WAL back: a few hundred pages, rounded up generously.
const OPEN_MARGIN_BYTES: u64 = 4 << 20;

/// The store could not be opened for want of space: how much the disk of its
/// directory has free, and about how much it needs.
#[derive(Debug)]
pub struct NoRoomToOpen {
    dir: PathBuf,
    free: Option<u64>,
    needed: u64,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl NoRoomToOpen {
    pub(crate) fn new(database: &Path, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        let dir = database.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());
        Self { free: free_bytes(&dir), needed: open_needs(wal_bytes), dir, source }
    }
}

/// The free space to open a store whose WAL is `wal_bytes` long: its WAL index
/// (`-shm`, 32 KiB for each 4,096 frames of the WAL, at least one such block)
/// and [`OPEN_MARGIN_BYTES`] for the first commits.
fn open_needs(wal_bytes: u64) -> u64 {
    let frames = wal_bytes / (4096 + 24);
    frames.div_ceil(4096).max(1) * (32 << 10) + OPEN_MARGIN_BYTES
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl std::fmt::Display for NoRoomToOpen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no space left on the disk of {} to open the store", self.dir.display())?;
        if let Some(free) = self.free {
            write!(f, " ({} free)", mib(free))?;
        }
        write!(f, ": free at least {} there and start again", mib(self.needed))
    }
}

impl std::error::Error for NoRoomToOpen {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The bytes an unprivileged user may still write on the file system of `dir`.
#[cfg(not(unix))]
pub(crate) fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// The bytes an unprivileged user may still write on the file system of `dir`.
#[cfg(unix)]
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` is written by the call
    // before it is read, only when the call succeeds.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    #[allow(clippy::unnecessary_cast, reason = "the field types differ between platforms")]
    let free = (stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64);
    Some(free)
}
