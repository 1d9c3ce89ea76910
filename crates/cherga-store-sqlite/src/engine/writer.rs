//! The writer lock and batches: whoever holds the lock runs jobs as one
//! transaction, commits it, and has the answers sent after the sync; a batch
//! that fails is rolled back and memory rebuilt from disk.

use super::Engine;
use crate::checkpoint::Checkpointer;
use crate::rows::out_of_space;
use crate::stats::WriterStats;
use crate::sync::{Pace, Syncer};
use crate::{BatchFailure, Job, Reply};
use cherga_store::{Effects, StoreError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// Most jobs in one transaction: bounds the latency a single commit adds.
const MAX_BATCH: usize = 2048;

/// What the writer lock guards: the connection and the index ([`Engine`]), the
/// syncer, the checkpointer and the pace of batches. Whoever holds it is the
/// only user of the connection: the writer thread, which takes every job waiting
/// and runs them as one batch, or a caller that found the writer idle and runs
/// its own job as a batch of one, syncing and answering itself (no hand-over to
/// the writer thread and back).
///
/// Batches are group-committed: the syncer fdatasyncs the WAL for every batch
/// committed since its last sync and only then answers, while the next batch
/// runs. While batches rarely collide with the fsync before them ([`Pace`]), a
/// batch that nothing waits behind is synced and answered by whoever ran it.
pub struct Writer {
    engine: Engine,
    syncer: Syncer,
    checkpointer: Checkpointer,
    pace: Pace,
    /// Jobs were waiting when the last batch was answered: the next batch
    /// collides with it.
    collided: bool,
    /// Set by [`Writer::finish`]: no batch runs any more.
    closed: bool,
    /// Batch sizes and failures, for monitoring.
    stats: Arc<WriterStats>,
}

impl Writer {
    pub fn new(engine: Engine, syncer: Syncer, checkpointer: Checkpointer, stats: Arc<WriterStats>) -> Self {
        Self { engine, syncer, checkpointer, pace: Pace::default(), collided: false, closed: false, stats }
    }

    /// Whether a caller may run its job now instead of queueing it for the
    /// writer thread: nothing is being synced and batches have been quiet.
    /// (The caller also checks that no job waits.)
    pub fn idle(&self) -> bool {
        !self.closed && !self.collided && self.pace.quiet() && !self.syncer.busy()
    }

    /// Runs `batch`, commits it and has it answered; `queued` counts jobs sent to
    /// the writer thread and not yet taken. Only before [`Writer::finish`]: the
    /// writer thread finishes after its last batch, and callers run theirs only
    /// while [`Writer::idle`].
    pub fn run(&mut self, batch: Vec<Job>, queued: &AtomicUsize) {
        // A batch that starts while the last one is still being synced, or right
        // behind jobs that waited for it, is a collision.
        let collided = std::mem::take(&mut self.collided) || self.syncer.busy();
        self.pace.batch(collided);
        self.stats.batch_jobs.record(batch.len() as u64);
        let Self { engine, syncer, checkpointer, pace, stats, .. } = self;
        let committed = engine.run_batch(batch, |engine, replies| {
            syncer.after_commit(replies, queued.load(Ordering::Acquire) > 0, pace);
            checkpointer.after_commit(&engine.conn);
        });
        if !committed {
            stats.batch_failed();
        }
        self.collided = queued.load(Ordering::Acquire) > 0;
    }

    /// Answers what is in flight, settles the dirty tasks and checkpoints the WAL;
    /// later batches are refused.
    pub fn finish(&mut self) {
        self.closed = true;
        // Every answer is sent before the connection closes.
        self.syncer.finish();
        if let Err(e) = self.engine.mem.settle_all(&self.engine.conn) {
            let error = &e as &dyn std::error::Error;
            tracing::warn!(
                error,
                "could not settle the dirty tasks at close; the journal will be replayed at next open"
            );
        }
        self.checkpointer.finish();
        if let Err(e) = self.engine.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "checkpoint at close failed; the WAL will be replayed at next open");
        }
    }
}

