//! Every transition of a task, driven through one `check` helper that prints the
//! trace of states on failure.

use super::*;
use crate::history::History;
use crate::queue::QueueSettings;

const T0: Millis = 1_700_000_000_000;

fn settings() -> QueueSettings {
    let mut s = QueueSettings::defaults();
    s.max_attempts = 3;
    s.backoff.jitter = 0.0;
    s
}

fn new_task() -> NewTask {
    NewTask {
        kind: "charge".into(),
        payload: r#"{"order":1}"#.into(),
        priority: 0,
        run_at: None,
        idempotency_key: None,
        group: None,
        max_attempts: None,
    }
}

fn ready_task() -> Task {
    Task::create("payments", new_task(), &settings(), 7, T0)
}

/// Runs `steps` against a fresh ready task and compares the trace of
/// `(state, attempts, run_at - T0)` after each step with `expected`.
fn check(steps: &[&dyn Fn(&mut Task) -> String], expected: &[&str]) {
    let mut task = ready_task();
    let trace: Vec<String> = steps
        .iter()
        .map(|step| {
            let said = step(&mut task);
            format!("{said} -> {} a={} run_at=+{}", task.state, task.attempts, task.run_at - T0)
        })
        .collect();
    assert_eq!(trace, expected, "full trace:\n{}", trace.join("\n"));
}

fn token_of(task: &Task) -> LeaseToken {
    task.lease.as_ref().expect("task has a lease").token.clone()
}

#[test]
fn id_carries_time_and_sequence_and_round_trips() {
    let id = TaskId::new(T0, 123_456_789);
    assert_eq!(id.created_at(), T0);
    assert_eq!(id.seq(), 123_456_789);
    let text = id.to_string();
    assert_eq!(TaskId::parse(&text), Some(id));
    assert_eq!(&text[14..15], "7", "version nibble in {text}");
    assert!(TaskId::new(T0, 1) < TaskId::new(T0, 2));
    assert!(TaskId::new(T0, 2) < TaskId::new(T0 + 1, 1));
    assert_eq!(TaskId::parse("not-a-uuid"), None);
    assert_eq!(TaskId::parse("00000000-0000-4000-8000-000000000000"), None, "v4 is not ours");
}

#[test]
fn create_is_ready_now_or_scheduled_later() {
    assert_eq!(ready_task().state, TaskState::Ready);
    let later = Task::create("q", NewTask { run_at: Some(T0 + 5), ..new_task() }, &settings(), 1, T0);
    assert_eq!(later.state, TaskState::Scheduled);
    assert_eq!(later.max_attempts, 3, "takes the queue's max_attempts");
    let own = Task::create("q", NewTask { max_attempts: Some(9), ..new_task() }, &settings(), 1, T0);
    assert_eq!(own.max_attempts, 9);
}

#[test]
fn promote_only_when_due() {
    let mut t = Task::create("q", NewTask { run_at: Some(T0 + 5), ..new_task() }, &settings(), 1, T0);
    assert!(!t.promote(T0 + 4));
    assert_eq!(t.state, TaskState::Scheduled);
    assert!(t.promote(T0 + 5));
    assert_eq!(t.state, TaskState::Ready);
    assert!(!t.promote(T0 + 6), "ready is not promoted again");
}

#[test]
fn lease_then_ack_and_ack_again() {
    check(
        &[
            &|t| format!("{:?}", t.lease(1, 1000, Some("w".into()), T0)),
            &|t| {
                let tok = token_of(t);
                format!("{:?}", t.ack(&tok, Some("42".into()), T0 + 10))
            },
            &|t| {
                let tok = token_of(t);
                format!("{:?}", t.ack(&tok, Some("other".into()), T0 + 20))
            },
        ],
        &[
            "Ok(()) -> running a=1 run_at=+0",
            "Ok(Applied) -> succeeded a=1 run_at=+0",
            "Ok(Replayed) -> succeeded a=1 run_at=+0",
        ],
    );
    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let tok = token_of(&t);
    t.ack(&tok, Some("42".into()), T0 + 10).unwrap();
    t.ack(&tok, Some("other".into()), T0 + 20).unwrap();
    assert_eq!(t.result.as_deref(), Some("42"), "a replayed ack keeps the first result");
    assert_eq!(t.finished_at, Some(T0 + 10));
}

