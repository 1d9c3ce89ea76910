use super::*;
use cherga_core::QueueSettings;
use proptest::prelude::*;

/// A task on its third attempt, the first having failed and the second expired.
fn task(seq: u64) -> Task {
    Task {
        id: TaskId::new(1_700_000_000_000, seq),
        queue: "jobs".into(),
        kind: "charge_card".into(),
        payload: r#"{"order":42,"note":"ünïcode ✓"}"#.into(),
        priority: -3,
        run_at: 1_700_000_000_500,
        idempotency_key: Some("order-42".into()),
        group: None,
        max_attempts: 25,
        attempts: 3,
        state: TaskState::Running,
        result: None,
        last_error: Some("lease expired".into()),
        lease: Some(Lease {
            token: LeaseToken::new(3, 0xfeed),
            expires_at: 1_700_000_030_000,
            worker: Some("w-1".into()),
            leased_at: 1_700_000_000_900,
        }),
        history: History::from_entries(vec![
            Attempt {
                attempt: 1,
                worker: None,
                started_at: 1_700_000_000_100,
                finished_at: 1_700_000_000_200,
                outcome: AttemptOutcome::Failed,
                error: Some("timeout".into()),
                payload_edit: None,
            },
            Attempt {
                attempt: 2,
                worker: Some("w-0".into()),
                started_at: 1_700_000_000_300,
                finished_at: 1_700_000_000_400,
                outcome: AttemptOutcome::Expired,
                error: Some("lease expired".into()),
                payload_edit: Some(Box::new(PayloadEdit {
                    at: 1_700_000_000_450, by: Some("ops@ü".into())
                })),
            },
        ])
        .expect("a history"),
        created_at: 1_700_000_000_000,
        updated_at: 1_700_000_001_000,
        finished_at: None,
    }
}

/// A task as format 1 wrote it: without history, and its lease without
/// `leased_at`.
fn format_1(task: &Task) -> Vec<u8> {
    let mut with_history = Vec::new();
    encode_task(&mut with_history, task);
    let mut b = vec![FORMAT_1];
    b.extend_from_slice(task.id.as_bytes());
    put_str(&mut b, &task.queue);
    put_str(&mut b, &task.kind);
    put_str(&mut b, &task.payload);
    b.extend_from_slice(&task.priority.to_le_bytes());
    b.extend_from_slice(&task.run_at.to_le_bytes());
    put_opt_str(&mut b, task.idempotency_key.as_deref());
    put_opt_str(&mut b, task.group.as_deref());
    b.extend_from_slice(&task.max_attempts.to_le_bytes());
    put_opt_str(&mut b, task.result.as_deref());
    put_opt_str(&mut b, task.last_error.as_deref());
    b.extend_from_slice(&task.created_at.to_le_bytes());
    match task.finished_at {
        Some(at) => {
            b.push(1);
            b.extend_from_slice(&at.to_le_bytes());
        }
        None => b.push(0),
    }
    put_lease_fields_1(&mut b, task);
    b
}

fn put_lease_fields_1(b: &mut Vec<u8>, task: &Task) {
    b.extend_from_slice(&task.attempts.to_le_bytes());
    b.push(task.state.code());
    match &task.lease {
        Some(lease) => {
            b.push(1);
            put_str(b, lease.token.as_str());
            b.extend_from_slice(&lease.expires_at.to_le_bytes());
            put_opt_str(b, lease.worker.as_deref());
        }
        None => b.push(0),
    }
    b.extend_from_slice(&task.updated_at.to_le_bytes());
}

fn lease_fields(task: &Task) -> LeaseFields {
    LeaseFields {
        seq: task.id.seq(),
        attempts: task.attempts,
        state: task.state,
        lease: task.lease.clone(),
        updated_at: task.updated_at,
    }
}

