//! Queues: names and settings. A queue is created on first use with
//! [`QueueSettings::defaults`] and changed with an idempotent replace of its settings.

use crate::retry::Backoff;
use std::fmt;

/// A validated queue name: `[A-Za-z0-9_.-]{1,128}`, but not `.` or `..`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

/// Why a queue name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("queue name must be 1 to 128 characters of A-Z, a-z, 0-9, '_', '.', '-', and not `.` or `..`")]
pub struct InvalidQueueName;

impl QueueName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`InvalidQueueName`] when the name is empty, longer than 128 bytes or has a
    /// character outside `[A-Za-z0-9_.-]`, and for `.` and `..`: a queue name is
    /// a segment of a URL path, and those two segments are resolved away there.
    pub fn new(name: &str) -> Result<Self, InvalidQueueName> {
        let valid = !name.is_empty()
            && name.len() <= 128
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if valid { Ok(Self(name.to_owned())) } else { Err(InvalidQueueName) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The settings of one queue.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueSettings {
    /// How many times a task may be leased before it is dead.
    pub max_attempts: u32,
    /// Lease length when the worker asks for none.
    pub lease_ms: i64,
    pub backoff: Backoff,
    /// Most tasks running at once; `None` means no limit.
    pub concurrency: Option<u32>,
    /// A paused queue accepts tasks but leases none.
    pub paused: bool,
    /// How long finished tasks are kept.
    pub retention_ms: i64,
    /// How long an idempotency key is remembered, at least.
    pub dedup_window_ms: i64,
}

pub const DAY_MS: i64 = 24 * 3600 * 1000;
/// The longest lease a worker may hold without extending it.
pub const MAX_LEASE_MS: i64 = 12 * 3600 * 1000;

impl QueueSettings {
    /// The settings a queue gets when it is created on first use.
    pub fn defaults() -> Self {
        Self {
            max_attempts: 25,
            lease_ms: 30_000,
            backoff: Backoff { initial_ms: 1_000, max_ms: 3_600_000, multiplier: 2.0, jitter: 0.2 },
            concurrency: None,
            paused: false,
            retention_ms: 7 * DAY_MS,
            dedup_window_ms: DAY_MS,
        }
    }

    /// Applies a patch to these settings; fields the patch leaves out keep their
    /// value. The result is validated as a whole.
    ///
    /// # Errors
    /// A message naming the first field out of range.
    pub fn with(&self, patch: &QueueSettingsPatch) -> Result<Self, String> {
        let mut s = self.clone();
        if let Some(v) = patch.max_attempts {
            s.max_attempts = v;
        }
        if let Some(v) = patch.lease_ms {
            s.lease_ms = v;
        }
        if let Some(v) = patch.backoff_initial_ms {
            s.backoff.initial_ms = v;
        }
        if let Some(v) = patch.backoff_max_ms {
            s.backoff.max_ms = v;
        }
        if let Some(v) = patch.backoff_multiplier {
            s.backoff.multiplier = v;
        }
        if let Some(v) = patch.backoff_jitter {
            s.backoff.jitter = v;
        }
        if let Some(v) = patch.concurrency {
            s.concurrency = v;
        }
        if let Some(v) = patch.paused {
            s.paused = v;
        }
        if let Some(v) = patch.retention_ms {
            s.retention_ms = v;
        }
        if let Some(v) = patch.dedup_window_ms {
            s.dedup_window_ms = v;
        }
        s.validate()?;
        Ok(s)
    }

    /// # Errors
    /// A message naming the first field out of range.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 || self.max_attempts > 10_000 {
            return Err("max_attempts must be between 1 and 10000".into());
        }
        if !(1..=MAX_LEASE_MS).contains(&self.lease_ms) {
            return Err(format!("lease_ms must be between 1 and {MAX_LEASE_MS}"));
        }
        self.backoff.validate()?;
        if self.concurrency == Some(0) {
            return Err("concurrency must be at least 1, or null for no limit".into());
        }
        if self.retention_ms < 0 {
            return Err("retention_ms must not be negative".into());
        }
        if self.dedup_window_ms < 0 {
            return Err("dedup_window_ms must not be negative".into());
        }
        Ok(())
    }
}

/// A change to queue settings: each `Some` replaces that setting.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueSettingsPatch {
    pub max_attempts: Option<u32>,
    pub lease_ms: Option<i64>,
    pub backoff_initial_ms: Option<i64>,
    pub backoff_max_ms: Option<i64>,
    pub backoff_multiplier: Option<f64>,
    pub backoff_jitter: Option<f64>,
    /// `Some(None)` removes the limit.
    pub concurrency: Option<Option<u32>>,
    pub paused: Option<bool>,
    pub retention_ms: Option<i64>,
    pub dedup_window_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_path_segments_of_their_own() {
        for good in
            ["a", "payments", "billing.invoices", "...", ".hidden", "..x", "A-Z_0.9", &"q".repeat(128)]
        {
            assert!(QueueName::new(good).is_ok(), "{good:?}");
        }
        // `.` and `..` are not names a URL path can carry: they are resolved away.
        for bad in ["", ".", "..", "a/b", "a b", "é", "a*", &"q".repeat(129)] {
            assert_eq!(QueueName::new(bad), Err(InvalidQueueName), "{bad:?}");
        }
    }
}