#[test]
fn stale_token_changes_nothing() {
    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let first = token_of(&t);
    assert!(t.expire(&settings(), 0.0, T0 + 1000));
    assert!(t.promote(t.run_at));
    t.lease(2, 1000, None, t.run_at).unwrap();
    let before = t.clone();
    let stale = || first.clone();
    assert_eq!(t.ack(&stale(), None, T0 + 5000), Err(Refusal::LeaseLost));
    assert_eq!(t.nack(&stale(), None, None, false, &settings(), 0.0, T0), Err(Refusal::LeaseLost));
    assert_eq!(t.extend(&stale(), 10, T0), Err(Refusal::LeaseLost));
    assert_eq!(t, before, "refusals leave the task untouched");
    assert_ne!(token_of(&t), first, "every delivery has a new token");
}

#[test]
fn nack_backs_off_then_dies_after_max_attempts() {
    let nack = |t: &mut Task| {
        let tok = token_of(t);
        format!("{:?}", t.nack(&tok, Some("boom".into()), None, false, &settings(), 0.0, t.updated_at))
    };
    let lease = |t: &mut Task| {
        let at = t.run_at;
        t.promote(at);
        format!("{:?}", t.lease(9, 100, None, at))
    };
    check(
        &[&lease, &nack, &lease, &nack, &lease, &nack],
        &[
            "Ok(()) -> running a=1 run_at=+0",
            "Ok(Applied) -> scheduled a=1 run_at=+1000",
            "Ok(()) -> running a=2 run_at=+1000",
            "Ok(Applied) -> scheduled a=2 run_at=+3000",
            "Ok(()) -> running a=3 run_at=+3000",
            "Ok(Applied) -> dead a=3 run_at=+3000",
        ],
    );
}

#[test]
fn nack_with_retry_in_or_dead_and_replay() {
    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let tok = token_of(&t);
    assert_eq!(
        t.nack(&tok, Some("later".into()), Some(50), false, &settings(), 0.0, T0),
        Ok(AckOutcome::Applied)
    );
    assert_eq!((t.state, t.run_at), (TaskState::Scheduled, T0 + 50));
    assert_eq!(t.nack(&tok, None, None, false, &settings(), 0.0, T0), Ok(AckOutcome::Replayed));
    assert_eq!(t.last_error.as_deref(), Some("later"));
    assert!(t.promote(T0 + 50));
    let promoted = t.clone();
    assert_eq!(
        t.nack(&tok, None, None, false, &settings(), 0.0, T0 + 60),
        Ok(AckOutcome::Replayed),
        "a nack replayed after the task became ready again"
    );
    assert_eq!(t, promoted);
    t.lease(2, 1000, None, T0 + 70).unwrap();
    assert_eq!(
        t.nack(&tok, None, None, false, &settings(), 0.0, T0 + 80),
        Err(Refusal::LeaseLost),
        "re-leased"
    );
    assert_eq!(t.ack(&tok, None, T0), Err(Refusal::LeaseLost), "a nacked lease cannot ack");

    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let tok = token_of(&t);
    t.nack(&tok, Some("poison".into()), None, true, &settings(), 0.0, T0).unwrap();
    assert_eq!(t.state, TaskState::Dead);
    assert_eq!(t.attempts, 1);
}

#[test]
fn expiry_only_after_the_lease_runs_out_and_extend_moves_it() {
    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let tok = token_of(&t);
    assert!(!t.expire(&settings(), 0.0, T0 + 999));
    assert_eq!(t.extend(&tok, 5000, T0 + 900), Ok(T0 + 5900));
    assert!(!t.expire(&settings(), 0.0, T0 + 5899));
    assert!(t.expire(&settings(), 0.0, T0 + 5900));
    assert_eq!(t.state, TaskState::Scheduled);
    assert_eq!(t.last_error.as_deref(), Some("lease expired"));
    assert_eq!(t.lease, None, "an expiry clears the token");
    assert_eq!(t.nack(&tok, None, None, false, &settings(), 0.0, T0), Err(Refusal::LeaseLost));
}

