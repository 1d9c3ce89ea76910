//! The index on its own, and a property test that drives random operations through
//! the task transitions and the index together, the way a store does, and checks the
//! broker's invariants after every step.

use super::*;
use cherga_core::{AckOutcome, AttemptOutcome, History, LeaseToken, NewTask, QueueSettings, Refusal, Task};
use proptest::prelude::*;

const T0: Millis = 1_700_000_000_000;

fn new_task(priority: i32, group: Option<&str>, run_at: Option<Millis>) -> NewTask {
    NewTask {
        kind: "k".into(),
        payload: "{}".into(),
        priority,
        run_at,
        idempotency_key: None,
        group: group.map(str::to_owned),
        max_attempts: None,
    }
}

/// A tiny broker: tasks in a vector, the index beside them.
struct Sim {
    settings: QueueSettings,
    tasks: Vec<Task>,
    index: Index,
    now: Millis,
}

impl Sim {
    fn new(concurrency: Option<u32>) -> Self {
        let mut settings = QueueSettings::defaults();
        settings.concurrency = concurrency;
        settings.max_attempts = 3;
        let mut index = Index::new();
        index.configure_queue("q", concurrency, false);
        Self { settings, tasks: Vec::new(), index, now: T0 }
    }

    fn enqueue(&mut self, new: NewTask) -> usize {
        let seq = self.tasks.len() as u64 + 1;
        let task = Task::create("q", new, &self.settings, seq, self.now);
        self.index.upsert_task(None, &task);
        self.tasks.push(task);
        self.tasks.len() - 1
    }

    fn lease(&mut self, max: usize) -> Vec<usize> {
        let picked = self.index.pick("q", max);
        picked
            .into_iter()
            .map(|seq| {
                let i = seq as usize - 1;
                let task = &mut self.tasks[i];
                let worker = (seq % 2 == 0).then(|| format!("w-{seq}"));
                task.lease(seq, 1000, worker, self.now).expect("picked tasks are ready");
                self.index.upsert_task(Some(TaskState::Ready), task);
                i
            })
            .collect()
    }

    fn tick(&mut self) {
        for seq in self.index.due(self.now, usize::MAX) {
            let task = &mut self.tasks[seq as usize - 1];
            assert!(task.promote(self.now));
            self.index.upsert_task(Some(TaskState::Scheduled), task);
        }
        for seq in self.index.expired(self.now, usize::MAX) {
            let task = &mut self.tasks[seq as usize - 1];
            assert!(task.expire(&self.settings, 0.5, self.now));
            self.index.upsert_task(Some(TaskState::Running), task);
        }
    }

    /// Applies a transition to task `i` and tells the index when it changed the task.
    fn apply(&mut self, i: usize, transition: impl FnOnce(&mut Task) -> Result<bool, Refusal>) {
        let was = self.tasks[i].state;
        let before = self.tasks[i].clone();
        match transition(&mut self.tasks[i]) {
            Ok(true) => self.index.upsert_task(Some(was), &self.tasks[i]),
            Ok(false) => assert_eq!(self.tasks[i], before, "a replay changed the task"),
            Err(_) => assert_eq!(self.tasks[i], before, "a refusal changed the task"),
        }
    }

    fn token(&self, i: usize) -> LeaseToken {
        self.tasks[i].lease.as_ref().map_or(LeaseToken::from_string("none".into()), |l| l.token.clone())
    }

    fn leased_order(&mut self) -> Vec<usize> {
        let mut order = Vec::new();
        loop {
            let got = self.lease(1);
            let Some(&i) = got.first() else { break };
            order.push(i);
            let token = self.token(i);
            self.tasks[i].ack(&token, None, self.now).unwrap();
            self.index.upsert_task(Some(TaskState::Running), &self.tasks[i]);
        }
        order
    }
}

