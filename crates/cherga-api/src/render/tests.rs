use super::*;
use crate::{BatchItem, BatchResponse, LeaseResponse, TaskList, TaskView};
use cherga_core::{Attempt, AttemptOutcome, History, Lease, LeaseToken, PayloadEdit};
use proptest::prelude::*;

fn serde_bytes(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize")
}

fn sample() -> Task {
    Task {
        id: TaskId::new(1_764_567_890_123, 42),
        queue: "payments".into(),
        kind: "charge \"card\"\n\\ ✓".into(),
        payload: r#"{"order":42,"note":"ünïcode \"q\""}"#.into(),
        priority: -7,
        run_at: 1_764_567_890_123,
        idempotency_key: Some("order-42\u{1}".into()),
        group: None,
        max_attempts: 25,
        attempts: 2,
        state: TaskState::Running,
        result: None,
        last_error: Some("tab\there".into()),
        lease: Some(Lease {
            token: LeaseToken::new(2, 0xabc),
            expires_at: 1_764_567_920_123,
            worker: Some("w\u{7f}".into()),
            leased_at: 1_764_567_890_150,
        }),
        history: History::from_entries(vec![Attempt {
            attempt: 1,
            worker: None,
            started_at: 1_764_567_890_124,
            finished_at: 1_764_567_890_140,
            outcome: AttemptOutcome::Failed,
            error: Some("tab\there".into()),
            payload_edit: Some(Box::new(PayloadEdit {
                at: 1_764_567_890_145, by: Some("ops \"ü\"".into())
            })),
        }])
        .expect("a history"),
        created_at: 1_764_567_890_123,
        updated_at: 1_764_567_890_200,
        finished_at: None,
    }
}

#[test]
fn a_task_is_written_as_serde_writes_its_view() {
    let task = sample();
    let mut out = Vec::new();
    super::task(&mut out, &task, View::Public);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(serde_bytes(&TaskView::from_task(&task))).unwrap()
    );
    let mut out = Vec::new();
    super::task(&mut out, &task, View::Leased);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        String::from_utf8(serde_bytes(&TaskView::leased(&task))).unwrap()
    );
}

