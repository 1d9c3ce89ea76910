//! The index of unfinished tasks that decides which task is leased next.
//!
//! The embedded store keeps its rows in SQLite and this index in memory beside
//! them, and rebuilds it at start-up. It holds no payloads: only what ordering,
//! the group rule and the concurrency limit need. It knows nothing of SQL: the
//! engine tells it of every change.
//!
//! Invariants the index keeps, whatever sequence of [`Index::upsert`] calls it sees:
//! - a task is offered by [`Index::pick`] only when it is ready, its queue is not
//!   paused and below its `concurrency`, and, for a task in a group, it is the
//!   oldest unfinished task of its group and no task of the group is running;
//! - ready tasks are offered by priority (higher first), then `run_at`, then
//!   enqueue order (`seq`);
//! - counts per state are those of the tasks the index was told about.

use cherga_core::{Millis, Task, TaskState};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

mod slots;
use slots::Slots;

/// What the index is told about one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSlot {
    /// The index's number for the task's queue ([`Index::queue_id`]).
    pub queue: u32,
    pub priority: i32,
    pub run_at: Millis,
    pub group: Option<Arc<str>>,
    pub state: TaskState,
    /// The lease expiry when running.
    pub lease_expires_at: Option<Millis>,
}

impl TaskSlot {
    /// What the index needs of `task`, whose queue the index numbers `queue`.
    pub fn of(task: &Task, queue: u32) -> Self {
        TaskSlot {
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
        }
    }
}

/// What the index keeps of one unfinished task: 40 bytes, so that ten million
/// pending tasks fit in well under a gigabyte.
#[derive(Clone, Debug)]
struct Slot {
    /// `run_at` while scheduled or ready; the lease expiry while running
    /// ([`NO_LEASE`] for a running task without one).
    time: Millis,
    group: Option<Arc<str>>,
    /// Position in [`Index::queues`].
    queue: u32,
    priority: i32,
    state: TaskState,
}

/// The `time` of a running task that has no lease expiry.
const NO_LEASE: Millis = Millis::MAX;

type ReadyKey = (Reverse<i32>, Millis, u64);

/// Hashing for the maps of the index: foldhash, much cheaper than SipHash for
/// integer keys. Keys are sequence numbers and names the clients chose; foldhash's
/// per-process random seed keeps chosen group names from colliding on purpose.
type Hasher = foldhash::fast::RandomState;
type Map<K, V> = HashMap<K, V, Hasher>;

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
    groups: Map<Arc<str>, Group>,
    counts: [u64; 6],
}

impl QueueIndex {
    fn new() -> Self {
        Self {
            ready: BTreeSet::new(),
            running: 0,
            concurrency: None,
            paused: false,
            groups: Map::default(),
            counts: [0; 6],
        }
    }
}

/// Hashing of task sequence numbers, which a store assigns in order, in one
/// range or in several (the embedded store gives each queue a range of its own,
/// far apart): the low 32 bits stay as they are, so consecutive tasks sit in
/// consecutive buckets (a rebuild of 10 M tasks and a stream of enqueues walk
/// memory in order instead of missing the cache on every insert); the bits
/// above, which tell one range from another, are spread by a multiplication and
/// added, so that ranges do not pile onto the same buckets; and the low 7
/// bits are copied to the top, where the table takes its per-bucket tag from.
/// Clients cannot choose sequence numbers, so there are no crafted collisions
/// to fear.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeqHash;

impl std::hash::BuildHasher for SeqHash {
    type Hasher = SeqHasher;
    fn build_hasher(&self) -> SeqHasher {
        SeqHasher(0)
    }
}

