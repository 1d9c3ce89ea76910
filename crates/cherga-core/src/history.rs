//! The attempt history of a task: one entry per attempt (lease), saying who held
//! it, when it began and ended, and how it ended.
//!
//! A task keeps its *finished* attempts in a [`History`]; the running attempt
//! is its lease (worker, `leased_at`, the task's `attempts`), and
//! [`Task::attempt_history`](crate::Task::attempt_history) shows it after the
//! finished ones. So a lease changes no history and copies nothing: a task in
//! memory carries no entry until its first attempt ends, and a store that
//! restores a lease restores its attempt with it. The transitions of
//! [`Task`](crate::Task) keep the history: `ack`, `nack` and `expire` add the
//! entry of the attempt they end; `retry` of a dead task keeps it, and a retry
//! with a new payload marks the entry of the attempt that ended dead with a
//! [`PayloadEdit`] (who replaced the payload, and when), so the history says
//! which attempts ran with which payload. Stores only keep it and give it back
//! ([`History::from_entries`]).
//!
//! Invariants, kept by the methods here (the entries are private):
//! - every entry is finished (not [`AttemptOutcome::Running`]) and has a
//!   `finished_at`;
//! - attempt numbers strictly increase along the entries;
//! - the history is bounded, so that a task retried without end stays small: it
//!   keeps its first entry and the most recent ones, at most
//!   [`History::MAX_ENTRIES`] in all, and drops the oldest but the first while
//!   the errors of the entries hold more than [`History::MAX_ERROR_BYTES`] and
//!   there are more than two. The `attempt` numbers show where entries were
//!   dropped.

use crate::Millis;
use std::fmt;

/// How an attempt ended, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// The current attempt: the task is running under its lease. Never in a
    /// [`History`]; only [`Task::attempt_history`](crate::Task::attempt_history)
    /// shows it.
    Running,
    /// Acknowledged.
    Succeeded,
    /// Nacked. The task's state says whether it was scheduled again or went dead.
    Failed,
    /// The lease ran out before the worker acked or nacked.
    Expired,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 4] =
        [AttemptOutcome::Running, AttemptOutcome::Succeeded, AttemptOutcome::Failed, AttemptOutcome::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// A small stable number for storage.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

impl fmt::Display for AttemptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished attempt of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt's number: the task's `attempts` once it was leased (1 for the
    /// first lease).
    pub attempt: u32,
    /// The `worker` named by the lease request.
    pub worker: Option<String>,
    /// When the lease was made.
    pub started_at: Millis,
    /// When the attempt ended: at the ack or nack, or the lease's `expires_at` for
    /// an expiry (when the lease ran out, not when a timer noticed).
    pub finished_at: Millis,
    pub outcome: AttemptOutcome,
    /// The error a nack gave, or `lease expired` for an expiry: what the task's
    /// `last_error` became when the attempt ended.
    pub error: Option<String>,
    /// The payload was replaced after this attempt ended and before the next
    /// began: a dead task retried with a new payload. Boxed because it is rare,
    /// and every task in a store's memory carries its history.
    pub payload_edit: Option<Box<PayloadEdit>>,
}

/// A payload replaced by hand: when, and by whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadEdit {
    pub at: Millis,
    /// The subject of the token of the request that replaced it; `None` with
    /// auth off or a token without a subject.
    pub by: Option<String>,
}

impl Attempt {
    pub fn to_ref(&self) -> AttemptRef<'_> {
        AttemptRef {
            attempt: self.attempt,
            worker: self.worker.as_deref(),
            started_at: self.started_at,
            finished_at: Some(self.finished_at),
            outcome: self.outcome,
            error: self.error.as_deref(),
            payload_edit: self.payload_edit.as_deref(),
        }
    }
}

/// An attempt as [`Task::attempt_history`](crate::Task::attempt_history) shows
/// it: a finished one, or the running one of the current lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptRef<'a> {
    pub attempt: u32,
    pub worker: Option<&'a str>,
    pub started_at: Millis,
    /// `None` while running.
    pub finished_at: Option<Millis>,
    pub outcome: AttemptOutcome,
    pub error: Option<&'a str>,
    /// Never on the running attempt.
    pub payload_edit: Option<&'a PayloadEdit>,
}