/// The wire format of a history, which clients read field by field.
#[test]
fn a_history_is_an_array_of_attempts_in_order() {
    let mut out = Vec::new();
    super::task(&mut out, &sample(), View::Public);
    let value: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(
        value["history"],
        serde_json::json!([
            {"attempt": 1, "worker": null, "started_at": "2025-12-01T05:44:50.124Z",
             "finished_at": "2025-12-01T05:44:50.140Z", "outcome": "failed", "error": "tab\there",
             "payload_edit": {"at": "2025-12-01T05:44:50.145Z", "by": "ops \"ü\""}},
            {"attempt": 2, "worker": "w\u{7f}", "started_at": "2025-12-01T05:44:50.150Z",
             "finished_at": null, "outcome": "running", "error": null},
        ])
    );
    let mut new = sample();
    new.history = History::default();
    (new.state, new.lease) = (TaskState::Ready, None);
    let mut out = Vec::new();
    super::task(&mut out, &new, View::Public);
    assert!(String::from_utf8(out).unwrap().contains(r#","history":[]"#), "an empty history is written");
    let old: TaskView = serde_json::from_value({
        let mut v = value.clone();
        v.as_object_mut().unwrap().remove("history");
        v
    })
    .expect("an answer without history");
    assert!(old.history.is_empty(), "read as empty");
}

#[test]
fn lists_leases_and_batches_are_written_as_serde_writes_them() {
    let mut done = sample();
    done.state = TaskState::Succeeded;
    done.result = Some(r#"{"charge":"ch_1"}"#.into());
    done.finished_at = Some(done.updated_at);
    let tasks = [sample(), done.clone()];
    let lease = LeaseResponse { tasks: tasks.iter().map(TaskView::leased).collect(), acks: None };
    assert_eq!(super::tasks(&tasks, View::Leased, None), serde_bytes(&lease));
    assert_eq!(
        super::tasks([], View::Leased, None),
        serde_bytes(&LeaseResponse { tasks: vec![], acks: None })
    );
    for next in [None, Some("01a2306c-0964-7000-8000-000000000001")] {
        let list = TaskList {
            tasks: tasks.iter().map(TaskView::from_task).collect(),
            next: next.map(str::to_owned),
        };
        assert_eq!(super::tasks(&tasks, View::Public, Some(next)), serde_bytes(&list));
    }
    let error = WireError {
        code: "lease_lost".into(),
        message: "the \"lease\" expired".into(),
        violations: Vec::new(),
    };
    let items = vec![
        BatchItem { status: 201, id: None, task: Some(TaskView::from_task(&tasks[0])), error: None },
        BatchItem { status: 200, id: Some(done.id.to_string()), task: None, error: None },
        BatchItem { status: 409, id: None, task: None, error: Some(error.clone()) },
    ];
    let ours =
        super::batch([Item::Task(201, &tasks[0]), Item::Id(200, &done), Item::Error(409, error.clone())]);
    assert_eq!(
        String::from_utf8(ours).unwrap(),
        String::from_utf8(serde_bytes(&BatchResponse { results: items.clone() })).unwrap()
    );
    let ours = super::lease_with_acks(
        &tasks[..1],
        View::Leased,
        [Item::Task(201, &tasks[0]), Item::Id(200, &done), Item::Error(409, error)],
    );
    let lease = LeaseResponse { tasks: vec![TaskView::leased(&tasks[0])], acks: Some(items) };
    assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(serde_bytes(&lease)).unwrap());
    let none = super::lease_with_acks([], View::Leased, []);
    assert_eq!(none, serde_bytes(&LeaseResponse { tasks: vec![], acks: Some(vec![]) }));
}

#[test]
fn times_are_written_as_humantime_writes_them() {
    use std::time::{Duration, UNIX_EPOCH};
    let humantime = |ms: i64| {
        humantime::format_rfc3339_millis(
            UNIX_EPOCH + Duration::from_millis(ms.clamp(0, crate::time::MAX_MILLIS) as u64),
        )
        .to_string()
    };
    let edges = [
        -5,
        0,
        1,
        86_399_999,
        86_400_000,
        951_782_400_000,    // 2000-02-29
        4_107_542_400_000,  // 2100-03-01
        13_574_563_200_000, // 2400-02-29
        crate::time::MAX_MILLIS,
        i64::MAX,
    ];
    for ms in edges {
        assert_eq!(Timestamp(ms).to_rfc3339(), humantime(ms), "{ms}");
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..100_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let ms = (rng % (crate::time::MAX_MILLIS as u64 + 1)) as i64;
        assert_eq!(Timestamp(ms).to_rfc3339(), humantime(ms), "{ms}");
    }
}

fn any_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
    .prop_map(|v| v.to_string())
}

/// Strings with what JSON must escape: quotes, backslashes, control characters.
fn any_text() -> impl Strategy<Value = String> {
    "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}]){0,12}"
}

/// Histories of up to four finished attempts (a running task adds its lease's).
fn any_history() -> impl Strategy<Value = History> {
    let entry = (
        1u32..1000,
        proptest::option::of(any_text()),
        proptest::array::uniform2(-10i64..300_000_000_000_000),
        proptest::sample::select(AttemptOutcome::ALL[1..].to_vec()),
        proptest::option::of(any_text()),
        proptest::option::of((-10i64..300_000_000_000_000, proptest::option::of(any_text()))),
    );
    proptest::collection::vec(entry, 0..4).prop_map(|entries| {
        let mut attempt = 0;
        let entries = entries
            .into_iter()
            .map(|(gap, worker, times, outcome, error, edit)| {
                attempt += gap;
                let payload_edit = edit.map(|(at, by)| Box::new(PayloadEdit { at, by }));
                let (started_at, finished_at) = (times[0], times[1]);
                Attempt { attempt, worker, started_at, finished_at, outcome, error, payload_edit }
            })
            .collect();
        History::from_entries(entries).expect("made to be valid")
    })
}

prop_compose! {
    fn any_task()(
        seq in 0u64..(1 << 62),
        created_at in -10i64..(1i64 << 48),
        queue in "[A-Za-z0-9_.-]{1,12}",
        kind in any_text(),
        payload in any_json(),
        priority in any::<i32>(),
        times in proptest::array::uniform4(-10i64..300_000_000_000_000),
        idempotency_key in proptest::option::of(any_text()),
        group in proptest::option::of(any_text()),
        max_attempts in any::<u32>(),
        attempts in any::<u32>(),
        state in proptest::sample::select(TaskState::ALL.to_vec()),
        result in proptest::option::of(any_json()),
        last_error in proptest::option::of(any_text()),
        lease in proptest::option::of((any::<u32>(), any::<u64>(), proptest::option::of(any_text()))),
        finished in any::<bool>(),
        history in any_history(),
    ) -> Task {
        Task {
            id: TaskId::new(created_at, seq),
            queue, kind, payload, priority,
            run_at: times[0],
            idempotency_key, group, max_attempts, attempts, state, result, last_error,
            lease: lease.map(|(attempt, random, worker)| Lease {
                token: LeaseToken::new(attempt, random), expires_at: times[1], worker, leased_at: times[3],
            }),
            history,
            created_at, updated_at: times[2],
            finished_at: finished.then_some(times[3]),
        }
    }
}

proptest! {
    #[test]
    fn any_task_is_written_as_serde_writes_it(task in any_task()) {
        let mut public = Vec::new();
        super::task(&mut public, &task, View::Public);
        prop_assert_eq!(String::from_utf8(public).unwrap(), String::from_utf8(serde_bytes(&TaskView::from_task(&task))).unwrap());
        let mut leased = Vec::new();
        super::task(&mut leased, &task, View::Leased);
        prop_assert_eq!(String::from_utf8(leased).unwrap(), String::from_utf8(serde_bytes(&TaskView::leased(&task))).unwrap());
        if let Some(brief) = crate::LeasedBrief::from_task(&task) {
            let mut short = Vec::new();
            super::task(&mut short, &task, View::LeasedBrief);
            prop_assert_eq!(String::from_utf8(short).unwrap(), String::from_utf8(serde_bytes(&brief)).unwrap());
        }
    }
}
