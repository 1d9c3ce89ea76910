//! The syncer: makes committed batches durable and only then answers their callers.
//!
//! The writer commits a batch (its WAL frames are written, not yet synced) and hands
//! the batch's answers here. This thread takes every group of answers waiting,
//! fdatasyncs the WAL once, and sends them. An fdatasync covers every frame written
//! before it began, so each answer waits for exactly one fsync that started after
//! its commit — and one fsync serves every batch committed meanwhile.
//!
//! When jobs rarely reach the writer while an fsync is under way (one caller at
//! a time, or a quiet server), the writer syncs its batch itself
//! ([`Syncer::after_commit`]): no next batch is there to overlap with the fsync,
//! and the hand-over to this thread (a wake-up and a switch of threads on the way
//! to every answer) only adds to each caller's wait. Under concurrent callers a
//! job arrives during most fsyncs, and committing its batch meanwhile is worth
//! more than the hand-over costs, so the syncer takes over ([`Pace`]).
//!
//! If fdatasync fails, what is on disk is unknown (the kernel may have dropped the
//! dirty pages). The process aborts rather than answer, on either thread; at
//! restart SQLite recovers from what did reach the disk, and no caller was told a
//! lie.
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
use crate::stats::WriterStats;
use crate::{Options, Reply};
use cherga_store::StoreError;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// The WAL, shared with the thread (`None` when not durable).
    wal: Option<Arc<File>>,
    /// Groups handed to the thread and not yet answered.
    in_flight: Arc<AtomicUsize>,
    /// Where each fdatasync's duration is recorded.
    stats: Arc<WriterStats>,
}