/// A task's finished attempts, oldest first, within the bound (see the
/// module's documentation).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct History {
    entries: Vec<Attempt>,
}

impl Clone for History {
    /// Most tasks a store copies have no history yet (pending, or running for
    /// the first time): for them, no call into `Vec`'s clone.
    #[inline]
    fn clone(&self) -> Self {
        if self.entries.is_empty() { Self::default() } else { Self { entries: self.entries.clone() } }
    }
}

/// Why stored entries are not a history.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("attempt {attempt} of the history follows attempt {previous}")]
    OutOfOrder { previous: u32, attempt: u32 },
    #[error("attempt {attempt} of the history is running; a history holds finished attempts")]
    Running { attempt: u32 },
}

impl History {
    /// Most entries shown, the running attempt's included: the first and the 99
    /// most recent.
    pub const MAX_ENTRIES: usize = 100;
    /// Most bytes of error text the entries hold together: past it the oldest
    /// entries but the first are dropped, down to the first and the last.
    pub const MAX_ERROR_BYTES: usize = 256 * 1024;

    /// The entries, oldest first.
    pub fn entries(&self) -> &[Attempt] {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<&Attempt> {
        self.entries.last()
    }

    /// The entries as a store kept them, checked, and kept within the bound as
    /// the transitions keep it (a build with a lower bound drops entries a
    /// build with a higher one kept).
    ///
    /// # Errors
    /// A [`HistoryError`] when the entries break an invariant.
    pub fn from_entries(entries: Vec<Attempt>) -> Result<Self, HistoryError> {
        for (i, entry) in entries.iter().enumerate() {
            if entry.outcome == AttemptOutcome::Running {
                return Err(HistoryError::Running { attempt: entry.attempt });
            }
            if let Some(previous) = i.checked_sub(1).map(|p| entries[p].attempt)
                && previous >= entry.attempt
            {
                return Err(HistoryError::OutOfOrder { previous, attempt: entry.attempt });
            }
        }
        let mut history = Self { entries };
        history.keep_bound();
        Ok(history)
    }

    /// Adds an attempt that ended. Attempt numbers only grow; should the count
    /// ever stand still (it saturates), the new entry takes the place of the last.
    pub(crate) fn push(&mut self, attempt: Attempt) {
        debug_assert_ne!(attempt.outcome, AttemptOutcome::Running, "a history holds finished attempts");
        if self.entries.is_empty() {
            // Most tasks have one attempt: room for one, not the four a first
            // push makes, as every task kept in memory carries its history.
            self.entries = Vec::with_capacity(1);
            self.entries.push(attempt);
            return;
        }
        if self.entries.last().is_some_and(|last| last.attempt >= attempt.attempt) {
            self.entries.pop();
        }
        self.entries.push(attempt);
        self.keep_bound();
    }

    /// Marks the last entry, which must be that of attempt `attempt`, with
    /// `edit`. Returns `false`, changing nothing, when the last entry is not
    /// that attempt's (a task stored before histories were kept).
    pub(crate) fn mark_edited(&mut self, attempt: u32, edit: PayloadEdit) -> bool {
        match self.entries.last_mut() {
            Some(last) if last.attempt == attempt => {
                last.payload_edit = Some(Box::new(edit));
                true
            }
            _ => false,
        }
    }

    /// Drops the oldest entries but the first until the bound holds.
    fn keep_bound(&mut self) {
        if self.entries.len() <= 2 {
            return;
        }
        let over = self.entries.len().saturating_sub(Self::MAX_ENTRIES);
        if over > 0 {
            self.entries.drain(1..=over);
        }
        let mut bytes: usize = self.entries.iter().filter_map(|e| e.error.as_ref()).map(String::len).sum();
        let mut drop = 0;
        while bytes > Self::MAX_ERROR_BYTES && self.entries.len() - drop > 2 {
            bytes -= self.entries[1 + drop].error.as_ref().map_or(0, String::len);
            drop += 1;
        }
        if drop > 0 {
            self.entries.drain(1..=drop);
        }
    }
}

#[cfg(test)]
mod tests;