#[test]
fn records_come_back_in_order() {
    let first = task(7);
    let mut second = task(8);
    second.lease = None;
    second.state = TaskState::Ready;
    second.group = Some("customer-9".into());
    let mut batch = Batch::default();
    batch.created(&first);
    batch.leased(&second);
    batch.settled(7);
    batch.created(&second);
    let bytes = batch.take();
    assert!(batch.take().is_empty(), "take leaves an empty batch");
    assert_eq!(
        decode(&bytes).expect("decode"),
        vec![
            Record::Created(Box::new(first)),
            Record::Leased(lease_fields(&second)),
            Record::Settled(7),
            Record::Created(Box::new(second)),
        ]
    );
}

/// Replays the records of `batch` over `task`, as the engine does.
fn replay(batch: &mut Batch, task: &mut Task) {
    for record in decode(&batch.take()).expect("decode") {
        let Record::Leased(fields) = record else { panic!("not a lease: {record:?}") };
        fields.apply(task);
    }
}

#[test]
fn lease_fields_apply_to_the_task_they_came_from() {
    let settings = QueueSettings::defaults();
    let mut before = task(3);
    let token = before.lease.as_ref().expect("leased").token.clone();
    before.nack(&token, Some("e".into()), Some(0), false, &settings, 0.0, before.updated_at + 1).unwrap();
    before.promote(before.run_at);
    // A lease, then an extension: the history is as it was, the attempt is the lease.
    let mut after = before.clone();
    after.lease(1, 5_000, None, after.updated_at + 10).unwrap();
    let mut batch = Batch::default();
    batch.leased(&after);
    let token = after.lease.as_ref().expect("leased").token.clone();
    after.extend(&token, 9_000, after.updated_at + 20).unwrap();
    batch.leased(&after);
    let mut replayed = before.clone();
    replay(&mut batch, &mut replayed);
    assert_eq!(replayed, after);
    assert_eq!(replayed.attempt_history().count(), 4);

    // A lease record of format 1 starts its attempt at the record's time.
    let mut old = vec![FORMAT_1, LEASED];
    old.extend_from_slice(&after.id.seq().to_le_bytes());
    put_lease_fields_1(&mut old, &after);
    let Record::Leased(fields) = decode(&old).expect("decode").remove(0) else { panic!("not leased") };
    let mut replayed = before;
    fields.apply(&mut replayed);
    assert_eq!(replayed.lease.as_ref().map(|l| l.leased_at), Some(after.updated_at));
    assert_eq!(replayed.attempt_history().last().map(|e| e.started_at), Some(after.updated_at));
    assert_eq!(replayed.history, after.history);
}

#[test]
fn bodies_and_rows_of_format_1_are_read() {
    // A task stored then has no history, and its lease started at its last change.
    let mut done = task(5);
    let token = done.lease.as_ref().expect("leased").token.clone();
    done.ack(&token, Some("1".into()), done.updated_at + 5).unwrap();
    let mut expected = done.clone();
    expected.history = History::default();
    expected.lease.as_mut().expect("kept").leased_at = done.updated_at;
    assert_eq!(decode_task(&format_1(&done)), Ok(expected));
    let running = task(6);
    let decoded = decode_task(&format_1(&running)).expect("decode");
    let shown: Vec<_> = decoded.attempt_history().map(|e| (e.attempt, e.started_at, e.outcome)).collect();
    assert_eq!(shown, [(3, running.updated_at, AttemptOutcome::Running)]);
    // A journal row of format 1 holds such tasks.
    let mut row = format_1(&running);
    row.insert(1, CREATED);
    assert_eq!(decode(&row), Ok(vec![Record::Created(Box::new(decoded))]));
}

