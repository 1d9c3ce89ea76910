//! What the writer records about itself for monitoring: jobs per batch (how
//! much group commit gathers), fdatasync latency, and when a batch last failed
//! (readiness). Recorded with atomic adds by the threads that do the work; read
//! by [`Store::stats`](cherga_store::Store::stats) without the writer lock.

use cherga_store::stats::Histogram;
use std::sync::atomic::{AtomicI64, Ordering};

/// Bounds of the jobs-per-batch histogram, up to the writer's `MAX_BATCH`.
static BATCH_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048];
/// Bounds of the fdatasync histogram, in microseconds (100 µs to 1 s).
static FSYNC_BOUNDS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

#[derive(Debug)]
pub struct WriterStats {
    pub batch_jobs: Histogram,
    pub fsync_us: Histogram,
    /// When a batch last failed and was rolled back (milliseconds since the
    /// epoch), 0 if none has.
    last_failure_ms: AtomicI64,
}

impl WriterStats {
    pub fn new() -> Self {
        Self {
            batch_jobs: Histogram::new(&BATCH_BOUNDS),
            fsync_us: Histogram::new(&FSYNC_BOUNDS_US),
            last_failure_ms: AtomicI64::new(0),
        }
    }

    pub fn batch_failed(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as i64);
        self.last_failure_ms.store(now, Ordering::Relaxed);
    }

    /// When a batch last failed, if one has.
    pub fn last_failure_ms(&self) -> Option<i64> {
        Some(self.last_failure_ms.load(Ordering::Relaxed)).filter(|&at| at > 0)
    }
}