#[test]
fn priority_then_run_at_then_enqueue_order() {
    let mut sim = Sim::new(None);
    sim.enqueue(new_task(0, None, None));
    sim.enqueue(new_task(5, None, None));
    sim.enqueue(new_task(0, None, Some(T0 - 10)));
    sim.enqueue(new_task(5, None, None));
    assert_eq!(sim.leased_order(), vec![1, 3, 2, 0]);
}

#[test]
fn group_runs_one_at_a_time_in_enqueue_order_despite_priority() {
    let mut sim = Sim::new(None);
    sim.enqueue(new_task(0, Some("g"), None));
    sim.enqueue(new_task(9, Some("g"), None));
    sim.enqueue(new_task(1, None, None));
    let first = sim.lease(10);
    assert_eq!(first, vec![2, 0], "one task of the group at a time");
    assert!(sim.lease(10).is_empty());
    let token = sim.token(0);
    sim.tasks[0].ack(&token, None, sim.now).unwrap();
    sim.index.upsert_task(Some(TaskState::Running), &sim.tasks[0]);
    assert_eq!(sim.lease(10), vec![1]);
}

#[test]
fn group_waits_for_its_head_in_backoff() {
    let mut sim = Sim::new(None);
    sim.enqueue(new_task(0, Some("g"), None));
    sim.enqueue(new_task(0, Some("g"), None));
    assert_eq!(sim.lease(10), vec![0]);
    let token = sim.token(0);
    let settings = sim.settings.clone();
    sim.tasks[0].nack(&token, None, Some(100), false, &settings, 0.0, sim.now).unwrap();
    sim.index.upsert_task(Some(TaskState::Running), &sim.tasks[0]);
    assert!(sim.lease(10).is_empty(), "the second task must not overtake the first");
    sim.now += 100;
    sim.tick();
    assert_eq!(sim.lease(10), vec![0]);
}

#[test]
fn concurrency_limit_and_pause() {
    let mut sim = Sim::new(Some(2));
    for _ in 0..5 {
        sim.enqueue(new_task(0, None, None));
    }
    assert_eq!(sim.lease(10).len(), 2);
    assert!(sim.lease(10).is_empty());
    sim.index.configure_queue("q", Some(3), true);
    assert!(sim.lease(10).is_empty(), "paused");
    sim.index.configure_queue("q", Some(3), false);
    assert_eq!(sim.lease(10).len(), 1);
}

#[test]
fn a_loader_gives_back_the_room_of_chunks_it_filled_in_part() {
    let mut index = Index::new();
    {
        let mut loader = index.loader();
        let queue = loader.queue_id("q");
        let slot = TaskSlot {
            queue,
            priority: 0,
            run_at: 0,
            group: None,
            state: TaskState::Ready,
            lease_expires_at: None,
        };
        // One pending task in a thousand numbers (the rest finished or purged),
        // then the newest tasks far past them, in two chunks that follow each
        // other: the later one, made at full size, is where new tasks go.
        for seq in (0..50_000).step_by(1000) {
            loader.add(seq, slot.clone());
        }
        loader.add(940_000, slot.clone());
        loader.add(1_000_000, slot);
        loader.finish();
    }
    assert_eq!(index.len(), 52);
    assert!(index.tasks.room_of(0) < 1000, "room for {} in a chunk of 50 tasks", index.tasks.room_of(0));
    assert!(index.tasks.room_of(940_000) < 1000, "a chunk followed by another shrinks");
    assert!(index.tasks.room_of(1_000_000) > 50_000, "the newest chunk keeps its room");
    assert_eq!(index.pick("q", 100).len(), 52);
}

