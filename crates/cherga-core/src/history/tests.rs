//! The bound of a history and the checks on stored entries, driven through one
//! `check` helper that prints the entries on failure.

use super::*;

fn entry(attempt: u32, outcome: AttemptOutcome, error: Option<String>) -> Attempt {
    let started_at = i64::from(attempt) * 10;
    Attempt {
        attempt,
        worker: Some("w".into()),
        started_at,
        finished_at: started_at + 5,
        outcome,
        error,
        payload_edit: None,
    }
}

/// Ends attempts `1..=n`, attempt `i` failing with `error(i)` (or succeeding
/// when that is `None`), and compares the attempt numbers kept and the bytes of
/// error text they hold with `expected`.
fn check(
    n: u32,
    error: impl Fn(u32) -> Option<String>,
    expected_attempts: &[u32],
    expected_error_bytes: usize,
) {
    let mut history = History::default();
    for i in 1..=n {
        let outcome = if error(i).is_some() { AttemptOutcome::Failed } else { AttemptOutcome::Succeeded };
        history.push(entry(i, outcome, error(i)));
    }
    let attempts: Vec<u32> = history.entries().iter().map(|e| e.attempt).collect();
    let bytes: usize = history.entries().iter().filter_map(|e| e.error.as_ref()).map(String::len).sum();
    assert_eq!(
        (attempts.as_slice(), bytes),
        (expected_attempts, expected_error_bytes),
        "history: {:#?}",
        history
            .entries()
            .iter()
            .map(|e| (e.attempt, e.outcome, e.error.as_ref().map(String::len)))
            .collect::<Vec<_>>()
    );
    assert!(history.len() <= History::MAX_ENTRIES);
}

#[test]
fn keeps_every_attempt_up_to_the_bound() {
    let all: Vec<u32> = (1..=100).collect();
    check(100, |_| Some("e".into()), &all, 100);
    check(3, |_| None, &[1, 2, 3], 0);
}

#[test]
fn keeps_the_first_and_the_most_recent_past_the_bound() {
    let kept: Vec<u32> = std::iter::once(1).chain(52..=150).collect();
    check(150, |_| Some("e".into()), &kept, 100);
    let kept: Vec<u32> = std::iter::once(1).chain(902..=1000).collect();
    check(1000, |i| (i % 2 == 0).then(|| "ee".to_owned()), &kept, 100);
}

#[test]
fn drops_the_oldest_but_the_first_while_errors_are_too_large() {
    let big = |n: usize| "x".repeat(n);
    // Four errors of 100 KiB are 400 KiB: only the first and the last stay.
    check(4, |_| Some(big(100 << 10)), &[1, 4], 200 << 10);
    // 64 KiB each: the first and the three most recent are 256 KiB, the bound.
    check(10, |_| Some(big(64 << 10)), &[1, 8, 9, 10], 256 << 10);
    // Attempts that succeeded hold no error text and are kept as others go.
    check(6, |i| (i != 6).then(|| big(100 << 10)), &[1, 5, 6], 200 << 10);
    // The first and the last stay whatever they hold.
    check(2, |_| Some(big(300 << 10)), &[1, 2], 600 << 10);
}

#[test]
fn a_first_entry_takes_room_for_one() {
    let mut history = History::default();
    history.push(entry(1, AttemptOutcome::Expired, Some("lease expired".into())));
    assert_eq!(history.entries.capacity(), 1, "room for the one attempt most tasks have");
    // A count that stands still (it saturates) replaces the last entry.
    history.push(entry(1, AttemptOutcome::Succeeded, None));
    assert_eq!(history.entries(), [entry(1, AttemptOutcome::Succeeded, None)]);
}

#[test]
fn stored_entries_are_checked_and_kept_within_the_bound() {
    use AttemptOutcome::*;
    let good = vec![entry(1, Failed, Some("e".into())), entry(3, Expired, None), entry(4, Succeeded, None)];
    assert_eq!(History::from_entries(good.clone()).map(|h| h.entries().to_vec()), Ok(good));
    assert_eq!(
        History::from_entries(vec![entry(2, Failed, None), entry(2, Failed, None)]),
        Err(HistoryError::OutOfOrder { previous: 2, attempt: 2 })
    );
    let error = History::from_entries(vec![entry(1, Running, None)]).unwrap_err();
    assert_eq!(error.to_string(), "attempt 1 of the history is running; a history holds finished attempts");
    let long: Vec<Attempt> = (1..=120).map(|i| entry(i, Succeeded, None)).collect();
    let kept = History::from_entries(long).expect("in order");
    assert_eq!(kept.len(), History::MAX_ENTRIES);
    assert_eq!(kept.entries()[..2].iter().map(|e| e.attempt).collect::<Vec<_>>(), [1, 22]);
}

#[test]
fn outcomes_round_trip_through_codes_and_names() {
    for o in AttemptOutcome::ALL {
        assert_eq!(AttemptOutcome::from_code(o.code()), Some(o));
        assert_eq!(AttemptOutcome::parse(o.as_str()), Some(o));
        assert_eq!(o.to_string(), o.as_str());
    }
    assert_eq!(AttemptOutcome::from_code(4), None);
    assert_eq!(AttemptOutcome::parse("dead"), None);
}