impl Syncer {
    /// Starts the syncer for the WAL of `options.path`. With `durable: false` it
    /// answers without syncing.
    pub fn start(options: &Options, stats: Arc<WriterStats>) -> Result<Self, StoreError> {
        let wal = if options.durable {
            let mut path = options.path.clone().into_os_string();
            path.push("-wal");
            // The connection opened in WAL mode has created the file; opening it
            // here is only to have a descriptor to fdatasync. (Were it made here,
            // it would be private like every file of the store: `dir.rs`.)
            let mut wal_options = OpenOptions::new();
            wal_options.read(true).write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut wal_options, 0o600);
            let file = wal_options.open(&path).map_err(io_error)?;
            prepare(&file, WAL_PREPARED_BYTES).map_err(io_error)?;
            Some(Arc::new(file))
        } else {
            None
        };
        let (sender, receiver) = mpsc::channel::<Vec<Reply>>();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (wal, in_flight, stats) = (wal.clone(), in_flight.clone(), stats.clone());
            std::thread::Builder::new()
                .name("cherga-sqlite-syncer".into())
                .spawn(move || run(wal.as_deref(), receiver, &in_flight, &stats))
                .map_err(|e| StoreError::Unavailable(Box::new(e)))?
        };
        Ok(Self { groups: Some(sender), thread: Some(thread), wal, in_flight, stats })
    }

    /// Answers `replies` with success once their committed batch is on disk.
    /// When jobs rarely arrive during an fsync (`pace`), none waits for the
    /// writer now (`more_waiting` false) and nothing handed to the syncer is
    /// still unanswered, the caller's thread syncs and answers them at once;
    /// otherwise the syncer does, while the caller goes on with the next batch.
    /// Either way the fsync begins after the batch's commit returned. Returns
    /// whether the caller's thread synced.
    pub fn after_commit(&self, replies: Vec<Reply>, more_waiting: bool, pace: &Pace) -> bool {
        if !more_waiting && pace.quiet() && !self.busy() {
            sync_and_answer(self.wal.as_deref(), replies, &self.stats);
            return true;
        }
        if let Some(groups) = &self.groups {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            // The syncer only stops after `finish`, so the send cannot fail.
            let _ = groups.send(replies);
        }
        false
    }

    /// Whether the syncer holds answers it has not sent: its fsync is under way.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Syncs and answers everything handed over, then stops the thread.
    pub fn finish(&mut self) {
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
///
/// On a disk without room for them (`ENOSPC`, `EDQUOT`) the zeros are given back
/// (the file is cut to its old end) and the store starts all the same: commits
/// then append to the WAL, each fdatasync also making its new size durable,
/// which is slower but as safe. So a start needs only the room SQLite needs,
/// not `size` bytes more.
fn prepare(wal: &File, size: u64) -> std::io::Result<()> {
    let start = wal.metadata()?.len();
    if start >= size {
        return Ok(());
    }
    let written = (|| {
        let zeros = vec![0u8; 1 << 20];
        let mut at = start;
        while at < size {
            let n = (size - at).min(zeros.len() as u64);
            wal.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        wal.sync_all()
    })();
    match written {
        Err(error) if out_of_space(&error) => {
            wal.set_len(start)?;
            tracing::warn!(
                %error,
                needed_mb = (size - start).div_ceil(1 << 20),
                "no room to prepare the WAL; starting without (commits append to it, slower)"
            );
            Ok(())
        }
        other => other,
    }
}

/// [`StoreError::StorageFull`] when the file system is full, else
/// [`StoreError::Unavailable`].
pub(crate) fn io_error(error: std::io::Error) -> StoreError {
    if out_of_space(&error) {
        StoreError::StorageFull(Box::new(error))
    } else {
        StoreError::Unavailable(Box::new(error))
    }
}

/// The file system is full, or the user's quota is.
pub(crate) fn out_of_space(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

fn run(wal: Option<&File>, groups: mpsc::Receiver<Vec<Reply>>, in_flight: &AtomicUsize, stats: &WriterStats) {
    while let Ok(first) = groups.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = groups.try_recv() {
            waiting.push(more);
        }
        let taken = waiting.len();
        sync_and_answer(wal, waiting.into_iter().flatten(), stats);
        in_flight.fetch_sub(taken, Ordering::AcqRel);
    }
}

/// fdatasyncs the WAL (when durable), then answers `replies` with success.
fn sync_and_answer(wal: Option<&File>, replies: impl IntoIterator<Item = Reply>, stats: &WriterStats) {
    if let Some(wal) = wal {
        let started = std::time::Instant::now();
        if let Err(error) = wal.sync_data() {
            tracing::error!(%error, "fdatasync of the WAL failed; aborting so that no unsynced write is acknowledged");
            std::process::abort();
        }
        stats.fsync_us.record(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    for reply in replies {
        reply(Ok(()));
    }
}

/// How often a batch begins while the previous one's fsync is still under way
/// (a *collision*): a moving average over batches, each new one weighing an
/// eighth. The writer syncs on its own thread only while collisions are rare
/// (the average under an eighth: never at one collision in four batches, all
/// but each colliding batch at one in sixteen); then a hand-over to the syncer
/// would seldom let another batch overlap the fsync.
#[derive(Debug, Default)]
pub struct Pace {
    /// The average, in units of 1/2^16.
    collisions: u32,
}

impl Pace {
    const ONE: u32 = 1 << 16;

    /// Notes that a batch began, `collided` if the fsync of the batch before it
    /// had not ended.
    pub fn batch(&mut self, collided: bool) {
        let sample = if collided { Self::ONE } else { 0 };
        self.collisions = self.collisions - self.collisions / 8 + sample / 8;
    }

    /// Whether collisions have been rare.
    pub fn quiet(&self) -> bool {
        self.collisions < Self::ONE / 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pace_turns_busy_after_a_run_of_collisions_and_quiet_after_a_run_without() {
        let mut pace = Pace::default();
        assert!(pace.quiet(), "a new writer has seen no collision");
        pace.batch(true);
        assert!(!pace.quiet(), "one collision in a quiet start weighs an eighth");
        let mut quiet_after = 0;
        while !pace.quiet() {
            pace.batch(false);
            quiet_after += 1;
        }
        assert_eq!(quiet_after, 1, "the first batch without a collision tips it back");
        // Under load nearly every batch collides; a single quiet batch between
        // collisions does not make the writer sync on its own thread.
        for _ in 0..32 {
            pace.batch(true);
        }
        pace.batch(false);
        assert!(!pace.quiet());
        // One collision in four batches keeps it busy throughout; with one in
        // sixteen it is quiet in all but the colliding batches.
        for (every, quiet_at_least, quiet_at_most) in [(4, 0, 0), (16, 15, 15)] {
            let mut pace = Pace::default();
            for i in 0..400 {
                pace.batch(i % every == 0);
            }
            let quiet = (400..400 + 4 * every)
                .filter(|i| {
                    pace.batch(i % every == 0);
                    pace.quiet()
                })
                .count();
            assert!(
                (4 * quiet_at_least..=4 * quiet_at_most).contains(&quiet),
                "one collision in {every}: quiet in {quiet} of {} batches",
                4 * every
            );
        }
    }

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