#[test]
fn a_finished_task_of_one_attempt_costs_little_history() {
    let mut new = task(9);
    new.attempts = 0;
    new.state = TaskState::Ready;
    new.lease = None;
    new.last_error = None;
    new.history = History::default();
    let mut leased = new.clone();
    leased.lease(7, 30_000, Some("worker-1".into()), new.updated_at + 1).unwrap();
    let mut acked = leased.clone();
    let token = leased.lease.as_ref().expect("leased").token.clone();
    acked.ack(&token, None, leased.updated_at + 2).unwrap();
    // What format 2 adds to a body over format 1.
    let added = |t: &Task| {
        let mut body = Vec::new();
        encode_task(&mut body, t);
        assert_eq!(decode_task(&body).as_ref(), Ok(t), "round trip");
        body.len() - format_1(t).len()
    };
    // A count of no entries.
    assert_eq!(added(&new), 4);
    // The lease's start and the count: the running attempt is the lease.
    assert_eq!(added(&leased), 8 + 4);
    // The ended attempt's flags and end; its attempt, worker and start are the
    // lease's.
    assert_eq!(added(&acked), 8 + 4 + 1 + 8);
    // A lease record is the lease's fields, its start among them: the entry
    // is left out.
    let mut batch = Batch::default();
    batch.leased(&leased);
    let mut old = vec![FORMAT_1, LEASED];
    old.extend_from_slice(&leased.id.seq().to_le_bytes());
    put_lease_fields_1(&mut old, &leased);
    assert_eq!(batch.take().len() - old.len(), 8);
}

#[test]
fn every_cut_of_a_row_is_refused_without_a_panic() {
    let mut batch = Batch::default();
    batch.created(&task(1));
    batch.leased(&task(1));
    batch.settled(1);
    let bytes = batch.take();
    // A cut at a record boundary (the format byte alone is a row of no records) is
    // a shorter valid row; every other cut is an error.
    let boundaries: Vec<usize> = {
        let mut b = Batch::default();
        let mut ends = vec![1];
        b.created(&task(1));
        ends.push(b.bytes.len());
        b.leased(&task(1));
        ends.push(b.bytes.len());
        ends
    };
    for cut in 0..bytes.len() {
        let result = decode(&bytes[..cut]);
        if boundaries.contains(&cut) {
            assert!(result.is_ok(), "cut at record boundary {cut}: {result:?}");
        } else {
            assert!(result.is_err(), "cut at {cut} of {} decoded: {result:?}", bytes.len());
        }
    }
}

#[test]
fn unknown_bytes_are_named() {
    assert_eq!(decode(&[9]).unwrap_err(), "unknown journal format 9");
    assert_eq!(decode(&[FORMAT, 77]).unwrap_err(), "unknown journal record tag 77 at byte 1");
    let mut batch = Batch::default();
    batch.leased(&task(1));
    let mut bytes = batch.take();
    // The state byte follows the tag, the sequence number and the attempts.
    bytes[1 + 1 + 8 + 4] = 42;
    assert_eq!(decode(&bytes).unwrap_err(), "unknown task state 42 in the journal");
    bytes[1 + 1 + 8 + 4] = TaskState::Running.code();
    bytes[1 + 1 + 8 + 4 + 1] = 2;
    assert!(decode(&bytes).unwrap_err().starts_with("journal flag byte is 2"));
}

fn any_state() -> impl Strategy<Value = TaskState> {
    proptest::sample::select(TaskState::ALL.to_vec())
}

/// Entries that make a history: finished, with increasing attempts.
fn any_history() -> impl Strategy<Value = History> {
    let entry = (
        1u32..4,
        proptest::option::of("\\PC{0,8}"),
        any::<i64>(),
        any::<i64>(),
        proptest::sample::select(AttemptOutcome::ALL[1..].to_vec()),
        proptest::option::of("\\PC{0,12}"),
        proptest::option::of((any::<i64>(), proptest::option::of("\\PC{0,8}"))),
    );
    proptest::collection::vec(entry, 0..5).prop_map(|entries| {
        let mut attempt = 0;
        let entries = entries
            .into_iter()
            .map(|(gap, worker, started_at, finished_at, outcome, error, edit)| {
                attempt += gap;
                let payload_edit = edit.map(|(at, by)| Box::new(PayloadEdit { at, by }));
                Attempt { attempt, worker, started_at, finished_at, outcome, error, payload_edit }
            })
            .collect();
        History::from_entries(entries).expect("made to be valid")
    })
}

