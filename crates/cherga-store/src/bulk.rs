//! Acting on many tasks of a queue at once: retry, cancel or purge every task a
//! [`TaskFilter`] matches, in bounded steps.
//!
//! A store does one [`BulkStep`] per call and per commit: at most
//! [`BulkStep::max`] tasks changed, and a bounded stretch of the queue looked at
//! ([`BULK_SCAN`] sequence numbers on the embedded store), so that one step never
//! holds the writer (or row locks) for long and other clients are served between
//! steps. The caller goes on from [`BulkPage::next`] until it is `None`.
//! Every task a step changes is a transition in its effects, and an event in the
//! log, in the same commit, exactly as if it had been changed alone.

use cherga_core::{Millis, QueueName, Task, TaskId, TaskState};

/// Most tasks one step changes (one commit).
pub const BULK_BATCH: usize = 1_000;

/// Most sequence numbers one step of the embedded store looks at, matching or not.
pub const BULK_SCAN: u64 = 65_536;

/// What to do with the matching tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    /// `dead → ready`, as [`Task::retry`] (the queue's `max_attempts` more attempts).
    Retry,
    /// `scheduled | ready → cancelled`, as [`Task::cancel`].
    Cancel,
    /// Deletes the task, with a `purged` transition. Any state the filter names:
    /// the API offers finished states only, but deleting a queue by force purges
    /// its unfinished tasks too (a running task's worker then finds it gone).
    Purge,
}

impl BulkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            BulkAction::Retry => "retry",
            BulkAction::Cancel => "cancel",
            BulkAction::Purge => "purge",
        }
    }

    /// The states the action applies to through the API, and its default filter:
    /// what the state machine lets it move (`retry` dead tasks, `cancel`
    /// scheduled or ready ones, `purge` finished ones).
    pub fn states(self) -> &'static [TaskState] {
        match self {
            BulkAction::Retry => &[TaskState::Dead],
            BulkAction::Cancel => &[TaskState::Scheduled, TaskState::Ready],
            BulkAction::Purge => &[TaskState::Succeeded, TaskState::Dead, TaskState::Cancelled],
        }
    }
}

/// Which tasks of a queue a bulk action applies to. Every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// The states; empty means the action's own ([`BulkAction::states`]).
    pub states: Vec<TaskState>,
    pub kind: Option<String>,
    pub group: Option<String>,
    /// Only tasks enqueued at or after this time.
    pub enqueued_after: Option<Millis>,
    /// Only tasks enqueued before this time.
    pub enqueued_before: Option<Millis>,
}

impl TaskFilter {
    /// The states the filter takes for `action`, as a bit set by [`TaskState::code`].
    pub fn state_mask(&self, action: BulkAction) -> u8 {
        let states = if self.states.is_empty() { action.states() } else { &self.states[..] };
        states.iter().fold(0, |mask, state| mask | (1 << state.code()))
    }

    /// The filter of tasks in `state`.
    pub fn in_state(state: TaskState) -> Self {
        TaskFilter { states: vec![state], ..TaskFilter::default() }
    }

    /// The states a listing takes, as a bit set by [`TaskState::code`]: every
    /// state when none is given.
    pub fn list_mask(&self) -> u8 {
        let states = if self.states.is_empty() { &TaskState::ALL[..] } else { &self.states[..] };
        states.iter().fold(0, |mask, state| mask | (1 << state.code()))
    }

    /// Whether `task` matches everything but the state (which the store selects by).
    pub fn matches_fields(&self, task: &Task) -> bool {
        self.kind.as_ref().is_none_or(|kind| *kind == task.kind)
            && self.group.as_ref().is_none_or(|group| task.group.as_ref() == Some(group))
            && self.enqueued_after.is_none_or(|after| task.created_at >= after)
            && self.enqueued_before.is_none_or(|before| task.created_at < before)
    }

    /// Whether `task` matches the filter for `action`.
    pub fn matches(&self, action: BulkAction, task: &Task) -> bool {
        self.state_mask(action) & (1 << task.state.code()) != 0 && self.matches_fields(task)
    }
}

/// One step of a bulk action: up to `max` matching tasks of `queue` after `after`
/// (in enqueue order), changed in one commit.
#[derive(Clone, Debug)]
pub struct BulkStep {
    pub queue: QueueName,
    pub action: BulkAction,
    pub filter: TaskFilter,
    /// Where the previous step stopped (`None`: from the queue's first task).
    pub after: Option<TaskId>,
    /// Most tasks to change, at most [`BULK_BATCH`].
    pub max: usize,
}

/// What one step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkPage {
    /// How many tasks it changed.
    pub changed: usize,
    /// Where the next step goes on; `None` once the whole queue was looked at.
    pub next: Option<TaskId>,
}