#[test]
fn timers_and_counts() {
    let mut sim = Sim::new(None);
    sim.enqueue(new_task(0, None, Some(T0 + 50)));
    sim.enqueue(new_task(0, None, None));
    assert_eq!(sim.index.next_timer(), Some(T0 + 50));
    let leased = sim.lease(1);
    assert_eq!(leased, vec![1]);
    assert_eq!(sim.index.next_timer(), Some(T0 + 50));
    assert_eq!(sim.index.counts("q"), [1, 0, 1, 0, 0, 0]);
    sim.now += 1000;
    sim.tick();
    assert_eq!(sim.index.counts("q"), [1, 1, 0, 0, 0, 0], "expired lease back to scheduled, other promoted");
    let q = sim.index.queue_id("q");
    sim.index.add_finished(q, TaskState::Succeeded, 4);
    sim.index.forget_finished("q", TaskState::Succeeded, 1);
    assert_eq!(sim.index.counts("q")[3], 3);
    assert_eq!(sim.index.counts("nope"), [0; 6]);
}

#[test]
fn oldest_ready_is_the_earliest_run_at_across_priorities() {
    let mut sim = Sim::new(None);
    assert_eq!(sim.index.oldest_ready("q"), None);
    sim.enqueue(new_task(5, None, Some(T0 - 10)));
    sim.enqueue(new_task(0, None, Some(T0 - 30)));
    sim.enqueue(new_task(9, None, Some(T0 - 20)));
    sim.enqueue(new_task(0, None, Some(T0 + 50)));
    // Scheduled tasks are not ready: T0 + 50 does not count.
    assert_eq!(sim.index.oldest_ready("q"), Some(T0 - 30));
    let leased = sim.lease(3);
    assert_eq!(leased, vec![2, 0, 1]);
    assert_eq!(sim.index.oldest_ready("q"), None, "running tasks are not ready");
    assert_eq!(sim.index.oldest_ready("nope"), None);
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue { priority: i32, group: Option<u8>, delay: Option<u8> },
    Lease(u8),
    Ack(u8),
    Nack { which: u8, dead: bool },
    StaleAck(u8),
    Extend(u8),
    Cancel(u8),
    Retry(u8),
    Advance(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..3i32, proptest::option::of(0..3u8), proptest::option::of(0..3u8))
            .prop_map(|(priority, group, delay)| Op::Enqueue { priority, group, delay }),
        (1..4u8).prop_map(Op::Lease),
        any::<u8>().prop_map(Op::Ack),
        (any::<u8>(), any::<bool>()).prop_map(|(which, dead)| Op::Nack { which, dead }),
        any::<u8>().prop_map(Op::StaleAck),
        any::<u8>().prop_map(Op::Extend),
        any::<u8>().prop_map(Op::Cancel),
        any::<u8>().prop_map(Op::Retry),
        (0..2500u16).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn random_operations_keep_the_invariants(
        concurrency in proptest::option::of(1..4u32),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut sim = Sim::new(concurrency);
        let groups = ["a", "b", "c"];
        // Every (task, token) ever handed out, to replay stale ones.
        let mut old_tokens: Vec<(usize, LeaseToken)> = Vec::new();
        for op in ops {
            let attempts_before: Vec<u32> = sim.tasks.iter().map(|t| t.attempts).collect();
            let pick = |n: u8, len: usize| (len > 0).then(|| usize::from(n) % len);
            match op {
                Op::Enqueue { priority, group, delay } => {
                    let run_at = delay.map(|d| sim.now + i64::from(d) * 100);
                    sim.enqueue(new_task(priority, group.map(|g| groups[usize::from(g)]), run_at));
                }
                Op::Lease(max) => {
                    for i in sim.lease(usize::from(max)) {
                        let task = &sim.tasks[i];
                        if let Some(group) = &task.group {
                            let older_unfinished = sim.tasks[..i].iter().any(|t| {
                                t.group.as_ref() == Some(group) && !t.state.is_finished()
                            });
                            prop_assert!(!older_unfinished, "task {i} of group {group} leased before an older one");
                        }
                        old_tokens.push((i, sim.token(i)));
                    }
                }
                Op::Ack(n) => if let Some(i) = pick(n, sim.tasks.len()) {
                    let token = sim.token(i);
                    let now = sim.now;
                    sim.apply(i, |t| t.ack(&token, Some("1".into()), now).map(|o| o == AckOutcome::Applied));
                },
                Op::Nack { which, dead } => if let Some(i) = pick(which, sim.tasks.len()) {
                    let token = sim.token(i);
                    let settings = sim.settings.clone();
                    let now = sim.now;
                    sim.apply(i, |t| {
                        t.nack(&token, Some("e".into()), None, dead, &settings, 0.3, now).map(|o| o == AckOutcome::Applied)
                    });
                },
                Op::StaleAck(n) => if let Some(k) = pick(n, old_tokens.len()) {
                    let (i, token) = old_tokens[k].clone();
                    let is_current = sim.tasks[i].state == TaskState::Running && sim.token(i) == token;
                    if !is_current {
                        let before = sim.tasks[i].clone();
                        match sim.tasks[i].ack(&token, None, sim.now) {
                            Err(Refusal::LeaseLost) => prop_assert_eq!(&sim.tasks[i], &before),
                            Ok(AckOutcome::Replayed) => prop_assert_eq!(&sim.tasks[i], &before),
                            other => prop_assert!(false, "stale token acked: {other:?}"),
                        }
                    }
                },
                Op::Extend(n) => if let Some(i) = pick(n, sim.tasks.len()) {
                    let token = sim.token(i);
                    let now = sim.now;
                    sim.apply(i, |t| t.extend(&token, 1000, now).map(|_| true));
                },
                Op::Cancel(n) => if let Some(i) = pick(n, sim.tasks.len()) {
                    let now = sim.now;
                    sim.apply(i, |t| t.cancel(now).map(|o| o == AckOutcome::Applied));
                },
                Op::Retry(n) => if let Some(i) = pick(n, sim.tasks.len()) {
                    let now = sim.now;
                    sim.apply(i, |t| t.retry(2, None, now).map(|()| true));
                },
                Op::Advance(ms) => {
                    sim.now += i64::from(ms);
                    sim.tick();
                }
            }
            // Invariants after every step.
            let running: Vec<&Task> = sim.tasks.iter().filter(|t| t.state == TaskState::Running).collect();
            if let Some(limit) = concurrency {
                prop_assert!(running.len() as u32 <= limit, "{} running above concurrency {limit}", running.len());
            }
            for g in groups {
                let n = running.iter().filter(|t| t.group.as_deref() == Some(g)).count();
                prop_assert!(n <= 1, "{n} tasks of group {g} running");
            }
            for (i, before) in attempts_before.iter().enumerate() {
                prop_assert!(sim.tasks[i].attempts >= *before, "attempts went back for task {i}");
            }
            for (i, task) in sim.tasks.iter().enumerate() {
                check_history(task).map_err(|e| TestCaseError::fail(format!("task {i}: {e}\n{task:#?}")))?;
            }
            let mut counts = [0u64; 6];
            for t in &sim.tasks {
                counts[usize::from(t.state.code())] += 1;
            }
            prop_assert_eq!(sim.index.counts("q"), counts);
            prop_assert_eq!(sim.index.running("q") as usize, running.len());
            // A restart: an index loaded from the tasks as they are now, the way a
            // store rebuilds it, offers the same tasks in the same order.
            let mut loaded = Index::new();
            loaded.configure_queue("q", concurrency, false);
            let mut loader = loaded.loader();
            for t in sim.tasks.iter().filter(|t| !t.state.is_finished()) {
                let queue = loader.queue_id(&t.queue);
                loader.add(t.id.seq(), TaskSlot::of(t, queue));
            }
            loader.finish();
            for state in TaskState::ALL.into_iter().filter(|s| s.is_finished()) {
                let q = loaded.queue_id("q");
                loaded.add_finished(q, state, counts[usize::from(state.code())]);
            }
            prop_assert_eq!(loaded.pick("q", usize::MAX), sim.index.pick("q", usize::MAX));
            prop_assert_eq!(loaded.counts("q"), counts);
            prop_assert_eq!(loaded.next_timer(), sim.index.next_timer());
            prop_assert_eq!(loaded.due(Millis::MAX, usize::MAX), sim.index.due(Millis::MAX, usize::MAX));
            prop_assert_eq!(loaded.expired(Millis::MAX, usize::MAX), sim.index.expired(Millis::MAX, usize::MAX));
        }
    }
}