/// A lease ends at its `expires_at` whether or not a timer has expired the task:
/// an ack, nack or extend at or after it is refused and changes nothing, while
/// the same request a millisecond earlier is applied.
#[test]
fn a_lease_ends_at_its_expiry_even_before_the_timer_expires_it() {
    let leased = || {
        let mut t = ready_task();
        t.lease(1, 1000, None, T0).unwrap();
        t
    };
    let expiry = T0 + 1000;
    for now in [expiry, expiry + 1, expiry + 460] {
        let mut t = leased();
        let tok = token_of(&t);
        let before = t.clone();
        assert_eq!(t.ack(&tok, Some("late".into()), now), Err(Refusal::LeaseLost), "ack at +{}", now - T0);
        assert_eq!(
            t.nack(&tok, None, None, false, &settings(), 0.0, now),
            Err(Refusal::LeaseLost),
            "nack at +{}",
            now - T0
        );
        assert_eq!(t.extend(&tok, 5000, now), Err(Refusal::LeaseLost), "extend at +{}", now - T0);
        assert_eq!(t, before, "refusals at +{} leave the task running, for the timer", now - T0);
    }

    let mut t = leased();
    let tok = token_of(&t);
    assert_eq!(t.ack(&tok, Some("42".into()), expiry - 1), Ok(AckOutcome::Applied), "a millisecond early");
    let mut t = leased();
    let tok = token_of(&t);
    assert_eq!(t.extend(&tok, 1000, expiry - 1), Ok(expiry + 999));
    assert_eq!(t.ack(&tok, None, expiry + 500), Ok(AckOutcome::Applied), "the extended lease holds");
    let mut t = leased();
    let tok = token_of(&t);
    assert_eq!(t.nack(&tok, None, None, false, &settings(), 0.0, expiry - 1), Ok(AckOutcome::Applied));
}

/// An ack or nack applied in time and sent again after the lease's expiry is a
/// replay, answered as the first time: the worker may not have heard the first
/// answer.
#[test]
fn a_replay_after_the_expiry_still_succeeds() {
    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let tok = token_of(&t);
    t.ack(&tok, Some("42".into()), T0 + 999).unwrap();
    let acked = t.clone();
    assert_eq!(t.ack(&tok, Some("42".into()), T0 + 60_000), Ok(AckOutcome::Replayed));
    assert_eq!(t, acked, "a replay changes nothing");

    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let tok = token_of(&t);
    t.nack(&tok, Some("boom".into()), Some(50_000), false, &settings(), 0.0, T0 + 999).unwrap();
    let nacked = t.clone();
    assert_eq!(t.nack(&tok, None, None, false, &settings(), 0.0, T0 + 60_000), Ok(AckOutcome::Replayed));
    assert_eq!(t, nacked, "a replay changes nothing");
}

#[test]
fn expiry_of_last_attempt_is_dead() {
    let mut t = Task::create("q", NewTask { max_attempts: Some(1), ..new_task() }, &settings(), 1, T0);
    t.lease(1, 10, None, T0).unwrap();
    assert!(t.expire(&settings(), 0.0, T0 + 10));
    assert_eq!(t.state, TaskState::Dead);
    assert_eq!(t.finished_at, Some(T0 + 10));
}

#[test]
fn cancel_from_waiting_states_only() {
    let mut t = ready_task();
    assert_eq!(t.cancel(T0), Ok(AckOutcome::Applied));
    assert_eq!(t.cancel(T0 + 1), Ok(AckOutcome::Replayed));
    assert_eq!(t.state, TaskState::Cancelled);

    let mut t = ready_task();
    t.lease(1, 10, None, T0).unwrap();
    let err = t.cancel(T0).unwrap_err();
    assert_eq!(
        err,
        Refusal::InvalidState {
            state: TaskState::Running,
            operation: "cancel",
            needed: "scheduled or ready"
        }
    );
    assert_eq!(err.to_string(), "task is running; cancel needs it to be scheduled or ready");
}

