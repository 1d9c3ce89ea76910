use super::*;
use proptest::prelude::*;

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
        attempts: 2,
        state: TaskState::Running,
        result: None,
        last_error: Some("timeout".into()),
        lease: Some(Lease {
            token: LeaseToken::new(2, 0xfeed),
            expires_at: 1_700_000_030_000,
            worker: Some("w-1".into()),
        }),
        created_at: 1_700_000_000_000,
        updated_at: 1_700_000_001_000,
        finished_at: None,
    }
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

#[test]
fn lease_fields_apply_to_the_task_they_came_from() {
    let before = task(3);
    let mut after = before.clone();
    after.attempts = 3;
    after.lease = Some(Lease { token: LeaseToken::new(3, 1), expires_at: 9, worker: None });
    after.updated_at += 5;
    let mut batch = Batch::default();
    batch.leased(&after);
    let Record::Leased(fields) = decode(&batch.take()).expect("decode").remove(0) else {
        panic!("not leased")
    };
    let mut replayed = before;
    fields.apply(&mut replayed);
    assert_eq!(replayed, after);
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
        lease in proptest::option::of((any::<u32>(), any::<u64>(), any::<i64>(), proptest::option::of("\\PC{0,8}"))),
        updated_at in any::<i64>(),
        finished_at in proptest::option::of(any::<i64>()),
    ) -> Task {
        Task {
            id: TaskId::new(created_at, seq),
            queue, kind, payload, priority, run_at, idempotency_key, group, max_attempts, attempts, state,
            result, last_error,
            lease: lease.map(|(attempt, random, expires_at, worker)| Lease {
                token: LeaseToken::new(attempt, random), expires_at, worker,
            }),
            created_at, updated_at, finished_at,
        }
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
