//! What a store call changed, handed back with its answer: the one description
//! of a change that everything downstream works from.
//!
//! Every state-changing [`Store`](crate::Store) method answers [`Changed`]: its
//! value plus the [`Effects`] of the call — a [`Transition`] for every task whose
//! state it changed, in order, and the queues whose settings changed. Which long
//! polls to wake and which timer to move follow from those records here, once
//! ([`Effects::leasable`], [`Effects::next_timer`]); the server applies them in one
//! place, so no route decides what a change means.
//!
//! **Invariant:** effects describe committed changes only. A call that fails
//! returns none; a refused or replayed item adds none.

use cherga_core::{Millis, Transition};

/// What a store call changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    /// Every task transition the call made, in the order it made them.
    pub transitions: Vec<Transition>,
    /// Queues whose settings changed (a raised limit, a resumed queue): what
    /// their waiting leases may take is not counted, so all of them should look.
    pub queues_changed: Vec<String>,
}

impl Effects {
    /// Effects of a call that changed nothing.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.transitions.is_empty() && self.queues_changed.is_empty()
    }

    /// Adds the effects of a later call (or a later part of one).
    pub fn extend(&mut self, later: Effects) {
        self.transitions.extend(later.transitions);
        self.queues_changed.extend(later.queues_changed);
    }

    /// The queues where tasks may have become leasable, each with how many (an
    /// upper bound: each such change lets at most one more task be leased), in
    /// the order they first appear.
    pub fn leasable(&self) -> Vec<(&str, usize)> {
        let mut queues: Vec<(&str, usize)> = Vec::new();
        for transition in self.transitions.iter().filter(|t| t.may_lease()) {
            // Calls touch few queues: a scan beats hashing here.
            match queues.iter_mut().find(|(queue, _)| *queue == transition.queue) {
                Some((_, n)) => *n += 1,
                None => queues.push((&transition.queue, 1)),
            }
        }
        queues
    }

    /// The earliest time a changed task needs the timer (a scheduled task's
    /// `run_at`, a running one's lease expiry), if any.
    pub fn next_timer(&self) -> Option<Millis> {
        self.transitions.iter().filter_map(|t| t.due).min()
    }
}

/// The answer of a state-changing store call: its value and what it changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Changed<T> {
    pub value: T,
    pub effects: Effects,
}

impl<T> Changed<T> {
    pub fn new(value: T, effects: Effects) -> Self {
        Self { value, effects }
    }

    /// A value whose call changed nothing.
    pub fn nothing(value: T) -> Self {
        Self { value, effects: Effects::none() }
    }

    /// The value, with the effects dropped (for callers that apply none).
    pub fn into_value(self) -> T {
        self.value
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Changed<U> {
        Changed { value: f(self.value), effects: self.effects }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cherga_core::{Change, TaskId, TaskState};

    fn transition(
        queue: &str,
        change: Change,
        from: Option<TaskState>,
        to: TaskState,
        due: Option<Millis>,
    ) -> Transition {
        Transition {
            task_id: TaskId::new(1, 1),
            queue: queue.to_owned(),
            kind: "k".to_owned(),
            change,
            from,
            to: Some(to),
            attempt: 1,
            at: 1,
            due,
            payload_edited: false,
        }
    }

    #[test]
    fn leasable_counts_ready_tasks_and_freed_slots_per_queue() {
        use TaskState::*;
        let effects = Effects {
            transitions: vec![
                transition("a", Change::Enqueued, None, Ready, None),
                transition("a", Change::Enqueued, None, Scheduled, Some(50)),
                transition("b", Change::Leased, Some(Ready), Running, Some(30)),
                transition("b", Change::Acked, Some(Running), Succeeded, None),
                transition("a", Change::Nacked, Some(Running), Scheduled, Some(40)),
                transition("c", Change::Cancelled, Some(Scheduled), Cancelled, None),
            ],
            queues_changed: vec![],
        };
        assert_eq!(effects.leasable(), vec![("a", 2), ("b", 1), ("c", 1)]);
        assert_eq!(effects.next_timer(), Some(30));
    }

    #[test]
    fn a_lease_or_a_delayed_enqueue_makes_nothing_leasable() {
        use TaskState::*;
        let effects = Effects {
            transitions: vec![
                transition("a", Change::Leased, Some(Ready), Running, Some(9)),
                transition("a", Change::Enqueued, None, Scheduled, Some(7)),
            ],
            queues_changed: vec![],
        };
        assert!(effects.leasable().is_empty());
        assert_eq!(effects.next_timer(), Some(7));
        assert!(Effects::none().is_empty() && Effects::none().next_timer().is_none());
    }
}