/// The invariants of a task's attempt history, as the transitions keep them.
fn check_history(task: &Task) -> Result<(), String> {
    let entries: Vec<_> = task.attempt_history().collect();
    if entries.len() > History::MAX_ENTRIES || task.history.len() > History::MAX_ENTRIES {
        return Err(format!("{} entries, above the bound", entries.len()));
    }
    if entries.windows(2).any(|w| w[0].attempt >= w[1].attempt) {
        return Err("attempt numbers do not increase".into());
    }
    // Every lease is an attempt, and these tasks' errors are far below the
    // bound of error text: the first and the most recent ones are there.
    let expected_len = (task.attempts as usize).min(History::MAX_ENTRIES);
    if entries.len() != expected_len || entries.first().is_some_and(|e| e.attempt != 1) {
        return Err(format!("{} entries after {} attempts", entries.len(), task.attempts));
    }
    if entries.last().is_some_and(|e| e.attempt != task.attempts) {
        return Err("the last entry is not the last attempt".into());
    }
    let running: Vec<_> = entries.iter().filter(|e| e.outcome == AttemptOutcome::Running).collect();
    match (task.state == TaskState::Running, running.as_slice()) {
        (false, []) => {}
        (true, [entry]) => {
            let lease = task.lease.as_ref().ok_or("running without a lease")?;
            let is_last = std::ptr::eq(*entry, entries.last().expect("one entry"));
            if !is_last || entry.started_at != lease.leased_at || entry.worker != lease.worker.as_deref() {
                return Err("the running entry is not the current lease's".into());
            }
        }
        (is_running, running) => {
            return Err(format!("{} running entries while the task is running: {is_running}", running.len()));
        }
    }
    if entries.iter().any(|e| (e.outcome == AttemptOutcome::Running) == e.finished_at.is_some()) {
        return Err("finished_at does not match the outcome".into());
    }
    // `last_error` is the error of the last attempt that failed or expired.
    let last_failure =
        entries.iter().rev().find(|e| matches!(e.outcome, AttemptOutcome::Failed | AttemptOutcome::Expired));
    if task.last_error.as_deref() != last_failure.and_then(|e| e.error) {
        return Err("last_error is not the last failure's error".into());
    }
    Ok(())
}

