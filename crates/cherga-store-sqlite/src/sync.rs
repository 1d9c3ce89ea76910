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

use crate::{Options, Reply};
use cherga_store::StoreError;
use std::fs::{File, OpenOptions};
use std::sync::mpsc;
use std::thread::JoinHandle;

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
