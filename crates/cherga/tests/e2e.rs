//! End-to-end tests: each starts the real `cherga` binary on a free port with a
//! temporary data directory and drives it over HTTP, as a user would.

mod harness;

use harness::{Server, http};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn id(task: &Value) -> String {
    task["id"].as_str().expect("task has an id").to_owned()
}

fn token(task: &Value) -> String {
    task["lease"]["token"].as_str().expect("leased task has a token").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_enqueue_lease_ack_get() {
    let server = Server::start().await;
    let (status, task) =
        server.post("/v1/queues/emails/tasks", json!({"kind": "welcome", "payload": {"to": "a@b.c"}})).await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["state"], "ready");
    let (status, leased) = server.post("/v1/queues/emails/lease", json!({"max": 10, "worker": "w1"})).await;
    assert_eq!(status, 200, "{leased}");
    let leased = &leased["tasks"][0];
    assert_eq!(id(leased), id(&task));
    assert_eq!(leased["payload"], json!({"to": "a@b.c"}));
    assert_eq!(leased["attempts"], 1);
    let (status, acked) = server
        .post(&format!("/v1/tasks/{}/ack", id(&task)), json!({"lease": token(leased), "result": {"sent": 1}}))
        .await;
    assert_eq!(status, 200, "{acked}");
    let (status, got) = server.get(&format!("/v1/tasks/{}", id(&task))).await;
    assert_eq!(status, 200);
    assert_eq!(got["state"], "succeeded");
    assert_eq!(got["result"], json!({"sent": 1}));
    let (_, queue) = server.get("/v1/queues/emails").await;
    assert_eq!(queue["counts"]["succeeded"], 1, "{queue}");
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_enqueues_with_one_key_make_one_task() {
    let server = Arc::new(Server::start().await);
    let mut handles = Vec::new();
    for _ in 0..50 {
        let server = server.clone();
        handles.push(tokio::spawn(async move {
            let response = http()
                .post(server.url("/v1/queues/payments/tasks"))
                .header("Idempotency-Key", "order-42-pay")
                .json(&json!({"kind": "charge", "payload": {"order": 42, "cents": 1999}}))
                .send()
                .await
                .expect("request");
            let status = response.status().as_u16();
            let replayed = response.headers().get("idempotent-replayed").is_some();
            let body: Value = response.json().await.expect("json");
            (status, replayed, body)
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for handle in handles {
        let (status, replayed, body) = handle.await.unwrap();
        assert!(status == 201 || (status == 200 && replayed), "status {status}: {body}");
        created += usize::from(status == 201);
        ids.insert(id(&body));
    }
    assert_eq!(created, 1, "exactly one request creates the task");
    assert_eq!(ids.len(), 1, "every request gets the same task back: {ids:?}");
    let (_, list) = server.get("/v1/queues/payments/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_a_different_request_is_refused() {
    let server = Server::start().await;
    let first = json!({"kind": "charge", "payload": {"order": 1}, "idempotency_key": "k"});
    assert_eq!(server.post("/v1/queues/payments/tasks", first.clone()).await.0, 201);
    let (status, body) = server
        .post(
            "/v1/queues/payments/tasks",
            json!({"kind": "charge", "payload": {"order": 2}, "idempotency_key": "k"}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    // Whitespace does not make a request different.
    let (status, _) = server
        .post_raw(
            "/v1/queues/payments/tasks",
            r#"{"kind":"charge", "payload": { "order" : 1 }, "idempotency_key":"k"}"#,
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_cannot_ack_and_the_task_goes_to_the_next_worker() {
    let server = Server::start().await;
    let (status, _) = server.put("/v1/queues/jobs", json!({"backoff": {"initial_ms": 0, "max_ms": 0}})).await;
    assert_eq!(status, 200);
    let (_, task) = server.post("/v1/queues/jobs/tasks", json!({"kind": "slow"})).await;
    let (_, first) =
        server.post("/v1/queues/jobs/lease", json!({"lease_ms": 200, "worker": "slow-worker"})).await;
    let first = first["tasks"][0].clone();
    assert_eq!(id(&first), id(&task));
    // The second worker waits; the lease expires, and the task is delivered to it.
    let (status, second) =
        server.post("/v1/queues/jobs/lease", json!({"wait_ms": 10000, "worker": "fast-worker"})).await;
    assert_eq!(status, 200);
    let second = second["tasks"][0].clone();
    assert_eq!(id(&second), id(&task), "redelivered: {second}");
    assert_eq!(second["attempts"], 2);
    assert_ne!(token(&first), token(&second), "a new fencing token per delivery");
    let (status, body) =
        server.post(&format!("/v1/tasks/{}/ack", id(&task)), json!({"lease": token(&first)})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "lease_lost");
    let ack = json!({"lease": token(&second), "result": "done"});
    let (status, a) = server.post(&format!("/v1/tasks/{}/ack", id(&task)), ack.clone()).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = server.post(&format!("/v1/tasks/{}/ack", id(&task)), ack).await;
    assert_eq!(status, 200, "the same ack twice succeeds twice: {b}");
    assert_eq!(a, b);
    let (status, body) =
        server.post(&format!("/v1/tasks/{}/ack", id(&task)), json!({"lease": token(&first)})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("lease_lost")),
        "the stale token stays refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_extend_cancel_retry_and_delay() {
    let server = Server::start().await;
    server.put("/v1/queues/q", json!({"max_attempts": 2})).await;
    let (_, t) = server.post("/v1/queues/q/tasks", json!({"kind": "k"})).await;
    let (_, l) = server.post("/v1/queues/q/lease", json!({})).await;
    let lease = token(&l["tasks"][0]);
    let (status, ext) = server
        .post(&format!("/v1/tasks/{}/extend", id(&t)), json!({"lease": lease, "lease_ms": 60000}))
        .await;
    assert_eq!(status, 200, "{ext}");
    let (status, n) = server
        .post(
            &format!("/v1/tasks/{}/nack", id(&t)),
            json!({"lease": lease, "error": "boom", "retry_in_ms": 0}),
        )
        .await;
    assert_eq!(status, 200, "{n}");
    assert_eq!(n["last_error"], "boom");
    let (_, l) = server.post("/v1/queues/q/lease", json!({"wait_ms": 5000})).await;
    let lease = token(&l["tasks"][0]);
    let (_, n) =
        server.post(&format!("/v1/tasks/{}/nack", id(&t)), json!({"lease": lease, "error": "again"})).await;
    assert_eq!(n["state"], "dead", "out of attempts: {n}");
    let (status, body) = server.delete(&format!("/v1/tasks/{}", id(&t))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("invalid_state")));
    let (status, r) = server.post(&format!("/v1/tasks/{}/retry", id(&t)), json!({})).await;
    assert_eq!((status, r["state"].as_str()), (200, Some("ready")), "{r}");
    let (status, c) = server.delete(&format!("/v1/tasks/{}", id(&t))).await;
    assert_eq!((status, c["state"].as_str()), (200, Some("cancelled")));
    assert_eq!(server.delete(&format!("/v1/tasks/{}", id(&t))).await.0, 200, "cancel is idempotent");

    let (_, later) = server.post("/v1/queues/q/tasks", json!({"kind": "later", "delay_ms": 300})).await;
    assert_eq!(later["state"], "scheduled");
    let (_, l) = server.post("/v1/queues/q/lease", json!({"wait_ms": 10000})).await;
    assert_eq!(id(&l["tasks"][0]), id(&later), "the delayed task arrives when due: {l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_order_and_concurrency_limit_hold_with_racing_workers() {
    let server = Arc::new(Server::start().await);
    server.put("/v1/queues/orders", json!({"concurrency": 3})).await;
    let n_groups = 4;
    let per_group = 15;
    let mut tasks = Vec::new();
    for i in 0..per_group {
        for g in 0..n_groups {
            tasks.push(json!({"kind": "step", "payload": {"g": g, "i": i}, "group": format!("order-{g}")}));
        }
    }
    for _ in 0..10 {
        tasks.push(json!({"kind": "free", "payload": {"g": -1}}));
    }
    let total = tasks.len();
    let (status, _) = server.post("/v1/queues/orders/tasks/batch", json!({ "tasks": tasks })).await;
    assert_eq!(status, 200);

    #[derive(Default)]
    struct Seen {
        running: HashSet<String>,
        running_groups: HashMap<i64, usize>,
        max_running: usize,
        order: HashMap<i64, Vec<i64>>,
        done: usize,
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut workers = Vec::new();
    for w in 0..8 {
        let server = server.clone();
        let seen = seen.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let (_, l) = server
                    .post(
                        "/v1/queues/orders/lease",
                        json!({"max": 2, "wait_ms": 300, "worker": format!("w{w}")}),
                    )
                    .await;
                let leased = l["tasks"].as_array().unwrap().clone();
                if leased.is_empty() {
                    if seen.lock().unwrap().done == total {
                        return;
                    }
                    continue;
                }
                for t in &leased {
                    let g = t["payload"]["g"].as_i64().unwrap();
                    let mut s = seen.lock().unwrap();
                    s.running.insert(id(t));
                    s.max_running = s.max_running.max(s.running.len());
                    if g >= 0 {
                        let n = s.running_groups.entry(g).or_default();
                        *n += 1;
                        assert_eq!(*n, 1, "two tasks of group {g} running at once");
                        s.order.entry(g).or_default().push(t["payload"]["i"].as_i64().unwrap());
                    }
                }
                tokio::task::yield_now().await;
                for t in &leased {
                    let g = t["payload"]["g"].as_i64().unwrap();
                    {
                        let mut s = seen.lock().unwrap();
                        s.running.remove(&id(t));
                        if g >= 0 {
                            *s.running_groups.get_mut(&g).unwrap() -= 1;
                        }
                    }
                    // Mark done before the ack lands, so the group is free only after.
                    let (status, body) =
                        server.post(&format!("/v1/tasks/{}/ack", id(t)), json!({"lease": token(t)})).await;
                    assert_eq!(status, 200, "{body}");
                    seen.lock().unwrap().done += 1;
                }
            }
        }));
    }
    for w in workers {
        tokio::time::timeout(Duration::from_secs(60), w).await.expect("workers finish").unwrap();
    }
    {
        let s = seen.lock().unwrap();
        assert!(s.max_running <= 3, "{} tasks ran at once with concurrency 3", s.max_running);
        for g in 0..n_groups {
            assert_eq!(s.order[&g], (0..per_group).collect::<Vec<_>>(), "group {g} ran out of order");
        }
    }
    let (_, q) = server.get("/v1/queues/orders").await;
    assert_eq!(q["counts"]["succeeded"], total, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_and_changes_nothing() {
    let server = Server::start_with(&["--max-body-bytes", "65536", "--max-payload-bytes", "1024"]).await;
    let (_, t) = server.post("/v1/queues/q/tasks", json!({"kind": "k", "payload": [1, 2]})).await;
    let long_queue = format!("/v1/queues/{}/tasks", "q".repeat(129));
    let ack_path = format!("/v1/tasks/{}/ack", id(&t));
    let retry_path = format!("/v1/tasks/{}/retry", id(&t));
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("POST", "/v1/queues/q/tasks", "{".into(), 400, "invalid_json"),
        ("POST", "/v1/queues/q/tasks", r#"{"kind": 5}"#.into(), 400, "invalid_json"),
        ("POST", "/v1/queues/q/tasks", r#"{"kind": "k", "extra": 1}"#.into(), 400, "invalid_json"),
        ("POST", "/v1/queues/q/tasks", r#"{"payload": 1}"#.into(), 400, "invalid_json"),
        (
            "POST",
            "/v1/queues/q/tasks",
            format!(r#"{{"kind":"k","payload":"{}"}}"#, "x".repeat(2000)),
            413,
            "payload_too_large",
        ),
        (
            "POST",
            "/v1/queues/q/tasks",
            format!(r#"{{"kind":"k","payload":"{}"}}"#, "x".repeat(70_000)),
            413,
            "body_too_large",
        ),
        ("POST", "/v1/queues/bad%20name/tasks", r#"{"kind":"k"}"#.into(), 400, "invalid_queue_name"),
        ("POST", &long_queue, r#"{"kind":"k"}"#.into(), 400, "invalid_queue_name"),
        ("POST", "/v1/queues/q/lease", r#"{"max": 0}"#.into(), 400, "invalid_request"),
        ("POST", "/v1/queues/q/lease", r#"{"wait_ms": 60001}"#.into(), 400, "invalid_request"),
        ("POST", "/v1/queues/q/lease", r#"{"max": "many"}"#.into(), 400, "invalid_json"),
        ("POST", "/v1/tasks/not-an-id/ack", r#"{"lease":"x"}"#.into(), 400, "invalid_task_id"),
        (
            "POST",
            "/v1/tasks/01a22074-80d8-78b3-8000-0000000003e7/ack",
            r#"{"lease":"x"}"#.into(),
            404,
            "task_not_found",
        ),
        ("POST", &ack_path, r#"{"lease":"forged"}"#.into(), 409, "lease_lost"),
        ("POST", &ack_path, r#"{}"#.into(), 400, "invalid_json"),
        ("POST", &retry_path, "".into(), 409, "invalid_state"),
        ("GET", "/v1/queues/missing", "".into(), 404, "queue_not_found"),
        ("GET", "/v1/queues/missing/tasks", "".into(), 404, "queue_not_found"),
        ("GET", "/v1/queues/q/tasks?state=done", "".into(), 400, "invalid_request"),
        ("GET", "/v1/queues/q/tasks?limit=abc", "".into(), 400, "invalid_request"),
        ("PUT", "/v1/queues/q", r#"{"max_attempts": 0}"#.into(), 400, "invalid_request"),
        ("PUT", "/v1/queues/q", r#"{"concurrency": -1}"#.into(), 400, "invalid_json"),
        ("DELETE", "/v1/queues/q", "".into(), 405, "method_not_allowed"),
        ("GET", "/v2/anything", "".into(), 404, "route_not_found"),
    ];
    for (method, path, body, want_status, want_code) in &cases {
        let (status, response) = server.request(method, path, body.clone()).await;
        assert_eq!(
            (status, response["error"]["code"].as_str()),
            (*want_status, Some(*want_code)),
            "{method} {path} {}: {response}",
            &body[..body.len().min(80)]
        );
        assert!(response["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, got) = server.get(&format!("/v1/tasks/{}", id(&t))).await;
    assert_eq!(status, 200, "the server still serves");
    assert_eq!(got["state"], "ready");
    assert_eq!(got["payload"], json!([1, 2]), "stored data untouched");
    let (_, q) = server.get("/v1/queues/q").await;
    assert_eq!(q["counts"]["ready"], 1, "nothing else was stored: {q}");
    assert_eq!(q["settings"]["max_attempts"], 25, "settings untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_a_cursor_and_filters_by_state() {
    let server = Server::start().await;
    let tasks: Vec<Value> = (0..7).map(|i| json!({"kind": "k", "payload": i})).collect();
    server.post("/v1/queues/q/tasks/batch", json!({ "tasks": tasks })).await;
    let (_, l) = server.post("/v1/queues/q/lease", json!({"max": 2})).await;
    assert_eq!(l["tasks"].as_array().unwrap().len(), 2);
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = server.get(&format!("/v1/queues/q/tasks?limit=3&after={after}")).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["tasks"].as_array().unwrap().iter().map(|t| t["payload"].as_i64().unwrap()));
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, (0..7).collect::<Vec<_>>(), "oldest first, every task once");
    let (_, running) = server.get("/v1/queues/q/tasks?state=running").await;
    assert_eq!(running["tasks"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_a_crash_and_restart() {
    let mut server = Server::start().await;
    let (_, t) = server.post("/v1/queues/q/tasks", json!({"kind": "k"})).await;
    let (_, l) = server.post("/v1/queues/q/lease", json!({"lease_ms": 60000})).await;
    let lease = token(&l["tasks"][0]);
    server.kill9().await;
    server.restart().await;
    let (_, again) = server.post("/v1/queues/q/lease", json!({})).await;
    assert!(
        again["tasks"].as_array().unwrap().is_empty(),
        "a running lease is honoured after restart: {again}"
    );
    let (status, acked) = server.post(&format!("/v1/tasks/{}/ack", id(&t)), json!({"lease": lease})).await;
    assert_eq!(status, 200, "the old lease still acks: {acked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let mut server = Server::start().await;
    let url = server.base.clone();
    // What the server answered 2xx to, recorded by the clients as it happens.
    let enqueued = Arc::new(Mutex::new(HashMap::<String, String>::new())); // key -> task id
    let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (url, enqueued, stop) = (url.clone(), enqueued.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            for i in 0..5000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("c{c}-{i}");
                let sent = http()
                    .post(format!("{url}/v1/queues/load/tasks"))
                    .json(&json!({"kind": "k", "payload": {"key": key}, "idempotency_key": key}))
                    .send()
                    .await;
                let Ok(response) = sent else { break };
                if response.status().is_success() {
                    let Ok(body) = response.json::<Value>().await else { break };
                    enqueued.lock().unwrap().insert(key, id(&body));
                }
            }
        }));
    }
    for w in 0..2 {
        let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(r) = http()
                    .post(format!("{url}/v1/queues/load/lease"))
                    .json(&json!({"max": 20, "wait_ms": 200, "worker": format!("w{w}")}))
                    .send()
                    .await
                else {
                    break;
                };
                let Ok(body) = r.json::<Value>().await else { break };
                let acks: Vec<Value> = body["tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| json!({"id": id(t), "lease": token(t)}))
                    .collect();
                if acks.is_empty() {
                    continue;
                }
                let Ok(r) =
                    http().post(format!("{url}/v1/tasks/ack")).json(&json!({ "acks": acks })).send().await
                else {
                    break;
                };
                if !r.status().is_success() {
                    continue;
                }
                let Ok(body) = r.json::<Value>().await else { break };
                for item in body["results"].as_array().unwrap() {
                    if item["status"] == 200 {
                        acked.lock().unwrap().insert(id(&item["task"]));
                    }
                }
            }
        }));
    }
    // Let load build up, then pull the plug.
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if enqueued.lock().unwrap().len() >= 1500 && acked.lock().unwrap().len() >= 300 {
            break;
        }
    }
    server.kill9().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    server.restart().await;

    let enqueued = enqueued.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    // Every task in the queue, by key.
    let mut by_key: HashMap<String, Vec<Value>> = HashMap::new();
    let mut after = String::new();
    loop {
        let (status, page) = server.get(&format!("/v1/queues/load/tasks?limit=1000&after={after}")).await;
        assert_eq!(status, 200);
        for t in page["tasks"].as_array().unwrap() {
            by_key.entry(t["payload"]["key"].as_str().unwrap().to_owned()).or_default().push(t.clone());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    for (key, task_id) in &enqueued {
        let found = by_key.get(key).unwrap_or_else(|| panic!("acknowledged enqueue {key} ({task_id}) lost"));
        assert_eq!(found.len(), 1, "key {key} stored {} times", found.len());
        assert_eq!(&id(&found[0]), task_id);
    }
    for (key, found) in &by_key {
        assert_eq!(found.len(), 1, "key {key} duplicated");
    }
    let states: HashMap<String, String> =
        by_key.values().map(|ts| (id(&ts[0]), ts[0]["state"].as_str().unwrap().to_owned())).collect();
    for task_id in &acked {
        assert_eq!(
            states.get(task_id).map(String::as_str),
            Some("succeeded"),
            "acked task {task_id} is not succeeded after restart"
        );
    }
    // Drain what is left: no acked task is delivered again.
    server.put("/v1/queues/load", json!({"backoff": {"initial_ms": 0, "max_ms": 0}})).await;
    loop {
        let (_, l) = server.post("/v1/queues/load/lease", json!({"max": 500, "lease_ms": 60000})).await;
        let tasks = l["tasks"].as_array().unwrap();
        if tasks.is_empty() {
            break;
        }
        for t in tasks {
            assert!(!acked.contains(&id(t)), "acked task {} delivered again", id(t));
        }
    }
    eprintln!(
        "kill -9 under load: {} enqueues and {} acks acknowledged before the kill, all intact",
        enqueued.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_the_store_reopens() {
    let mut server = Server::start().await;
    server.post("/v1/queues/q/tasks", json!({"kind": "k"})).await;
    // A long poll in flight when SIGTERM arrives returns promptly with an answer.
    let url = server.url("/v1/queues/empty/lease");
    let poll = tokio::spawn(async move { http().post(url).json(&json!({"wait_ms": 30000})).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let status = server.sigterm().await;
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let answered = poll.await.unwrap().expect("the long poll got an answer");
    assert_eq!(answered.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(20), "shutdown did not wait out the long poll");
    server.restart().await;
    let (_, q) = server.get("/v1/queues/q").await;
    assert_eq!(q["counts"]["ready"], 1, "{q}");
}