#[test]
fn seq_hash_keeps_ranges_apart_and_runs_in_order() {
    use std::hash::BuildHasher;
    let hash = |seq: u64| SeqHash.hash_one(seq);
    let bucket = |seq: u64| hash(seq) & 0xffff;
    // Numbers below 2^32 keep their low bits: a run fills consecutive buckets.
    assert!((0..1000u64).all(|n| bucket(5_000 + n) == (5_000 + n) & 0xffff));
    // Two ranges far apart (two queues of the embedded store): within each, a
    // run still fills consecutive buckets; between them, the same positions in
    // the run land in different buckets.
    for (a, b) in [(1u64 << 40, 2u64 << 40), (2 << 40, 3 << 40), (7 << 40, 8 << 40)] {
        assert!(
            (0..1000u64)
                .all(|n| bucket(a + n + 1) == (bucket(a + n) + 1) & 0xffff || bucket(a + n) == 0xffff)
        );
        let shared = (0..1000u64).filter(|&n| bucket(a + n) == bucket(b + n)).count();
        assert_eq!(shared, 0, "ranges {a} and {b} share buckets");
    }
    // The tag bits at the top differ along a run.
    let tags: std::collections::HashSet<u64> = (0..128u64).map(|n| hash((3 << 40) + n) >> 57).collect();
    assert_eq!(tags.len(), 128);
}