#[test]
fn retry_only_dead_and_attempts_never_go_back() {
    let mut t = Task::create("q", NewTask { max_attempts: Some(1), ..new_task() }, &settings(), 1, T0);
    assert!(matches!(t.retry(5, None, T0), Err(Refusal::InvalidState { .. })));
    t.lease(1, 10, None, T0).unwrap();
    let tok = token_of(&t);
    t.nack(&tok, None, None, false, &settings(), 0.0, T0).unwrap();
    assert_eq!(t.state, TaskState::Dead);
    t.retry(5, None, T0 + 1).unwrap();
    assert_eq!((t.state, t.attempts, t.max_attempts), (TaskState::Ready, 1, 6));
    assert_eq!(t.finished_at, None);
    assert_eq!(
        t.nack(&tok, None, None, false, &settings(), 0.0, T0),
        Err(Refusal::LeaseLost),
        "the old lease is gone"
    );
}

#[test]
fn fingerprint_sees_every_requested_field_but_run_at() {
    let base = fingerprint(&new_task());
    assert_eq!(base, fingerprint(&new_task()));
    assert_eq!(base, fingerprint(&NewTask { run_at: Some(5), ..new_task() }));
    assert_eq!(base, fingerprint(&NewTask { idempotency_key: Some("k".into()), ..new_task() }));
    for other in [
        NewTask { kind: "refund".into(), ..new_task() },
        NewTask { payload: r#"{"order":2}"#.into(), ..new_task() },
        NewTask { priority: 1, ..new_task() },
        NewTask { group: Some("g".into()), ..new_task() },
        NewTask { max_attempts: Some(3), ..new_task() },
    ] {
        assert_ne!(base, fingerprint(&other), "{other:?}");
    }
}

#[test]
fn a_held_key_replays_the_same_request_and_refuses_another() {
    let first = NewTask { idempotency_key: Some("k".into()), ..new_task() };
    let print = fingerprint(&first);
    assert_eq!(resolve_key(print, &first), KeyResolution::Replay);
    // A retry may come with a new `run_at` and is still the same request.
    assert_eq!(resolve_key(print, &NewTask { run_at: Some(T0 + 5), ..first.clone() }), KeyResolution::Replay);
    let other = NewTask { payload: r#"{"order":2}"#.into(), ..first };
    assert_eq!(resolve_key(print, &other), KeyResolution::Reused);
}

#[test]
fn states_round_trip_through_codes_and_names() {
    for s in TaskState::ALL {
        assert_eq!(TaskState::from_code(s.code()), Some(s));
        assert_eq!(TaskState::parse(s.as_str()), Some(s));
    }
    assert_eq!(TaskState::parse("done"), None);
    assert_eq!(TaskState::from_code(6), None);
}

#[test]
fn lease_tokens_are_the_attempt_and_sixteen_hex_digits() {
    for (attempt, random) in
        [(0, 0), (1, 0xabc), (7, u64::MAX), (10, 1 << 63), (u32::MAX, 0x0123_4567_89ab_cdef)]
    {
        assert_eq!(LeaseToken::new(attempt, random).as_str(), format!("{attempt}.{random:016x}"));
    }
}

/// The attempt history of `task`, one line per entry: `attempt worker
/// +started..+finished outcome error`, times from `T0`, and `; payload edited by
/// who at +time` after an attempt whose payload was edited.
fn history_lines(task: &Task) -> Vec<String> {
    task.attempt_history()
        .map(|e| {
            let finished = e.finished_at.map_or("".to_owned(), |at| format!("+{}", at - T0));
            let edit = e.payload_edit.map_or(String::new(), |edit| {
                format!("; payload edited by {} at +{}", edit.by.as_deref().unwrap_or("-"), edit.at - T0)
            });
            format!(
                "{} {} +{}..{finished} {} {}{edit}",
                e.attempt,
                e.worker.unwrap_or("-"),
                e.started_at - T0,
                e.outcome,
                e.error.unwrap_or("-")
            )
        })
        .collect()
}

/// Runs `steps` against a fresh ready task (3 attempts, backoff 1 s doubling)
/// and compares its attempt history after them with `expected`.
fn check_history(steps: &[&dyn Fn(&mut Task)], expected: &[&str]) {
    let mut task = ready_task();
    for step in steps {
        step(&mut task);
    }
    assert_eq!(history_lines(&task), expected, "history of {task:#?}");
}

/// Leases the task at `at` (promoting it first) for 1 s, for `worker`.
fn lease_at(worker: Option<&'static str>, at: i64) -> impl Fn(&mut Task) {
    move |t| {
        t.promote(T0 + at);
        t.lease(at as u64, 1000, worker.map(str::to_owned), T0 + at).expect("ready to lease");
    }
}

fn ack_at(at: i64) -> impl Fn(&mut Task) {
    move |t| {
        let tok = token_of(t);
        assert_eq!(t.ack(&tok, Some("1".into()), T0 + at), Ok(AckOutcome::Applied));
        assert_eq!(t.ack(&tok, None, T0 + at + 1), Ok(AckOutcome::Replayed));
    }
}

fn nack_at(at: i64, error: &'static str, dead: bool) -> impl Fn(&mut Task) {
    move |t| {
        let tok = token_of(t);
        let nack = |t: &mut Task| t.nack(&tok, Some(error.into()), Some(0), dead, &settings(), 0.0, T0 + at);
        assert_eq!(nack(t), Ok(AckOutcome::Applied));
        assert_eq!(nack(t), Ok(AckOutcome::Replayed));
    }
}

fn expire_at(at: i64) -> impl Fn(&mut Task) {
    move |t| assert!(t.expire(&settings(), 0.0, T0 + at), "expires at +{at}")
}

#[test]
fn history_of_an_ack() {
    check_history(&[&lease_at(Some("w-1"), 0)], &["1 w-1 +0.. running -"]);
    check_history(&[&lease_at(Some("w-1"), 5), &ack_at(10)], &["1 w-1 +5..+10 succeeded -"]);
}

#[test]
fn history_of_nacks_expiries_and_a_retry() {
    check_history(
        &[
            &lease_at(Some("w-1"), 0),
            &nack_at(10, "boom", false),
            &lease_at(Some("w-2"), 20),
            // The lease ran out at +1020; the timer noticed at +1500 and
            // backed off 2 s.
            &expire_at(1500),
            &lease_at(None, 3500),
            &nack_at(3600, "poison", true),
            &|t| t.retry(2, None, T0 + 3700).expect("dead"),
            &lease_at(Some("w-3"), 3800),
        ],
        &[
            "1 w-1 +0..+10 failed boom",
            "2 w-2 +20..+1020 expired lease expired",
            "3 - +3500..+3600 failed poison",
            "4 w-3 +3800.. running -",
        ],
    );
}

/// A retry with a new payload replaces the payload and marks the attempt that
/// ended dead with who edited it and when; the attempts after it run with the
/// new payload, and a later edit marks its own attempt.
#[test]
fn a_retry_with_a_new_payload_records_the_edit() {
    let edit = |payload: &'static str, by: Option<&'static str>, at: i64| {
        move |t: &mut Task| {
            let new = NewPayload { payload: payload.into(), by: by.map(str::to_owned) };
            t.retry(1, Some(new), T0 + at).expect("dead");
            assert_eq!(t.payload, payload);
            assert_eq!((t.state, t.updated_at), (TaskState::Ready, T0 + at));
        }
    };
    check_history(
        &[
            &lease_at(Some("w-1"), 0),
            &nack_at(10, "bad order", true),
            &edit(r#"{"order":2}"#, Some("alice"), 20),
            &lease_at(Some("w-2"), 30),
            &nack_at(40, "still bad", true),
            &edit("null", None, 50),
            &lease_at(None, 60),
        ],
        &[
            "1 w-1 +0..+10 failed bad order; payload edited by alice at +20",
            "2 w-2 +30..+40 failed still bad; payload edited by - at +50",
            "3 - +60.. running -",
        ],
    );
}

/// A refused retry leaves the payload and the history as they were.
#[test]
fn a_refused_retry_with_a_new_payload_changes_nothing() {
    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    let before = t.clone();
    let new = NewPayload { payload: "{}".into(), by: Some("alice".into()) };
    assert_eq!(
        t.retry(1, Some(new), T0 + 1),
        Err(Refusal::InvalidState { state: TaskState::Running, operation: "retry", needed: "dead" })
    );
    assert_eq!(t, before);
}

/// A dead task stored before histories were kept has no entry of its last
/// attempt: the edit gets one, made of what the task knows.
#[test]
fn a_payload_edit_of_a_task_without_a_history_makes_its_entry() {
    let mut t = ready_task();
    t.lease(1, 1000, None, T0).unwrap();
    t.expire(&settings(), 0.0, T0 + 1000);
    for at in [3000, 7000] {
        t.promote(T0 + at);
        t.lease(1, 1000, None, T0 + at).unwrap();
        t.expire(&settings(), 0.0, T0 + at + 1000);
    }
    assert_eq!((t.state, t.attempts), (TaskState::Dead, 3));
    t.history = History::default();
    let new = NewPayload { payload: "{}".into(), by: Some("bob".into()) };
    t.retry(1, Some(new), T0 + 9000).unwrap();
    assert_eq!(history_lines(&t), ["3 - +8000..+8000 expired lease expired; payload edited by bob at +9000"]);
}

#[test]
fn history_keeps_the_first_attempt_and_the_most_recent() {
    let mut task = Task::create("q", NewTask { max_attempts: Some(1000), ..new_task() }, &settings(), 1, T0);
    let mut running_lengths = Vec::new();
    for i in 0..150 {
        let at = T0 + i * 10;
        task.promote(at);
        task.lease(1, 1000, None, at).unwrap();
        running_lengths.push(task.attempt_history().count());
        let tok = token_of(&task);
        task.nack(&tok, Some(format!("e{}", i + 1)), Some(0), false, &settings(), 0.0, at + 1).unwrap();
    }
    let entries = task.history.entries();
    assert_eq!(entries.len(), History::MAX_ENTRIES);
    let numbers: Vec<u32> = entries.iter().map(|e| e.attempt).collect();
    assert_eq!(numbers[..3], [1, 52, 53]);
    assert_eq!(numbers.last(), Some(&150));
    assert_eq!(entries[0].error.as_deref(), Some("e1"), "the first attempt is kept");
    assert_eq!(
        task.last_error.as_deref(),
        entries[99].error.as_deref(),
        "the last one's error is last_error"
    );
    assert_eq!(running_lengths[..3], [1, 2, 3]);
    assert!(running_lengths[99..].iter().all(|&n| n == History::MAX_ENTRIES), "{running_lengths:?}");

    // While the 151st attempt runs, the history shows it in place of the oldest but the first.
    task.promote(T0 + 2000);
    task.lease(1, 1000, None, T0 + 2000).unwrap();
    let shown: Vec<u32> = task.attempt_history().map(|e| e.attempt).collect();
    assert_eq!(shown.len(), History::MAX_ENTRIES);
    assert_eq!((shown[..2].to_vec(), shown[98..].to_vec()), (vec![1, 53], vec![150, 151]));
}

#[test]
fn the_running_attempt_is_the_lease() {
    let mut t = ready_task();
    t.lease(1, 1000, Some("w".into()), T0 + 5).unwrap();
    assert!(t.history.is_empty(), "a lease stores no entry: {t:?}");
    let tok = token_of(&t);
    t.extend(&tok, 2000, T0 + 50).unwrap();
    assert_eq!(history_lines(&t), ["1 w +5.. running -"], "an extension is the same attempt");
    t.ack(&tok, None, T0 + 60).unwrap();
    assert_eq!(history_lines(&t), ["1 w +5..+60 succeeded -"]);
    assert_eq!(t.history.len(), 1);
}
