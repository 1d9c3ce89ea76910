//! Bulk actions end to end: retry, cancel and purge by filter, and deleting a
//! queue, against the real binary; the answers' counts match the queue's
//! counts and the event log holds one event per task changed.

use super::harness::{Server, http};
use super::{id, token};
use serde_json::{Value, json};
use std::collections::HashMap;

/// The events of the log after `after`, read as JSON pages: (change, task id).
/// On PostgreSQL events committed may be held back while an older transaction
/// (of any client of the database) runs: the page says `pending`, and is read
/// again.
async fn events_after(server: &Server, after: &str) -> Vec<(String, String)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut out = Vec::new();
    let mut after = after.to_owned();
    loop {
        let page: Value = http()
            .get(server.url(&format!("/v1/events?after={after}&limit=1000")))
            .header("accept", "application/json")
            .send()
            .await
            .expect("read a page of events")
            .json()
            .await
            .expect("a JSON page");
        let events = page["events"].as_array().expect("events").clone();
        for event in &events {
            let data = &event["data"];
            out.push((
                data["change"].as_str().expect("change").to_owned(),
                data["task_id"].as_str().expect("id").to_owned(),
            ));
        }
        after = page["next"].as_str().expect("next").to_owned();
        if events.is_empty() {
            if !page["pending"].as_bool().expect("pending") {
                return out;
            }
            assert!(std::time::Instant::now() < deadline, "events stayed pending for 60 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The id of the last event in the log, once every change committed so far is
/// readable (on PostgreSQL events wait while an older transaction runs: the
/// page says `pending`).
async fn head(server: &Server) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let page: Value = http()
            .get(server.url("/v1/events?after=0&limit=1"))
            .header("accept", "application/json")
            .send()
            .await
            .expect("read the log")
            .json()
            .await
            .expect("a JSON page");
        if !page["pending"].as_bool().expect("pending") {
            return page["head"].as_str().expect("head").to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "events stayed pending for 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn counts(queue: &Value) -> HashMap<String, u64> {
    queue["counts"]
        .as_object()
        .expect("counts")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("n")))
        .collect()
}

pub async fn retry_cancel_purge_and_delete_by_filter(server: Server) {
    let q = "/v1/queues/bulk";
    let (status, _) = server.put(q, json!({"max_attempts": 1})).await;
    assert_eq!(status, 200);
    let tasks: Vec<Value> = (0..10).map(|i| json!({"kind": if i < 6 { "a" } else { "b" }})).collect();
    let (status, body) = server.post(&format!("{q}/tasks/batch"), json!({"tasks": tasks})).await;
    assert_eq!(status, 200, "{body}");
    let (status, leased) = server.post(&format!("{q}/lease"), json!({"max": 10})).await;
    assert_eq!(status, 200, "{leased}");
    let leased = leased["tasks"].as_array().expect("tasks").clone();
    assert_eq!(leased.len(), 10);
    for task in &leased {
        let (status, body) = server
            .post(&format!("/v1/tasks/{}/nack", id(task)), json!({"lease": token(task), "error": "no"}))
            .await;
        assert_eq!((status, body["state"].as_str()), (200, Some("dead")), "{body}");
    }
    let before = head(&server).await;

    // Bad filters are refused and change nothing.
    for (body, code) in [
        (json!({"states": ["running"]}), "invalid_request"),
        (json!({"states": ["lost"]}), "invalid_request"),
        (json!({"limit": 0}), "invalid_request"),
        (json!({"kind": "a", "colour": "red"}), "invalid_json"),
        (json!({"enqueued_before": "yesterday"}), "invalid_json"),
    ] {
        let (status, answer) = server.post(&format!("{q}/tasks/retry"), body.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some(code)), "{body}: {answer}");
    }

    // Kind a in two requests, the first cut by its limit.
    let (status, answer) = server.post(&format!("{q}/tasks/retry"), json!({"kind": "a", "limit": 4})).await;
    assert_eq!((status, answer.clone()), (200, json!({"matched": 4})), "{answer}");
    let (status, answer) =
        server.post(&format!("{q}/tasks/retry"), json!({"kind": "a", "states": ["dead"]})).await;
    assert_eq!((status, answer.clone()), (200, json!({"matched": 2})), "{answer}");
    let (_, queue) = server.get(q).await;
    let n = counts(&queue);
    assert_eq!((n["ready"], n["dead"]), (6, 4), "{queue}");
    let events = events_after(&server, &before).await;
    let mut retried: Vec<&str> =
        events.iter().filter(|(c, _)| c == "retried").map(|(_, t)| t.as_str()).collect();
    retried.sort_unstable();
    let mut want: Vec<String> = leased.iter().filter(|t| t["kind"] == "a").map(id).collect();
    want.sort_unstable();
    assert_eq!(retried, want, "one retried event per task of kind a, and no other: {events:?}");
    assert_eq!(events.len(), 6, "nothing else happened: {events:?}");

    // Cancel the delayed tasks, purge the finished ones.
    let (status, _) = server
        .post(
            &format!("{q}/tasks/batch"),
            json!({"tasks": [{"kind": "c", "delay_ms": 3_600_000}, {"kind": "c", "delay_ms": 3_600_000}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, answer) = server.post(&format!("{q}/tasks/cancel"), json!({"states": ["scheduled"]})).await;
    assert_eq!((status, answer.clone()), (200, json!({"matched": 2})), "{answer}");
    let (status, answer) = server.post_raw(&format!("{q}/tasks/purge"), "").await;
    assert_eq!((status, answer.clone()), (200, json!({"matched": 6})), "an empty body is {{}}: {answer}");

    // The queue still has six ready tasks: deleting it needs force.
    let (status, answer) = server.delete(q).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("queue_not_empty")), "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap_or("").contains("6 unfinished"), "{answer}");
    let (status, answer) = server.delete(&format!("{q}?force=true")).await;
    assert_eq!((status, answer.clone()), (200, json!({"queue": "bulk", "purged": 6})), "{answer}");
    let (status, _) = server.get(q).await;
    assert_eq!(status, 404);
    let (status, answer) = server.delete(q).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("queue_not_found")));

    let events = events_after(&server, &before).await;
    let count = |change: &str| events.iter().filter(|(c, _)| c == change).count();
    assert_eq!((count("retried"), count("cancelled"), count("purged")), (6, 2, 12), "{events:?}");
}
