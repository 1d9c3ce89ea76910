//! Retry backoff: how long a task waits after a failed attempt.

use crate::Millis;

/// Exponential backoff with jitter: attempt `n` waits
/// `min(initial_ms * multiplier^(n-1), max_ms)`, less up to `jitter` of itself.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial_ms: i64,
    pub max_ms: i64,
    pub multiplier: f64,
    /// Fraction in `[0, 1]` of the delay that is taken off at random, so that tasks
    /// that failed together do not all come back at once.
    pub jitter: f64,
}

impl Backoff {
    /// The delay before the next attempt, after `attempts` attempts have been made.
    /// `random` is a number in `[0, 1)` supplied by the caller.
    pub fn delay(&self, attempts: u32, random: f64) -> Millis {
        let exponent = attempts.saturating_sub(1).min(1_000) as i32;
        let raw = self.initial_ms as f64 * self.multiplier.powi(exponent);
        let capped = raw.min(self.max_ms as f64).max(0.0);
        let random = random.clamp(0.0, 1.0);
        (capped * (1.0 - self.jitter * random)).round() as Millis
    }

    /// # Errors
    /// A message naming the field out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.initial_ms < 0 || self.max_ms < 0 {
            return Err("backoff_initial_ms and backoff_max_ms must not be negative".into());
        }
        if self.initial_ms > self.max_ms {
            return Err("backoff_initial_ms must not exceed backoff_max_ms".into());
        }
        if !(self.multiplier.is_finite() && (1.0..=100.0).contains(&self.multiplier)) {
            return Err("backoff_multiplier must be between 1 and 100".into());
        }
        if !(self.jitter.is_finite() && (0.0..=1.0).contains(&self.jitter)) {
            return Err("backoff_jitter must be between 0 and 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(b: Backoff, attempts: u32, random: f64, expected: Millis) {
        assert_eq!(b.delay(attempts, random), expected, "{b:?} attempts={attempts} random={random}");
    }

    #[test]
    fn doubles_then_caps() {
        let b = Backoff { initial_ms: 1000, max_ms: 3_600_000, multiplier: 2.0, jitter: 0.0 };
        check(b, 1, 0.5, 1000);
        check(b, 2, 0.5, 2000);
        check(b, 3, 0.5, 4000);
        check(b, 12, 0.5, 2_048_000);
        check(b, 13, 0.5, 3_600_000);
        check(b, 10_000, 0.5, 3_600_000);
        check(b, 0, 0.5, 1000);
    }

    #[test]
    fn jitter_takes_off_at_most_its_fraction() {
        let b = Backoff { initial_ms: 1000, max_ms: 10_000, multiplier: 2.0, jitter: 0.5 };
        check(b, 1, 0.0, 1000);
        check(b, 1, 0.5, 750);
        check(b, 1, 0.999_999, 500);
    }

    #[test]
    fn validation_names_the_field() {
        let ok = Backoff { initial_ms: 1, max_ms: 2, multiplier: 2.0, jitter: 0.1 };
        assert!(ok.validate().is_ok());
        let err = Backoff { multiplier: f64::NAN, ..ok }.validate().unwrap_err();
        assert!(err.contains("backoff_multiplier"), "{err}");
        let err = Backoff { initial_ms: 3, ..ok }.validate().unwrap_err();
        assert!(err.contains("backoff_initial_ms"), "{err}");
    }
}
