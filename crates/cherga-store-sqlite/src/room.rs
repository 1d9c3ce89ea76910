//! Room on a full disk: a reserve file, given back when the disk fills, so that
//! the writes that finish tasks (leases, acks, nacks) go on while enqueues are
//! refused.
//!
//! Every write needs room in the WAL, and a checkpoint room in the database
//! file. When a batch fails for want of space ([`StoreError::StorageFull`]) the
//! store deletes its reserve (`cherga.db-reserve`, [`RESERVE_BYTES`]) and from
//! then on refuses enqueues at once, without a transaction, while every other
//! write runs as usual in the room the reserve gave back. Each refused enqueue
//! looks at the free space (`statvfs`, cheap): once the disk has the reserve and
//! [`RESUME_MARGIN_BYTES`] free again the reserve is written anew and enqueues
//! are taken, without a restart. Without a reserve (no room for it at open),
//! only the failed batches refuse, as they would anyway.

use crate::dir;
use crate::sync::out_of_space;
use cherga_store::StoreError;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The reserve's size: room for tens of thousands of acks' WAL frames and the
/// checkpoints that copy them back.
pub(crate) const RESERVE_BYTES: u64 = 8 << 20;
/// Free space past the reserve before enqueues are taken again.
pub(crate) const RESUME_MARGIN_BYTES: u64 = 8 << 20;

pub struct Room {
    reserve: PathBuf,
    dir: PathBuf,
    /// Set when a write failed for want of space: enqueues are refused.
    full: AtomicBool,
    /// Held while the reserve is written or deleted.
    changing: Mutex<()>,
}

impl Room {
    /// Makes the reserve beside `database` if it is missing or short. On a disk
    /// without room for it the store starts without one (and says so).
    pub fn open(database: &Path) -> Self {
        let mut reserve = database.as_os_str().to_owned();
        reserve.push("-reserve");
        let room = Self {
            reserve: PathBuf::from(reserve),
            dir: database.parent().unwrap_or(Path::new(".")).to_path_buf(),
            full: AtomicBool::new(false),
            changing: Mutex::new(()),
        };
        if let Err(error) = room.write_reserve() {
            let error = &error as &dyn std::error::Error;
            tracing::warn!(
                error,
                reserve_mb = RESERVE_BYTES >> 20,
                "no room for the store's reserve; on a full disk acks will be refused with enqueues"
            );
        }
        room
    }

    /// Writes the reserve out to [`RESERVE_BYTES`]; deletes it again when the
    /// disk has no room for it.
    fn write_reserve(&self) -> std::io::Result<()> {
        let have = std::fs::metadata(&self.reserve).map_or(0, |m| m.len());
        if have >= RESERVE_BYTES {
            return Ok(());
        }
        let written = (|| {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&self.reserve)?;
            // Zeros written, not a sparse length: the blocks must be taken now.
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            file.set_len(0)?;
            while at < RESERVE_BYTES {
                let n = (RESERVE_BYTES - at).min(zeros.len() as u64);
                file.write_all(&zeros[..n as usize])?;
                at += n;
            }
            // No fsync: the file system takes the blocks at the write (or
            // refuses it, ENOSPC); what is in them never matters.
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&self.reserve);
        }
        written
    }

    /// A write failed for want of space: gives the reserve back and refuses
    /// enqueues from now on.
    pub fn filled(&self) {
        let _changing = self.changing.lock().expect("room lock");
        if self.full.swap(true, Ordering::AcqRel) {
            return;
        }
        let released = std::fs::remove_file(&self.reserve).is_ok();
        tracing::warn!(
            released_reserve_mb = if released { RESERVE_BYTES >> 20 } else { 0 },
            free_mb_needed = (RESERVE_BYTES + RESUME_MARGIN_BYTES) >> 20,
            "the store's disk is full: enqueues are refused until space is freed; leases and acks go on \
             in the room of the reserve"
        );
    }

    /// `Err` ([`StoreError::StorageFull`]) while the disk is full: before a
    /// refusal it looks whether space was freed, and if so takes enqueues again.
    pub fn admit_enqueue(&self) -> Result<(), StoreError> {
        if !self.full.load(Ordering::Acquire) {
            return Ok(());
        }
        let needed = RESERVE_BYTES + RESUME_MARGIN_BYTES;
        let free = dir::free_bytes(&self.dir);
        if free.is_some_and(|free| free >= needed) {
            let _changing = self.changing.lock().expect("room lock");
            if !self.full.load(Ordering::Acquire) {
                return Ok(());
            }
            match self.write_reserve() {
                Ok(()) => {
                    self.full.store(false, Ordering::Release);
                    tracing::info!("space was freed on the store's disk: enqueues are taken again");
                    return Ok(());
                }
                Err(error) if out_of_space(&error) => {}
                Err(error) => {
                    // Not a matter of space: take enqueues; a failing write says what is wrong.
                    let error = &error as &dyn std::error::Error;
                    tracing::warn!(error, "could not write the store's reserve");
                    self.full.store(false, Ordering::Release);
                    return Ok(());
                }
            }
        }
        Err(StoreError::StorageFull(
            format!(
                "the disk of {} is full ({} MiB free); enqueues are taken again once {} MiB are free",
                self.dir.display(),
                free.unwrap_or(0) >> 20,
                needed >> 20
            )
            .into(),
        ))
    }
}
