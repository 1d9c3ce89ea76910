//! The index of unfinished tasks that decides which task is leased next.
//!
//! A store that keeps its rows elsewhere (the embedded store keeps them in SQLite)
//! keeps this index in memory beside them and rebuilds it at start-up. It holds no
//! payloads: only what ordering, the group rule and the concurrency limit need.
//!
//! Invariants the index keeps, whatever sequence of [`Index::upsert`] calls it sees:
//! - a task is offered by [`Index::pick`] only when it is ready, its queue is not
//!   paused and below its `concurrency`, and, for a task in a group, it is the
//!   oldest unfinished task of its group and no task of the group is running;
//! - ready tasks are offered by priority (higher first), then `run_at`, then
//!   enqueue order (`seq`);
//! - counts per state are those of the tasks the index was told about.

use crate::Millis;
use crate::task::{Task, TaskState};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// What the index needs to know about one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSlot {
    pub queue: Arc<str>,
    pub priority: i32,
    pub run_at: Millis,
    pub group: Option<Arc<str>>,
    pub state: TaskState,
    /// The lease expiry when running.
    pub lease_expires_at: Option<Millis>,
}

type ReadyKey = (Reverse<i32>, Millis, u64);

#[derive(Default, Debug)]
struct Group {
    /// Unfinished tasks of the group, by enqueue order.
    members: BTreeSet<u64>,
    running: u32,
    /// The member currently offered in the queue's ready set, if any.
    offered: Option<ReadyKey>,
}

#[derive(Debug)]
struct QueueIndex {
    ready: BTreeSet<ReadyKey>,
    running: u32,
    concurrency: Option<u32>,
    paused: bool,
    groups: HashMap<Arc<str>, Group>,
    counts: [u64; 6],
}

impl QueueIndex {
    fn new() -> Self {
        Self {
            ready: BTreeSet::new(),
            running: 0,
            concurrency: None,
            paused: false,
            groups: HashMap::new(),
            counts: [0; 6],
        }
    }
}

/// Unfinished tasks by sequence number, with the ready sets and timers built over them.
#[derive(Debug, Default)]
pub struct Index {
    tasks: HashMap<u64, TaskSlot>,
    queues: HashMap<Arc<str>, QueueIndex>,
    /// `(run_at, seq)` of scheduled tasks.
    scheduled: BTreeSet<(Millis, u64)>,
    /// `(expires_at, seq)` of running tasks.
    leases: BTreeSet<(Millis, u64)>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// The interned name of `queue`, creating its entry if needed. Slots should use
    /// it so that millions of tasks share one allocation per queue name.
    pub fn queue_name(&mut self, queue: &str) -> Arc<str> {
        if let Some((name, _)) = self.queues.get_key_value(queue) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(queue);
        self.queues.insert(name.clone(), QueueIndex::new());
        name
    }

    /// Sets the leasing limits of `queue`.
    pub fn configure_queue(&mut self, queue: &str, concurrency: Option<u32>, paused: bool) {
        let name = self.queue_name(queue);
        let q = self.queues.get_mut(&name).expect("just interned");
        q.concurrency = concurrency;
        q.paused = paused;
    }

    /// Records that the task `seq`, which was in state `was` (`None` when new), is
    /// now as `slot` says. A finished task leaves the index; only its count remains,
    /// which is why the index must be told the state a finished task comes from.
    pub fn upsert(&mut self, seq: u64, was: Option<TaskState>, slot: TaskSlot) {
        if was.is_some_and(TaskState::is_finished) {
            self.forget_finished(&slot.queue, was.expect("checked"), 1);
        } else {
            self.remove(seq);
        }
        let queue = self.queue_name(&slot.queue);
        let q = self.queues.get_mut(&queue).expect("just interned");
        q.counts[usize::from(slot.state.code())] += 1;
        if slot.state.is_finished() {
            return;
        }
        match slot.state {
            TaskState::Scheduled => {
                self.scheduled.insert((slot.run_at, seq));
            }
            TaskState::Running => {
                q.running += 1;
                if let Some(expires_at) = slot.lease_expires_at {
                    self.leases.insert((expires_at, seq));
                }
            }
            _ => {}
        }
        match &slot.group {
            Some(group) => {
                let g = q.groups.entry(group.clone()).or_default();
                g.members.insert(seq);
                if slot.state == TaskState::Running {
                    g.running += 1;
                }
            }
            None if slot.state == TaskState::Ready => {
                q.ready.insert((Reverse(slot.priority), slot.run_at, seq));
            }
            None => {}
        }
        let group = slot.group.clone();
        self.tasks.insert(seq, slot);
        if let Some(group) = group {
            self.refresh_group(&queue, &group);
        }
    }

    /// Records `task` as it is now, after a transition from state `was` (`None` for
    /// a new task): [`Index::upsert`] with names interned. Call it once per applied
    /// transition, never for a refused or replayed one.
    pub fn upsert_task(&mut self, was: Option<TaskState>, task: &Task) {
        let queue = self.queue_name(&task.queue);
        let slot = TaskSlot {
            queue,
            priority: task.priority,
            run_at: task.run_at,
            group: task.group.as_deref().map(Arc::from),
            state: task.state,
            lease_expires_at: task
                .lease
                .as_ref()
                .filter(|_| task.state == TaskState::Running)
                .map(|l| l.expires_at),
        };
        self.upsert(task.id.seq(), was, slot);
    }

