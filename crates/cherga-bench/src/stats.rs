//! The report's arithmetic: latency histograms and their percentiles, merging the
//! histograms of many workers, and the median with min–max over repeated runs.
//!
//! **Invariant:** percentiles are read from one merged histogram, never averaged
//! across workers (an average of p99s is not a p99).

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to one hour, with three
/// significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records `micros` (clamped to the histogram's range).
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.max(1));
}

/// Merges the histograms of several workers into one.
///
/// # Errors
/// When a histogram cannot be added (bounds differ), which [`histogram`] rules out.
pub fn merge(histograms: impl IntoIterator<Item = Histogram<u64>>) -> Result<Histogram<u64>> {
    let mut all = histogram();
    for h in histograms {
        all.add(h)?;
    }
    Ok(all)
}

/// Latency percentiles of one run, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// How many latencies were recorded.
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// The median of repeated runs with the smallest and largest value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. The median of an even count is the mean of the two
    /// middle values. NaNs are ignored.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(Self { median, min: sorted[0], max: sorted[n - 1] })
    }

    /// Of the values that are present; `None` when none is.
    pub fn of_present(values: &[Option<f64>]) -> Option<Self> {
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        Self::of(&present)
    }
}

/// cherga's value divided by the peer's, when both exist and the peer's is not 0.
pub fn ratio(cherga: Option<f64>, peer: Option<f64>) -> Option<f64> {
    match (cherga, peer) {
        (Some(c), Some(p)) if p != 0.0 && c.is_finite() && p.is_finite() => Some(c / p),
        _ => None,
    }
}
