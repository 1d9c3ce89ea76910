//! The domain of cherga: tasks, queues, states, leases and retry policy as plain
//! data, plus the pure functions that move a task from one state to another.
//!
//! **Invariant:** this crate performs no I/O. It reads no clock and draws no random
//! numbers: time (`now`, in milliseconds since the Unix epoch) and randomness are
//! parameters, so every rule here can be tested exactly.

pub mod change;
pub mod history;
pub mod queue;
pub mod retry;
pub mod task;

pub use change::{Change, Transition};
pub use history::{Attempt, AttemptOutcome, AttemptRef, History, HistoryError, PayloadEdit};
pub use queue::{QueueName, QueueSettings, QueueSettingsPatch};
pub use retry::Backoff;
pub use task::{
    AckOutcome, KeyResolution, Lease, LeaseToken, NewPayload, NewTask, Refusal, Task, TaskId, TaskState,
    fingerprint, resolve_key,
};

/// Milliseconds since the Unix epoch. All times in cherga are of this unit.
pub type Millis = i64;