/// The writer thread: takes every job waiting (at most [`MAX_BATCH`]) and runs
/// them as one batch under the writer lock, until the channel closes.
pub fn run_writer(writer: &Mutex<Writer>, jobs: &mpsc::Receiver<Job>, queued: &AtomicUsize) {
    while let Ok(first) = jobs.recv() {
        let mut writer = writer.lock().expect("writer lock");
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        writer.run(batch, queued);
    }
    writer.lock().expect("writer lock").finish();
}

impl Engine {
    /// Runs a statement without parameters, prepared once.
    fn statement(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([]).map(drop)
    }

    /// Marks the batch for rollback after a job's `error`.
    pub fn poison(&mut self, error: &StoreError) {
        self.poisoned = true;
        self.out_of_space |= matches!(error, StoreError::StorageFull(_));
    }

    /// What the job that just ran changed; the next job starts with none.
    pub fn take_effects(&mut self) -> Effects {
        std::mem::take(&mut self.mem.effects)
    }

    /// Runs `batch` in one transaction; the answers, once it committed, are for
    /// `answer` (the syncer's or the writer's own sync). On failure the batch is
    /// rolled back, the index rebuilt from disk, and every caller answered at once.
    /// Returns whether the batch committed.
    fn run_batch(&mut self, batch: Vec<Job>, answer: impl FnOnce(&mut Self, Vec<Reply>)) -> bool {
        let mut replies: Vec<Reply>;
        let mut last_event = None;
        let outcome = match self.statement("BEGIN IMMEDIATE") {
            Ok(()) => {
                replies = batch.into_iter().map(|job| job(Some(&mut *self))).collect();
                if !self.poisoned {
                    match self.mem.finish_batch(&self.conn) {
                        Ok(last) => last_event = last,
                        Err(e) => {
                            let error = &e as &dyn std::error::Error;
                            tracing::error!(error, "could not write the batch's journal or events");
                            self.poison(&e);
                        }
                    }
                }
                if self.poisoned {
                    let message = if self.out_of_space {
                        "no space left on the disk; the batch was rolled back"
                    } else {
                        "a statement failed; the batch was rolled back"
                    };
                    Err(BatchFailure { message: message.to_owned(), out_of_space: self.out_of_space })
                } else {
                    self.statement("COMMIT").map_err(BatchFailure::from)
                }
            }
            Err(e) => {
                replies = batch.into_iter().map(|job| job(None)).collect();
                Err(BatchFailure::from(e))
            }
        };
        match outcome {
            Ok(()) => {
                if let Some(last) = last_event {
                    // First of the batch's answers, so that a caller who hears of
                    // its change can read the change's events.
                    let durable = self.events_durable.clone();
                    replies.insert(
                        0,
                        Box::new(move |commit: Result<(), BatchFailure>| {
                            if commit.is_ok() {
                                durable.fetch_max(last, Ordering::AcqRel);
                            }
                        }),
                    );
                }
                answer(self, replies);
                true
            }
            Err(failure) => {
                if failure.out_of_space {
                    // Expected while the disk is full; each refused write says so.
                    tracing::warn!(error = %failure.message, "batch failed: the disk is full; rolling back");
                } else {
                    tracing::error!(error = %failure.message, "batch failed; rolling back and rebuilding the index");
                }
                let _ = self.conn.execute_batch("ROLLBACK");
                self.poisoned = false;
                self.out_of_space = false;
                if let Err(e) = self.rebuild() {
                    tracing::error!(error = %e, "could not rebuild the index after a failed batch");
                }
                // Nothing of a rolled-back batch needs the disk: answer now.
                for reply in replies {
                    reply(Err(failure.clone()));
                }
                false
            }
        }
    }
}

impl From<rusqlite::Error> for BatchFailure {
    fn from(error: rusqlite::Error) -> Self {
        Self { out_of_space: out_of_space(&error), message: error.to_string() }
    }
}
