//! The syncer: makes committed batches durable and only then answers their callers.
//!
//! The writer commits a batch (its WAL frames are written, not yet synced) and hands
//! the batch's answers here. This thread takes every group of answers waiting,
//! fdatasyncs the WAL once, and sends them. An fdatasync covers every frame written
//! before it began, so each answer waits for exactly one fsync that started after
//! its commit — and one fsync serves every batch committed meanwhile.
//!
//! If fdatasync fails, what is on disk is unknown (the kernel may have dropped the
//! dirty pages). The process aborts rather than answer; at restart SQLite recovers
//! from what did reach the disk, and no caller was told a lie.
//!
//! The WAL is written in place. An fdatasync after an append must also make the
//! file's new size durable (a journal commit on ext4 or XFS); one after writes
//! over blocks that are already allocated and written need not. SQLite restarts
//! the WAL from its beginning after a checkpoint that copied every frame and never
//! shrinks it (no `journal_size_limit`), so commits append only until the WAL
//! first reaches its working size, which a fresh start is below. So before the
//! writer starts, the syncer writes zeros out to that size ([`WAL_PREPARED_BYTES`])
//! and syncs them once; from then on commits overwrite. SQLite ignores whatever
//! lies past the WAL's last valid frame (recovery stops at the first frame whose
//! salt and checksum do not match, and zeros do not), as it ignores the frames an
//! earlier cycle left there. `docs/storage.md` has the measurements.

use crate::checkpoint::WAL_PREPARED_PAGES;
use crate::{Options, Reply};
use cherga_store::StoreError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// SQLite's WAL header, and the header before each page in a frame.
const WAL_HEADER_BYTES: u64 = 32;
const FRAME_HEADER_BYTES: u64 = 24;
/// SQLite's default page size, which the schema keeps. Were it another, only the
/// share of commits that append would change.
const PAGE_BYTES: u64 = 4096;
/// The size the WAL is prepared to at start.
pub(crate) const WAL_PREPARED_BYTES: u64 =
    WAL_HEADER_BYTES + WAL_PREPARED_PAGES * (FRAME_HEADER_BYTES + PAGE_BYTES);

pub struct Syncer {
    groups: Option<mpsc::Sender<Vec<Reply>>>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the syncer for the WAL of `options.path`. With `durable: false` it
    /// answers without syncing.
    pub fn start(options: &Options) -> Result<Self, StoreError> {
        let wal = if options.durable {
            let mut path = options.path.clone().into_os_string();
            path.push("-wal");
            // The connection opened in WAL mode has created the file; opening it
            // here is only to have a descriptor to fdatasync.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            prepare(&file, WAL_PREPARED_BYTES).map_err(|e| StoreError::Unavailable(Box::new(e)))?;
            Some(file)
        } else {
            None
        };
        let (sender, receiver) = mpsc::channel::<Vec<Reply>>();
        let thread = std::thread::Builder::new()
            .name("cherga-sqlite-syncer".into())
            .spawn(move || run(wal, receiver))
            .map_err(|e| StoreError::Unavailable(Box::new(e)))?;
        Ok(Self { groups: Some(sender), thread: Some(thread) })
    }

    /// Answers `replies` with success once their committed batch is on disk.
    pub fn after_sync(&self, replies: Vec<Reply>) {
        if let Some(groups) = &self.groups {
            // The syncer only stops after `finish`, so the send cannot fail.
            let _ = groups.send(replies);
        }
    }

    /// Syncs and answers everything handed over, then stops the thread.
    pub fn finish(mut self) {
        self.groups.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes zeros to `wal` from its end out to `size` bytes and syncs them, so that
/// commits up to there overwrite allocated blocks. Only called before the writer
/// starts: nothing else writes to the file meanwhile, and nothing before its old
/// end is touched.
fn prepare(wal: &File, size: u64) -> std::io::Result<()> {
    let mut at = wal.metadata()?.len();
    if at >= size {
        return Ok(());
    }
    let zeros = vec![0u8; 1 << 20];
    while at < size {
        let n = (size - at).min(zeros.len() as u64);
        wal.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    wal.sync_all()
}

fn run(wal: Option<File>, groups: mpsc::Receiver<Vec<Reply>>) {
    while let Ok(first) = groups.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = groups.try_recv() {
            waiting.push(more);
        }
        if let Some(wal) = &wal
            && let Err(error) = wal.sync_data()
        {
            tracing::error!(%error, "fdatasync of the WAL failed; aborting so that no unsynced write is acknowledged");
            std::process::abort();
        }
        for reply in waiting.into_iter().flatten() {
            reply(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn prepare_writes_zeros_past_the_end_and_keeps_what_is_there() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("wal");
        std::fs::File::create(&path).and_then(|mut f| f.write_all(b"frames")).expect("write");
        let file = OpenOptions::new().read(true).write(true).open(&path).expect("open");
        let size = (3 << 20) + 5;
        prepare(&file, size).expect("prepare");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(&bytes[..6], b"frames");
        assert!(bytes[6..].iter().all(|&b| b == 0), "only zeros past the old end");

        // A file already as long is left as it is.
        std::fs::write(&path, vec![7u8; 100]).expect("write");
        prepare(&file, 10).expect("prepare");
        assert_eq!(std::fs::read(&path).expect("read"), vec![7u8; 100]);
    }
}
