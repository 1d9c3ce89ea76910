//! What a transition did to a task, as plain data: the record every state change
//! leaves behind for whoever must hear of it (long polls, timers, the event
//! stream, metrics).
//!
//! A store makes a [`Transition`] for every task whose state it changed (a task
//! created or purged counts), in the order it changed them, and nothing else: a
//! refused or replayed transition leaves none. What a transition *means* — which
//! waiters to wake, which timer to move, which event to publish — is decided from
//! these records alone, in one place each (`cherga-store`'s `Effects`, the server).

use crate::{Millis, Task, TaskId, TaskState};

/// Which transition changed a task. The names are the event types of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    /// A new task was stored (`scheduled` or `ready`).
    Enqueued,
    /// A scheduled task's `run_at` passed: `scheduled → ready`.
    Promoted,
    /// `ready → running` under a new lease.
    Leased,
    /// `running → succeeded`.
    Acked,
    /// A worker reported a failure: `running → scheduled` (a retry) or `→ dead`.
    Nacked,
    /// The lease ran out: `running → scheduled` or `→ dead`.
    Expired,
    /// `scheduled | ready → cancelled`.
    Cancelled,
    /// A dead task was sent back by hand: `dead → ready`.
    Retried,
    /// A finished task was deleted (retention, or a purge by hand).
    Purged,
}

impl Change {
    pub const ALL: [Change; 9] = [
        Change::Enqueued,
        Change::Promoted,
        Change::Leased,
        Change::Acked,
        Change::Nacked,
        Change::Expired,
        Change::Cancelled,
        Change::Retried,
        Change::Purged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Enqueued => "enqueued",
            Change::Promoted => "promoted",
            Change::Leased => "leased",
            Change::Acked => "acked",
            Change::Nacked => "nacked",
            Change::Expired => "expired",
            Change::Cancelled => "cancelled",
            Change::Retried => "retried",
            Change::Purged => "purged",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// A small stable number for storage.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

/// One task's change of state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub task_id: TaskId,
    pub queue: String,
    pub kind: String,
    pub change: Change,
    /// The state before; `None` for a task just created.
    pub from: Option<TaskState>,
    /// The state after; `None` for a task purged.
    pub to: Option<TaskState>,
    /// The task's attempts (times leased) after the change.
    pub attempt: u32,
    /// When it happened.
    pub at: Millis,
    /// When the task needs the timer next: its `run_at` when it is scheduled, its
    /// lease's expiry when it is running.
    pub due: Option<Millis>,
    /// A [`Change::Retried`] that replaced the task's payload.
    pub payload_edited: bool,
}

impl Transition {
    /// The record of `change`, which moved `task` (as it is now) out of `from`.
    pub fn of(task: &Task, change: Change, from: Option<TaskState>, now: Millis) -> Self {
        let due = match task.state {
            TaskState::Scheduled => Some(task.run_at),
            TaskState::Running => task.lease.as_ref().map(|l| l.expires_at),
            _ => None,
        };
        Transition {
            task_id: task.id,
            queue: task.queue.clone(),
            kind: task.kind.clone(),
            change,
            from,
            to: Some(task.state),
            attempt: task.attempts,
            at: now,
            due,
            payload_edited: false,
        }
    }

    /// The record of deleting `task`, which was finished in `state`.
    pub fn purged(
        task_id: TaskId,
        queue: &str,
        kind: &str,
        state: TaskState,
        attempt: u32,
        now: Millis,
    ) -> Self {
        Transition {
            task_id,
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            change: Change::Purged,
            from: Some(state),
            to: None,
            attempt,
            at: now,
            due: None,
            payload_edited: false,
        }
    }

    /// Whether this change may have made one more task of its queue leasable:
    /// this one, if it became ready; another, if this one left `running` or
    /// finished (it freed a concurrency slot, or the head of its group).
    pub fn may_lease(&self) -> bool {
        let became_ready = self.to == Some(TaskState::Ready);
        let left_running = self.from == Some(TaskState::Running);
        let finished = self.to.is_some_and(TaskState::is_finished);
        became_ready || left_running || finished
    }
}