#[doc(hidden)]
pub struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; anything else still hashes correctly.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        let h = n.wrapping_add((n >> 32).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        self.0 = h ^ (h << 57);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// Unfinished tasks by sequence number, with the ready sets and timers built over them.
#[derive(Debug, Default)]
pub struct Index {
    tasks: Slots<Slot>,
    /// Queues by position; [`Index::names`] maps a name to its position. A queue,
    /// once known, stays (queues are never deleted).
    queues: Vec<QueueIndex>,
    names: Map<Arc<str>, u32>,
    /// `(run_at, seq)` of scheduled tasks.
    scheduled: BTreeSet<(Millis, u64)>,
    /// `(expires_at, seq)` of running tasks.
    leases: BTreeSet<(Millis, u64)>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// The index's number for `queue` (its position), creating its entry if needed.
    pub fn queue_id(&mut self, queue: &str) -> u32 {
        if let Some(&id) = self.names.get(queue) {
            return id;
        }
        let id = u32::try_from(self.queues.len()).expect("fewer than 2^32 queues");
        self.queues.push(QueueIndex::new());
        self.names.insert(Arc::from(queue), id);
        id
    }

    fn queue(&self, queue: &str) -> Option<&QueueIndex> {
        self.names.get(queue).map(|&id| &self.queues[id as usize])
    }

    /// Sets the leasing limits of `queue`.
    pub fn configure_queue(&mut self, queue: &str, concurrency: Option<u32>, paused: bool) {
        let id = self.queue_id(queue);
        let q = &mut self.queues[id as usize];
        q.concurrency = concurrency;
        q.paused = paused;
    }

    /// Records that the task `seq`, which was in state `was` (`None` when new), is
    /// now as `slot` says. A finished task leaves the index; only its count remains,
    /// which is why the index must be told the state a finished task comes from.
    pub fn upsert(&mut self, seq: u64, was: Option<TaskState>, slot: TaskSlot) {
        self.upsert_deferring(seq, was, slot, false);
    }

    /// A loader of many tasks the index does not hold yet (at start-up): the same
    /// as [`Index::upsert`] with `was = None` for each, but the ready sets are
    /// built once, in [`Loader::finish`], from sorted keys — several times faster
    /// than inserting one key at a time, and the tree's nodes come out full.
    pub fn loader(&mut self) -> Loader<'_> {
        Loader { index: self, ready: Vec::new() }
    }

    /// [`Index::upsert`]; with `defer`, the ready key of a task outside groups is
    /// returned with its queue's position instead of entering the ready set.
    fn upsert_deferring(
        &mut self,
        seq: u64,
        was: Option<TaskState>,
        slot: TaskSlot,
        defer: bool,
    ) -> Option<(u32, ReadyKey)> {
        match was {
            Some(state) if state.is_finished() => self.forget_finished_at(slot.queue, state, 1),
            // The loader's tasks are new by its contract: nothing to take out.
            None if defer => debug_assert!(!self.tasks.contains_key(seq), "task {seq} is not new"),
            _ => self.remove(seq),
        }
        let queue = slot.queue;
        let q = &mut self.queues[queue as usize];
        q.counts[usize::from(slot.state.code())] += 1;
        if slot.state.is_finished() {
            return None;
        }
        let mut deferred = None;
        let time = match slot.state {
            TaskState::Scheduled => {
                self.scheduled.insert((slot.run_at, seq));
                slot.run_at
            }
            TaskState::Running => {
                q.running += 1;
                if let Some(expires_at) = slot.lease_expires_at {
                    self.leases.insert((expires_at, seq));
                }
                slot.lease_expires_at.unwrap_or(NO_LEASE)
            }
            _ => slot.run_at,
        };
        match &slot.group {
            Some(group) => {
                let g = q.groups.entry(group.clone()).or_default();
                g.members.insert(seq);
                if slot.state == TaskState::Running {
                    g.running += 1;
                }
            }
            None if slot.state == TaskState::Ready => {
                let key = (Reverse(slot.priority), slot.run_at, seq);
                if defer {
                    deferred = Some((queue, key));
                } else {
                    q.ready.insert(key);
                }
            }
            None => {}
        }
        let group = slot.group;
        self.tasks.insert(
            seq,
            Slot { time, group: group.clone(), queue, priority: slot.priority, state: slot.state },
        );
        if let Some(group) = group {
            self.refresh_group(queue, &group);
        }
        deferred
    }

    /// Records `task` as it is now, after a transition from state `was` (`None` for
    /// a new task): [`Index::upsert`] with names interned. Call it once per applied
    /// transition, never for a refused or replayed one.
    pub fn upsert_task(&mut self, was: Option<TaskState>, task: &Task) {
        let queue = self.queue_id(&task.queue);
        self.upsert(task.id.seq(), was, TaskSlot::of(task, queue));
    }

    /// Forgets the unfinished task `seq` entirely, count included: a task deleted
    /// before it finished (its queue deleted by force). A finished task is not
    /// held here; [`Index::forget_finished`] takes it off the counts.
    pub fn forget(&mut self, seq: u64) {
        self.remove(seq);
    }

    /// Forgets the task `seq` entirely, count included (a purge, or before an update).
    fn remove(&mut self, seq: u64) {
        let Some(slot) = self.tasks.remove(seq) else { return };
        let q = &mut self.queues[slot.queue as usize];
        q.counts[usize::from(slot.state.code())] -= 1;
        match slot.state {
            TaskState::Scheduled => {
                self.scheduled.remove(&(slot.time, seq));
            }
            TaskState::Running => {
                q.running -= 1;
                if slot.time != NO_LEASE {
                    self.leases.remove(&(slot.time, seq));
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
                    self.refresh_group(slot.queue, group);
                }
            }
            None => {
                if slot.state == TaskState::Ready {
                    q.ready.remove(&(Reverse(slot.priority), slot.time, seq));
                }
            }
        }
    }

    /// Offers the group's oldest task in the ready set when it may run, and nothing
    /// else of the group.
    fn refresh_group(&mut self, queue: u32, group: &str) {
        let q = &mut self.queues[queue as usize];
        let Some(g) = q.groups.get_mut(group) else { return };
        let wanted = match g.members.first() {
            Some(&head) if g.running == 0 => {
                let slot = self.tasks.get(head).expect("a group's members are indexed");
                (slot.state == TaskState::Ready).then_some((Reverse(slot.priority), slot.time, head))
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
        let Some(q) = self.queue(queue) else { return Vec::new() };
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

    /// The state of the unfinished task `seq`, if the index holds it.
    pub fn state_of(&self, seq: u64) -> Option<TaskState> {
        self.tasks.get(seq).map(|slot| slot.state)
    }

    /// The earliest `run_at` of the tasks of `queue` that [`Index::pick`] could
    /// offer (its ready set: pauses and the concurrency limit aside), if any: how
    /// long the oldest leasable task has waited. One step per distinct priority
    /// in the set, not per task: each priority's first key has its earliest
    /// `run_at`.
    pub fn oldest_ready(&self, queue: &str) -> Option<Millis> {
        use std::ops::Bound::{Excluded, Unbounded};
        let ready = &self.queue(queue)?.ready;
        let mut oldest: Option<Millis> = None;
        let mut next = ready.first();
        while let Some(&(priority, run_at, _)) = next {
            oldest = Some(oldest.map_or(run_at, |o| o.min(run_at)));
            next = ready.range((Excluded((priority, Millis::MAX, u64::MAX)), Unbounded)).next();
        }
        oldest
    }

    /// Counts per state of `queue`, in the order of [`TaskState::ALL`].
    pub fn counts(&self, queue: &str) -> [u64; 6] {
        self.queue(queue).map_or([0; 6], |q| q.counts)
    }

    /// Adds `n` finished tasks of `state` to the counts of queue number `queue` (at start-up,
    /// where finished tasks are counted, not indexed).
    pub fn add_finished(&mut self, queue: u32, state: TaskState, n: u64) {
        debug_assert!(state.is_finished());
        self.queues[queue as usize].counts[usize::from(state.code())] += n;
    }

    /// Takes `n` purged finished tasks of `state` off the counts of `queue`.
    pub fn forget_finished(&mut self, queue: &str, state: TaskState, n: u64) {
        if let Some(&id) = self.names.get(queue) {
            self.forget_finished_at(id, state, n);
        }
    }

    fn forget_finished_at(&mut self, queue: u32, state: TaskState, n: u64) {
        let count = &mut self.queues[queue as usize].counts[usize::from(state.code())];
        *count = count.saturating_sub(n);
    }

    /// Number of running tasks in `queue` and in its busiest group (for tests).
    #[cfg(test)]
    pub fn running(&self, queue: &str) -> u32 {
        self.queue(queue).map_or(0, |q| q.running)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.tasks.len()
    }
}

/// See [`Index::loader`]. Dropped without [`Loader::finish`], the tasks added
/// are in the index but not offered by [`Index::pick`].
pub struct Loader<'a> {
    index: &'a mut Index,
    /// Ready keys by queue position, for the queues' ready sets.
    ready: Vec<Vec<ReadyKey>>,
}

impl Loader<'_> {
    /// The index's number for `queue` (see [`Index::queue_id`]).
    pub fn queue_id(&mut self, queue: &str) -> u32 {
        self.index.queue_id(queue)
    }

    /// Adds the new task `seq`.
    pub fn add(&mut self, seq: u64, slot: TaskSlot) {
        if let Some((queue, key)) = self.index.upsert_deferring(seq, None, slot, true) {
            let queue = queue as usize;
            if self.ready.len() <= queue {
                self.ready.resize_with(queue + 1, Vec::new);
            }
            self.ready[queue].push(key);
        }
    }

    /// Builds the ready sets. Each queue's keys become its set in place: sorted
    /// in their vector, which the set is then built from, with no second copy.
    /// Then gives back the room of chunks the tasks loaded fill only in part
    /// (numbers whose tasks finished or were purged), which a chunk made at full
    /// size would otherwise keep.
    pub fn finish(self) {
        let Loader { index, ready } = self;
        index.tasks.shrink_to_fit();
        for (queue, keys) in ready.into_iter().enumerate() {
            let q = &mut index.queues[queue];
            if q.ready.is_empty() {
                q.ready = keys.into_iter().collect();
            } else {
                q.ready.extend(keys);
            }
        }
    }
}

#[cfg(test)]
mod tests;