prop_compose! {
    fn any_task()(
        seq in 0u64..(1 << 62),
        created_at in 0i64..(1 << 47),
        queue in "[a-z.]{1,8}",
        kind in "\\PC{0,12}",
        payload in "\\PC{0,40}",
        priority in any::<i32>(),
        run_at in any::<i64>(),
        idempotency_key in proptest::option::of("\\PC{0,10}"),
        group in proptest::option::of("\\PC{0,10}"),
        max_attempts in any::<u32>(),
        attempts in any::<u32>(),
        state in any_state(),
        result in proptest::option::of("\\PC{0,20}"),
        last_error in proptest::option::of("\\PC{0,20}"),
        lease in proptest::option::of((any::<u32>(), any::<u64>(), any::<i64>(), any::<i64>(), proptest::option::of("\\PC{0,8}"))),
        updated_at in any::<i64>(),
        finished_at in proptest::option::of(any::<i64>()),
        history in any_history(),
        of_lease in any::<bool>(),
    ) -> Task {
        let mut task = Task {
            id: TaskId::new(created_at, seq),
            queue, kind, payload, priority, run_at, idempotency_key, group, max_attempts, attempts, state,
            result, last_error,
            lease: lease.map(|(attempt, random, expires_at, leased_at, worker)| Lease {
                token: LeaseToken::new(attempt, random), expires_at, worker, leased_at,
            }),
            history, created_at, updated_at, finished_at,
        };
        // Half the time the last entry is the lease's, as after an ack or a nack.
        if let (true, Some(last), Some(lease)) = (of_lease, task.history.last(), task.lease.as_mut()) {
            task.attempts = last.attempt;
            lease.leased_at = last.started_at;
            lease.worker = last.worker.clone();
        }
        task
    }
}

proptest! {
    #[test]
    fn any_task_round_trips(tasks in proptest::collection::vec(any_task(), 1..5)) {
        let mut batch = Batch::default();
        for task in &tasks {
            batch.created(task);
            batch.leased(task);
        }
        let records = decode(&batch.take()).expect("decode");
        let mut expected = Vec::new();
        for task in tasks {
            expected.push(Record::Leased(lease_fields(&task)));
            expected.insert(expected.len() - 1, Record::Created(Box::new(task)));
        }
        prop_assert_eq!(records, expected);
    }
}

#[test]
fn corrupt_histories_are_named() {
    // `task(1)` has two entries, neither the lease's.
    let with = task(1);
    let mut without = with.clone();
    without.history = History::default();
    let encode = |t: &Task| {
        let mut body = Vec::new();
        encode_task(&mut body, t);
        body
    };
    // The count is the last thing before the entries.
    let at = encode(&without).len() - 4;
    let body = encode(&with);
    assert_eq!(body[at..at + 4], 2u32.to_le_bytes());
    let first_flags = at + 4;
    assert_eq!(body[first_flags], AttemptOutcome::Failed.code() | ENTRY_ERROR);

    let mut bad = body.clone();
    bad[first_flags] |= 0x80;
    assert_eq!(decode_task(&bad).unwrap_err(), format!("history entry flags 0x92 at byte {first_flags}"));

    let mut bad = body.clone();
    bad[first_flags + 1..first_flags + 5].copy_from_slice(&5u32.to_le_bytes());
    assert_eq!(decode_task(&bad).unwrap_err(), "attempt 2 of the history follows attempt 5");

    let mut bad = body.clone();
    bad[first_flags] = AttemptOutcome::Running.code() | ENTRY_ERROR;
    assert_eq!(
        decode_task(&bad).unwrap_err(),
        "attempt 1 of the history is running; a history holds finished attempts"
    );

    let mut leaseless = with.clone();
    leaseless.lease = None;
    let mut bad = encode(&leaseless);
    let at = encode(&Task { history: History::default(), ..leaseless.clone() }).len();
    assert!(decode_task(&bad).is_ok());
    bad[at] = AttemptOutcome::Failed.code() | ENTRY_OF_LEASE;
    assert_eq!(decode_task(&bad).unwrap_err(), "a history entry of the lease of a task without one");
}
