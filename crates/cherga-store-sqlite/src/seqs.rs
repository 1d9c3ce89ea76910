//! Task sequence numbers. Each queue numbers its tasks in a range of its own:
//! queue number `q` gives `q · 2^40 + 1`, `+ 2`, … So a queue's rows are one
//! range of the table's rowid, and listing a queue needs no index of its own:
//! that index was 13 % of the writer's work per task
//! (`docs/storage.md`).
//!
//! Numbers below [`FIRST`] were given before schema version 6, from one counter
//! for every queue; their rows keep them (the number is in the task's id), and a
//! partial index lists them ([`LEGACY_INDEX`]).
//!
//! Task ids carry 62 bits of the number, so there are at most [`MAX_QUEUE`]
//! queue numbers, each with 2^40 − 1 numbers of its own.

/// Bits of a number that count within its queue's range.
const QUEUE_SHIFT: u32 = 40;

/// The first number of queue number 1's range; every number given before
/// version 6 is below it.
pub const FIRST: u64 = 1 << QUEUE_SHIFT;

/// [`FIRST`] as SQL text, for the condition of [`LEGACY_INDEX`] and of the
/// query that uses it (SQLite uses a partial index only for a query that
/// repeats its condition).
macro_rules! first_sql {
    () => {
        "1099511627776"
    };
}
pub(crate) use first_sql;

/// The highest queue number whose range task ids can carry.
pub const MAX_QUEUE: i64 = (1 << (62 - QUEUE_SHIFT)) - 1;

/// The index of the rows numbered before version 6, made by the migration only
/// when there were any. Its condition is spelled the same in the listing query,
/// which is how SQLite knows it may use it.
pub const LEGACY_INDEX: &str = "tasks_before_v6";

/// The numbers of queue `qid`: `start..end`, where `start` itself is never given.
pub fn range(qid: i64) -> (u64, u64) {
    let qid = qid.clamp(1, MAX_QUEUE) as u64;
    (qid << QUEUE_SHIFT, (qid + 1) << QUEUE_SHIFT)
}

/// The queue number whose range holds `seq`, or `None` for a number given
/// before version 6.
pub fn queue_of(seq: u64) -> Option<i64> {
    (seq >= FIRST).then_some((seq >> QUEUE_SHIFT) as i64)
}

/// The name of the counter that keeps the numbers of queue `qid` that purges
/// deleted from being given again.
pub fn counter(qid: i64) -> String {
    format!("task_seq:{qid}")
}

