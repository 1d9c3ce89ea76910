//! The consumed-task ledger of one run: which sequence numbers arrived, how many
//! arrived more than once, and when the last missing one arrived.
//!
//! **Invariant:** `distinct` counts set bits; a sequence number is counted as
//! distinct once and as a duplicate on every later arrival. The ledger is lock-free
//! (one `fetch_or` per task) so that counting never slows the fastest broker.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub struct Tally {
    /// One bit per expected sequence number.
    bits: Vec<AtomicU64>,
    expected: u64,
    distinct: AtomicU64,
    duplicates: AtomicU64,
    /// Sequence numbers outside `0..expected` (a task of another run, say).
    strangers: AtomicU64,
    /// When `distinct` reached `expected`: the end of a drain.
    completed_at: OnceLock<Instant>,
    /// Tasks handed to consumers so far, duplicates included.
    taken: AtomicU64,
}

/// The final count of a run, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Check {
    pub expected: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Payloads that were not tasks of this run.
    pub strangers: u64,
}

impl Tally {
    pub fn new(expected: u64) -> Self {
        let words = expected.div_ceil(64) as usize;
        Self {
            bits: (0..words).map(|_| AtomicU64::new(0)).collect(),
            expected,
            distinct: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            strangers: AtomicU64::new(0),
            completed_at: OnceLock::new(),
            taken: AtomicU64::new(0),
        }
    }

    /// Counts `n` more tasks handed to a consumer (not yet acknowledged); true
    /// once as many were handed out as are expected, so that no later lease
    /// would bring more.
    pub fn taken(&self, n: usize) -> bool {
        self.taken.fetch_add(n as u64, Ordering::AcqRel) + n as u64 >= self.expected
    }

    /// Records one arrival of `seq`.
    pub fn record(&self, seq: u64) {
        if seq >= self.expected {
            self.strangers.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mask = 1u64 << (seq % 64);
        let before = self.bits[(seq / 64) as usize].fetch_or(mask, Ordering::AcqRel);
        if before & mask != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        } else if self.distinct.fetch_add(1, Ordering::AcqRel) + 1 == self.expected {
            let _ = self.completed_at.set(Instant::now());
        }
    }

    pub fn is_complete(&self) -> bool {
        self.distinct.load(Ordering::Acquire) >= self.expected
    }

    pub fn distinct(&self) -> u64 {
        self.distinct.load(Ordering::Acquire)
    }

    pub fn completed_at(&self) -> Option<Instant> {
        self.completed_at.get().copied()
    }

    pub fn check(&self) -> Check {
        let distinct = self.distinct();
        Check {
            expected: self.expected,
            distinct,
            duplicates: self.duplicates.load(Ordering::Acquire),
            lost: self.expected - distinct,
            strangers: self.strangers.load(Ordering::Acquire),
        }
    }
}
