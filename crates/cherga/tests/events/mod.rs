//! The event stream end to end: a reader follows `GET /v1/events` while
//! producers and workers change tasks and a node is killed with `kill -9` and
//! started again. Every acknowledged change has its event, every event is a
//! change that happened, and the reader — resuming with `Last-Event-ID` after
//! each cut — gets exactly the log: none missing, none twice.

use super::harness::{Backend, Server, http};
use super::{id, token};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One server-sent event as a reader sees it.
#[derive(Clone, Debug, PartialEq)]
struct Frame {
    id: u64,
    event: String,
    data: Value,
}

/// Splits complete frames off the front of `buffer`; comments (heartbeats) and
/// frames without an id (errors) are returned with id 0.
fn frames(buffer: &mut String) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(end) = buffer.find("\n\n") {
        let text: String = buffer.drain(..end + 2).collect();
        let (mut id, mut event, mut data) = (0, String::new(), String::new());
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().expect("numeric event id");
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
        if !data.is_empty() {
            out.push(Frame { id, event, data: serde_json::from_str(&data).expect("data is JSON") });
        }
    }
    out
}

/// Follows the stream, reconnecting with `Last-Event-ID` whenever it ends (the
/// server was killed), until `stop` is set and the reader has reached `until`.
async fn follow(
    base: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    until: Arc<Mutex<Option<u64>>>,
) -> Vec<Frame> {
    let mut seen: Vec<Frame> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let last = seen.last().map_or(0, |f| f.id);
        if let Some(target) = *until.lock().unwrap()
            && last >= target
        {
            return seen;
        }
        assert!(Instant::now() < deadline, "the reader did not catch up; it has {} events", seen.len());
        let url = format!("{}/v1/events", base.lock().unwrap());
        // From the start of the log the first time (no header: `after=0`), then
        // after the last event seen.
        let request = if last == 0 {
            http().get(format!("{url}?after=0"))
        } else {
            http().get(&url).header("last-event-id", last.to_string())
        };
        let Ok(mut response) = request.send().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        assert_eq!(response.status().as_u16(), 200);
        let mut buffer = String::new();
        loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk,
                // Look up now and then whether the reader has caught up.
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    let caught_up = until.lock().unwrap().is_some_and(|t| seen.last().is_some_and(|f| f.id >= t));
                    if caught_up { return seen; }
                    continue;
                }
            };
            match chunk {
                Ok(Some(bytes)) => {
                    buffer.push_str(std::str::from_utf8(&bytes).expect("UTF-8"));
                    for frame in frames(&mut buffer) {
                        assert_ne!(frame.event, "error", "the stream reported an error: {frame:?}");
                        seen.push(frame);
                    }
                }
                // The connection ended (the node was killed): reconnect.
                Ok(None) | Err(_) => break,
            }
            if stop.load(Ordering::Acquire)
                && until.lock().unwrap().is_some_and(|t| seen.last().is_some_and(|f| f.id >= t))
            {
                return seen;
            }
        }
    }
}