    /// Forgets the task `seq` entirely, count included (a purge, or before an update).
    fn remove(&mut self, seq: u64) {
        let Some(slot) = self.tasks.remove(&seq) else { return };
        let q = self.queues.get_mut(&slot.queue).expect("slot's queue is interned");
        q.counts[usize::from(slot.state.code())] -= 1;
        match slot.state {
            TaskState::Scheduled => {
                self.scheduled.remove(&(slot.run_at, seq));
            }
            TaskState::Running => {
                q.running -= 1;
                if let Some(expires_at) = slot.lease_expires_at {
                    self.leases.remove(&(expires_at, seq));
                }
            }
            _ => {}
        }
        match &slot.group {
            Some(group) => {
                let g = q.groups.get_mut(group).expect("member's group exists");
                g.members.remove(&seq);
                if slot.state == TaskState::Running {
                    g.running -= 1;
                }
                if g.offered.is_some_and(|(_, _, offered)| offered == seq) {
                    q.ready.remove(&g.offered.take().expect("checked"));
                }
                if g.members.is_empty() {
                    q.groups.remove(group);
                } else {
                    let group = group.clone();
                    let queue = slot.queue.clone();
                    self.refresh_group(&queue, &group);
                }
            }
            None => {
                q.ready.remove(&(Reverse(slot.priority), slot.run_at, seq));
            }
        }
    }

    /// Offers the group's oldest task in the ready set when it may run, and nothing
    /// else of the group.
    fn refresh_group(&mut self, queue: &str, group: &str) {
        let q = self.queues.get_mut(queue).expect("queue exists");
        let Some(g) = q.groups.get_mut(group) else { return };
        let wanted = match g.members.first() {
            Some(&head) if g.running == 0 => {
                let slot = &self.tasks[&head];
                (slot.state == TaskState::Ready).then_some((Reverse(slot.priority), slot.run_at, head))
            }
            _ => None,
        };
        if g.offered != wanted {
            if let Some(old) = g.offered.take() {
                q.ready.remove(&old);
            }
            if let Some(new) = wanted {
                q.ready.insert(new);
            }
            g.offered = wanted;
        }
    }

    /// Up to `max` tasks of `queue` that may be leased now, best first. The caller
    /// leases them and reports each with [`Index::upsert`] before picking again.
    pub fn pick(&self, queue: &str, max: usize) -> Vec<u64> {
        let Some(q) = self.queues.get(queue) else { return Vec::new() };
        if q.paused {
            return Vec::new();
        }
        let room = match q.concurrency {
            Some(limit) => limit.saturating_sub(q.running) as usize,
            None => usize::MAX,
        };
        q.ready.iter().take(max.min(room)).map(|&(_, _, seq)| seq).collect()
    }

    /// Scheduled tasks whose `run_at` has passed, oldest first, at most `max`.
    pub fn due(&self, now: Millis, max: usize) -> Vec<u64> {
        self.scheduled.iter().take_while(|(at, _)| *at <= now).take(max).map(|&(_, s)| s).collect()
    }

    /// Running tasks whose lease has expired, oldest first, at most `max`.
    pub fn expired(&self, now: Millis, max: usize) -> Vec<u64> {
        self.leases.iter().take_while(|(at, _)| *at <= now).take(max).map(|&(_, s)| s).collect()
    }

    /// The earliest time at which a scheduled task becomes due or a lease expires.
    pub fn next_timer(&self) -> Option<Millis> {
        let scheduled = self.scheduled.first().map(|&(at, _)| at);
        let lease = self.leases.first().map(|&(at, _)| at);
        match (scheduled, lease) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn get(&self, seq: u64) -> Option<&TaskSlot> {
        self.tasks.get(&seq)
    }

    /// Whether `queue` has a task that [`Index::pick`] would offer now.
    pub fn has_ready(&self, queue: &str) -> bool {
        !self.pick(queue, 1).is_empty()
    }

    /// Counts per state of `queue`, in the order of [`TaskState::ALL`].
    pub fn counts(&self, queue: &str) -> [u64; 6] {
        self.queues.get(queue).map_or([0; 6], |q| q.counts)
    }

    /// Adds `n` finished tasks of `state` to the counts of `queue` (at start-up,
    /// where finished tasks are counted, not indexed).
    pub fn add_finished(&mut self, queue: &str, state: TaskState, n: u64) {
        debug_assert!(state.is_finished());
        let name = self.queue_name(queue);
        self.queues.get_mut(&name).expect("interned").counts[usize::from(state.code())] += n;
    }

    /// Takes `n` purged finished tasks of `state` off the counts of `queue`.
    pub fn forget_finished(&mut self, queue: &str, state: TaskState, n: u64) {
        if let Some(q) = self.queues.get_mut(queue) {
            let count = &mut q.counts[usize::from(state.code())];
            *count = count.saturating_sub(n);
        }
    }

    /// Number of running tasks in `queue` and in its busiest group (for checks).
    pub fn running(&self, queue: &str) -> u32 {
        self.queues.get(queue).map_or(0, |q| q.running)
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

#[cfg(test)]
mod tests;
