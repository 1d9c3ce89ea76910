//! What a store tells about itself for monitoring (`GET /metrics`): per queue the
//! counts per state and the oldest ready task ([`QueueStats`], from
//! [`Store::queue_stats`](crate::Store::queue_stats)), and gauges and histograms
//! of its own machinery ([`StoreStats`], from [`Store::stats`](crate::Store::stats)),
//! such as the embedded store's commit batch sizes and fsync latency or a pool's
//! connections in use.
//!
//! **Invariant:** gathering [`StoreStats`] does no I/O and takes no lock a commit
//! waits for: it reads counters kept as the store works ([`Histogram`]).

use cherga_core::{Millis, TaskState};
use std::sync::atomic::{AtomicU64, Ordering};

/// One queue's figures for monitoring.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub name: String,
    /// Tasks per state, in the order of [`TaskState::ALL`].
    pub counts: [u64; 6],
    /// The `run_at` of the oldest task that could be leased now (pauses and
    /// concurrency limits aside), if any: its age is how long work has waited.
    pub oldest_ready_at: Option<Millis>,
}

impl QueueStats {
    pub fn count(&self, state: TaskState) -> u64 {
        self.counts[usize::from(state.code())]
    }
}

/// Figures of a store's own machinery, named for Prometheus (`cherga_store_…`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    pub gauges: Vec<StatGauge>,
    pub histograms: Vec<StatHistogram>,
}

/// A value that goes up and down (connections in use, jobs waiting).
#[derive(Debug, Clone, PartialEq)]
pub struct StatGauge {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

/// A distribution: how many observations fell at or below each bound.
#[derive(Debug, Clone, PartialEq)]
pub struct StatHistogram {
    pub name: &'static str,
    pub help: &'static str,
    /// `(upper bound, observations in this bucket alone)`, bounds increasing;
    /// observations above the last bound are in `count` only.
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// A histogram of integer observations with fixed bounds, recorded with atomic
/// adds from any thread, never blocking.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One counter per bound, and one for above the last.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds (increasing).
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// What was recorded, with bounds and sum multiplied by `scale` (for
    /// example 1e-6 to report microseconds as seconds).
    pub fn snapshot(&self, name: &'static str, help: &'static str, scale: f64) -> StatHistogram {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        StatHistogram {
            name,
            help,
            buckets: self.bounds.iter().zip(&counts).map(|(&bound, &n)| (bound as f64 * scale, n)).collect(),
            sum: self.sum.load(Ordering::Relaxed) as f64 * scale,
            count: counts.iter().sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        static BOUNDS: [u64; 3] = [1, 10, 100];
        let histogram = Histogram::new(&BOUNDS);
        for value in [0, 1, 2, 10, 11, 100, 1000] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot("h", "help", 0.5);
        assert_eq!(snapshot.buckets, vec![(0.5, 2), (5.0, 2), (50.0, 2)]);
        assert_eq!(snapshot.count, 7);
        assert_eq!(snapshot.sum, 1124.0 * 0.5);
    }
}