/// Every event in the log, read as JSON pages from the start.
async fn whole_log(base: &str) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut after = "0".to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = http()
            .get(format!("{base}/v1/events?after={after}&limit=1000"))
            .header("accept", "application/json")
            .send()
            .await
            .expect("read a page")
            .json()
            .await
            .expect("a JSON page");
        let events = page["events"].as_array().expect("events").clone();
        for event in &events {
            let id = event["id"].as_str().expect("id").parse().expect("numeric id");
            let change = event["data"]["change"].as_str().expect("change").to_owned();
            out.push(Frame { id, event: change, data: event.clone() });
        }
        after = page["next"].as_str().expect("next").to_owned();
        if events.is_empty() {
            if !page["pending"].as_bool().expect("pending") {
                return out;
            }
            assert!(Instant::now() < deadline, "events stayed pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `acks`; the ids of those answered 200, or `None` when no answer came.
async fn ack(url: &str, acks: &[Value]) -> Option<Vec<String>> {
    let response = http().post(url).json(&json!({ "acks": acks })).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let answer = response.json::<Value>().await.ok()?;
    let results = answer["results"].as_array()?;
    Some(results.iter().filter(|item| item["status"] == 200).map(|item| id(&item["task"])).collect())
}

/// What the servers answered 2xx to.
#[derive(Default)]
struct Acknowledged {
    enqueued: HashSet<String>,
    /// task -> the attempts it was leased with.
    leased: HashMap<String, HashSet<u64>>,
    acked: HashSet<String>,
}

/// `nodes` servers on one store; producers and a worker on each; one node is
/// killed with `kill -9` partway and started again; a reader on the last node
/// follows the stream from the start.
pub async fn a_reader_follows_every_change_through_a_kill(backend: Backend, n_nodes: usize) {
    let mut nodes = Vec::new();
    for _ in 0..n_nodes {
        nodes.push(Server::start(&backend).await);
    }
    let bases: Vec<Arc<Mutex<String>>> = nodes.iter().map(|n| Arc::new(Mutex::new(n.base.clone()))).collect();
    let reader_base = bases[n_nodes - 1].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(Mutex::new(None));
    let reader = tokio::spawn(follow(reader_base.clone(), stop.clone(), until.clone()));
    let seen = Arc::new(Mutex::new(Acknowledged::default()));
    let total = 300;
    let mut clients = Vec::new();
    for (n, base) in bases.iter().enumerate() {
        let (base, seen, stop) = (base.clone(), seen.clone(), stop.clone());
        // A producer: idempotency keys make a retry after a lost answer safe.
        clients.push(tokio::spawn({
            let (base, seen) = (base.clone(), seen.clone());
            async move {
                let mut i = 0;
                while i < total / n_nodes {
                    let key = format!("n{n}-{i}");
                    let url = format!("{}/v1/queues/ev/tasks", base.lock().unwrap());
                    let body = json!({"kind": "k", "payload": {"i": i}, "idempotency_key": key});
                    match http().post(url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => {
                            let task: Value = r.json().await.expect("task");
                            seen.lock().unwrap().enqueued.insert(id(&task));
                            i += 1;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        }));
        // A worker: leases and acks, recording what was answered 2xx. An ack
        // whose answer was lost (its node was killed, maybe after the commit)
        // is sent again until answered: acks are idempotent, so a replay of
        // one that took effect answers 200 as the first would have.
        clients.push(tokio::spawn(async move {
            let mut unanswered: Vec<Value> = Vec::new();
            while !stop.load(Ordering::Acquire) {
                if !unanswered.is_empty() {
                    let url = format!("{}/v1/tasks/ack", base.lock().unwrap());
                    match ack(&url, &unanswered).await {
                        Some(acked) => {
                            seen.lock().unwrap().acked.extend(acked);
                            unanswered.clear();
                        }
                        None => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                    continue;
                }
                let url = format!("{}/v1/queues/ev/lease", base.lock().unwrap());
                // Leases short enough that those the kill orphans come back soon.
                let lease = json!({"max": 10, "wait_ms": 100, "lease_ms": 3_000});
                let Ok(r) = http().post(url).json(&lease).send().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let Ok(body) = r.json::<Value>().await else { continue };
                let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
                {
                    let mut seen = seen.lock().unwrap();
                    for task in &tasks {
                        let attempts = task["attempts"].as_u64().expect("attempts");
                        seen.leased.entry(id(task)).or_default().insert(attempts);
                    }
                }
                unanswered = tasks.iter().map(|t| json!({"id": id(t), "lease": token(t)})).collect();
            }
        }));
    }
    // Kill the first node once a third of the tasks were acked, then start it again.
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().acked.len() < total / 3 {
        assert!(Instant::now() < deadline, "the workers made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    nodes[0].kill9().await;
    nodes[0].restart().await;
    *bases[0].lock().unwrap() = nodes[0].base.clone();
    while seen.lock().unwrap().acked.len() < total {
        if Instant::now() >= deadline {
            let (_, list) = nodes[n_nodes - 1].get("/v1/queues/ev/tasks?limit=1000").await;
            let acked = seen.lock().unwrap().acked.clone();
            let left: Vec<&Value> =
                list["tasks"].as_array().into_iter().flatten().filter(|t| !acked.contains(&id(t))).collect();
            panic!("not every task was acked: {} of {total}; the others: {left:#?}", acked.len());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Release);
    for client in clients {
        client.await.expect("client");
    }

    let reader_url = reader_base.lock().unwrap().clone();
    let log = whole_log(&reader_url).await;
    *until.lock().unwrap() = Some(log.last().expect("events").id);
    let followed = reader.await.expect("reader");

    // The reader got exactly the log, in order, through the kill.
    let ids = |frames: &[Frame]| frames.iter().map(|f| f.id).collect::<Vec<_>>();
    assert!(ids(&followed).windows(2).all(|w| w[0] < w[1]), "ids grow, none twice");
    assert_eq!(ids(&followed), ids(&log), "the reader saw every event of the log, none twice");
    assert_eq!(
        followed.iter().map(|f| &f.data).collect::<Vec<_>>(),
        log.iter().map(|f| &f.data).collect::<Vec<_>>()
    );

    // Every acknowledged change has its event.
    let logged: HashSet<(String, String, u64)> = log
        .iter()
        .map(|f| {
            let data = &f.data["data"];
            (data["task_id"].as_str().unwrap().to_owned(), f.event.clone(), data["attempt"].as_u64().unwrap())
        })
        .collect();
    let has = |task: &str, change: &str| logged.iter().any(|(t, c, _)| t == task && c == change);
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for task in &seen.enqueued {
        assert!(has(task, "enqueued"), "acknowledged enqueue of {task} has no event");
    }
    for (task, attempts) in &seen.leased {
        for attempt in attempts {
            assert!(
                logged.contains(&(task.clone(), "leased".into(), *attempt)),
                "lease {attempt} of {task} has no event"
            );
        }
    }
    for task in &seen.acked {
        assert!(has(task, "acked"), "acknowledged ack of {task} has no event");
    }
    // And every event is a change that happened: the tasks' final states agree.
    let node = &nodes[0];
    let mut tasks: HashMap<String, Value> = HashMap::new();
    for (task, _, _) in &logged {
        if !tasks.contains_key(task) {
            let (status, body) = node.get(&format!("/v1/tasks/{task}")).await;
            assert_eq!(status, 200, "an event names task {task}, which does not exist: {body}");
            tasks.insert(task.clone(), body);
        }
    }
    for (task, change, attempt) in &logged {
        let body = &tasks[task];
        match change.as_str() {
            "acked" => {
                assert_eq!(body["state"], "succeeded", "an acked event for a task that did not succeed")
            }
            "leased" => assert!(
                body["attempts"].as_u64().unwrap() >= *attempt,
                "a lease event past the task's attempts"
            ),
            "enqueued" | "promoted" => {}
            // A lease taken through the killed node whose ack never came ran out:
            // the task was leased again afterwards.
            "expired" => {
                assert!(body["attempts"].as_u64().unwrap() > *attempt, "an expired lease was the last")
            }
            // Nothing nacked, cancelled or retried.
            other => panic!("unexpected event {other} for {task}"),
        }
    }
    assert_eq!(tasks.len(), total, "one task per key, each with its events");
}