/// The queue number in a counter's name made by [`counter`].
pub fn counter_queue(name: &str) -> Option<i64> {
    name.strip_prefix("task_seq:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_each_other_above_the_old_numbers() {
        assert_eq!(range(1), (FIRST, 2 * FIRST));
        assert_eq!(first_sql!(), FIRST.to_string());
        assert_eq!(range(2).0, range(1).1);
        assert_eq!(queue_of(FIRST - 1), None);
        assert_eq!(queue_of(range(7).0 + 1), Some(7));
        assert_eq!(queue_of(range(7).1 - 1), Some(7));
        let (_, end) = range(MAX_QUEUE);
        assert_eq!(end, 1 << 62, "the last range ends where task ids stop carrying bits");
        let id = cherga_core::TaskId::new(1_700_000_000_000, end - 1);
        assert_eq!(id.seq(), end - 1);
        assert_eq!(counter_queue(&counter(42)), Some(42));
        assert_eq!(counter_queue("task_seq"), None);
    }

    /// A database of version 5 with rows in two queues: after the migration
    /// its rows are listed before the queue's new ones, in order, page by page
    /// and by state; they are found by id; and new tasks are numbered in their
    /// queue's range, before and after a reopen.
    #[tokio::test]
    async fn rows_numbered_before_version_6_are_listed_with_the_new_ones() {
        use crate::{Options, SqliteStore, rows, schema};
        use cherga_core::{NewTask, QueueName, QueueSettings, Task, TaskState};
        use cherga_store::{ListTasks, Store};

        const T0: i64 = 1_700_000_000_000;
        let new = |kind: &str| NewTask {
            kind: kind.into(),
            payload: "{}".into(),
            priority: 0,
            run_at: None,
            idempotency_key: None,
            group: None,
            max_attempts: None,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let options = Options { durable: false, ..Options::in_dir(dir.path()) };
        {
            let mut conn = rusqlite::Connection::open(&options.path).expect("open");
            schema::migrate_to(&mut conn, 5).expect("version 5");
            let settings = QueueSettings::defaults();
            rows::save_queue(&conn, "a", 1, &settings, T0).expect("queue a");
            rows::save_queue(&conn, "b", 2, &settings, T0).expect("queue b");
            let mut writer = rows::RowWriter::new(&conn);
            for seq in 1..=5u64 {
                let (queue, qid) = if seq % 2 == 1 { ("a", 1) } else { ("b", 2) };
                let mut task = Task::create(queue, new(&format!("old{seq}")), &settings, seq, T0);
                if seq == 3 {
                    task.state = TaskState::Succeeded;
                    task.finished_at = Some(T0);
                }
                writer.write(&task, qid, false).expect("old row");
            }
            drop(writer);
            conn.execute("INSERT INTO counters (name, value) VALUES ('task_seq', 5)", []).expect("counter");
        }
        let queue = |name: &str| QueueName::new(name).expect("a valid name");
        async fn list(
            store: &SqliteStore,
            name: &str,
            state: Option<TaskState>,
            after: Option<u64>,
            limit: usize,
        ) -> Vec<String> {
            let list = ListTasks {
                queue: QueueName::new(name).expect("a valid name"),
                filter: state.map(cherga_store::TaskFilter::in_state).unwrap_or_default(),
                key: None,
                after: after.map(|seq| cherga_core::TaskId::new(T0, seq)),
                limit,
            };
            store.list_tasks(list).await.expect("list").into_iter().map(|t| t.kind).collect()
        }
        let store = SqliteStore::open(options.clone()).expect("migrate and open");
        let mut made = Vec::new();
        for kind in ["new1", "new2", "new3"] {
            let done = store
                .enqueue(queue("a"), vec![new(kind)], T0 + 1)
                .await
                .map(cherga_store::Changed::into_value)
                .expect("enqueue");
            let Ok(cherga_store::Enqueued::Created(task)) = &done[0] else { panic!("not created: {done:?}") };
            made.push(task.id.seq());
        }
        assert_eq!(made, [FIRST + 1, FIRST + 2, FIRST + 3], "queue a's range");
        let b = store
            .enqueue(queue("b"), vec![new("newb")], T0 + 1)
            .await
            .map(cherga_store::Changed::into_value)
            .expect("enqueue b");
        let Ok(cherga_store::Enqueued::Created(b)) = &b[0] else { panic!("not created: {b:?}") };
        assert_eq!(b.id.seq(), range(2).0 + 1, "queue b's range");

        assert_eq!(
            list(&store, "a", None, None, 100).await,
            ["old1", "old3", "old5", "new1", "new2", "new3"]
        );
        assert_eq!(list(&store, "a", None, None, 2).await, ["old1", "old3"]);
        assert_eq!(list(&store, "a", None, Some(3), 2).await, ["old5", "new1"]);
        assert_eq!(list(&store, "a", None, Some(FIRST + 1), 5).await, ["new2", "new3"]);
        assert_eq!(
            list(&store, "a", Some(TaskState::Ready), None, 100).await,
            ["old1", "old5", "new1", "new2", "new3"]
        );
        assert_eq!(list(&store, "a", Some(TaskState::Succeeded), None, 100).await, ["old3"]);
        assert_eq!(list(&store, "b", None, None, 100).await, ["old2", "old4", "newb"]);
        let old = store.get_task(cherga_core::TaskId::new(T0, 5)).await.expect("an old task by id");
        assert_eq!(old.kind, "old5");

        store.close().await;
        let store = SqliteStore::open(options).expect("reopen");
        let next = store
            .enqueue(queue("a"), vec![new("new4")], T0 + 2)
            .await
            .map(cherga_store::Changed::into_value)
            .expect("enqueue");
        let Ok(cherga_store::Enqueued::Created(next)) = &next[0] else { panic!("not created: {next:?}") };
        assert_eq!(next.id.seq(), FIRST + 4);
        assert_eq!(
            list(&store, "a", None, None, 100).await,
            ["old1", "old3", "old5", "new1", "new2", "new3", "new4"]
        );
        store.close().await;
    }
}
