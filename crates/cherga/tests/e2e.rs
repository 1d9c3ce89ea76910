//! End-to-end tests: each starts the real `cherga` binary on a free port and
//! drives it over HTTP, as a user would.
//!
//! Every test of the broker's behaviour is written once, as an `async fn` taking
//! a [`Backend`], and [`on_both_stores!`] makes two tests of it: `sqlite::name`
//! on the embedded store in a temporary directory, and `postgres::name` on
//! PostgreSQL in a fresh schema of `CHERGA_TEST_POSTGRES_URL` (which skips, and
//! records the skip, when the variable is unset: see `Backend::postgres`). Tests
//! of several nodes on one database are in `multi_node`, PostgreSQL only. Tests
//! of start-up (what `serve` refuses, the data directory's lock and modes) are in
//! `startup`; the event stream's are in `events`; the client subcommands' in `cli`;
//! the dashboard's, in a headless browser, in `ui`; metrics, readiness, request
//! ids and JSON logs in `observe`.

mod bulk;
mod cli;
mod events;
mod harness;
mod observe;
mod schemas;
mod startup;
mod ui;

use harness::{Backend, LONG_POLL_WAITING, Server, http, wait_until};
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

/// One test per store for each named `async fn(Backend)`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(backend) = super::Backend::postgres() else { return };
                    super::$name(backend).await;
                }
            )*
        }
    };
}

on_both_stores!(
    walkthrough_enqueue_lease_ack_get,
    a_lease_carries_the_acks_of_earlier_leases,
    fifty_concurrent_enqueues_with_one_key_make_one_task,
    a_key_reused_for_a_different_request_is_refused,
    an_expired_lease_cannot_ack_and_the_task_goes_to_the_next_worker,
    nack_extend_cancel_retry_and_delay,
    a_dead_tasks_payload_is_replaced_by_its_retry,
    group_order_and_concurrency_limit_hold_with_racing_workers,
    bad_input_gets_4xx_and_changes_nothing,
    list_pages_with_a_cursor_and_filters_by_state,
    a_lease_survives_a_crash_and_restart,
    kill_9_under_load_loses_nothing_acknowledged,
    sigterm_drains_and_the_store_reopens,
    prefer_return_minimal_shortens_answers_but_not_errors,
    long_polls_are_woken_one_per_leasable_task,
    an_event_reader_follows_every_change_through_a_kill,
    bulk_actions_by_filter_and_queue_deletion,
    payload_schemas_refuse_what_breaks_them,
);

async fn payload_schemas_refuse_what_breaks_them(backend: Backend) {
    schemas::enqueues_are_checked_against_the_current_schema(Server::start(&backend).await).await;
}

async fn bulk_actions_by_filter_and_queue_deletion(backend: Backend) {
    bulk::retry_cancel_purge_and_delete_by_filter(Server::start(&backend).await).await;
}

async fn an_event_reader_follows_every_change_through_a_kill(backend: Backend) {
    events::a_reader_follows_every_change_through_a_kill(backend, 1).await;
}

async fn walkthrough_enqueue_lease_ack_get(backend: Backend) {
    let server = Server::start(&backend).await;
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

/// A worker acks its finished tasks in its next lease: each ack answered on its
/// own in `acks`, the lease as without them, and the acks durable even when the
/// lease then waits and finds nothing.
async fn a_lease_carries_the_acks_of_earlier_leases(backend: Backend) {
    let server = Server::start(&backend).await;
    for n in 0..3 {
        server.post("/v1/queues/pair/tasks", json!({"kind": "k", "payload": {"n": n}})).await;
    }
    let (_, first) = server.post("/v1/queues/pair/lease", json!({"max": 2})).await;
    let (one, two) = (&first["tasks"][0], &first["tasks"][1]);
    let lease = json!({"max": 2, "acks": [
        {"id": id(one), "lease": token(one), "result": {"done": 1}},
        {"id": id(two), "lease": "stale"},
        {"id": "not-an-id", "lease": "x"},
    ]});
    let (status, answer) = server.post("/v1/queues/pair/lease", lease).await;
    assert_eq!(status, 200, "{answer}");
    let acks = answer["acks"].as_array().unwrap();
    assert_eq!(acks.len(), 3, "one result per ack: {answer}");
    assert_eq!(
        (acks[0]["status"].clone(), acks[0]["task"]["state"].clone()),
        (json!(200), json!("succeeded"))
    );
    assert_eq!(
        (acks[1]["status"].clone(), acks[1]["error"]["code"].clone()),
        (json!(409), json!("lease_lost"))
    );
    assert_eq!(
        (acks[2]["status"].clone(), acks[2]["error"]["code"].clone()),
        (json!(400), json!("invalid_task_id"))
    );
    let three = &answer["tasks"][0];
    assert_eq!(answer["tasks"].as_array().unwrap().len(), 1, "the one task left: {answer}");
    assert_eq!(three["payload"], json!({"n": 2}));
    let (_, got) = server.get(&format!("/v1/tasks/{}", id(one))).await;
    assert_eq!((got["state"].clone(), got["result"].clone()), (json!("succeeded"), json!({"done": 1})));
    let (_, got) = server.get(&format!("/v1/tasks/{}", id(two))).await;
    assert_eq!(got["state"], "running", "a refused ack leaves its task as it was: {got}");

    // Nothing ready: the acks are stored before the long poll waits, and answered with it.
    let started = std::time::Instant::now();
    let lease = json!({"max": 1, "wait_ms": 300, "acks": [
        {"id": id(two), "lease": token(two)}, {"id": id(three), "lease": token(three)},
    ]});
    let answer = http()
        .post(server.url("/v1/queues/pair/lease"))
        .header("prefer", "return=minimal")
        .json(&lease)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.headers()["preference-applied"], "return=minimal");
    let answer: Value = answer.json().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "the lease waited for a task");
    assert_eq!(answer["tasks"], json!([]), "{answer}");
    assert_eq!(answer["acks"], json!([{"status": 200, "id": id(two)}, {"status": 200, "id": id(three)}]));
    let (_, queue) = server.get("/v1/queues/pair").await;
    assert_eq!(queue["counts"]["succeeded"], 3, "{queue}");
    assert_eq!(queue["counts"]["running"], 0, "{queue}");

    // A lease without acks answers no `acks`.
    let (_, answer) = server.post("/v1/queues/pair/lease", json!({})).await;
    assert_eq!(answer, json!({"tasks": []}));
}

async fn fifty_concurrent_enqueues_with_one_key_make_one_task(backend: Backend) {
    let server = Arc::new(Server::start(&backend).await);
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

async fn a_key_reused_for_a_different_request_is_refused(backend: Backend) {
    let server = Server::start(&backend).await;
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

async fn an_expired_lease_cannot_ack_and_the_task_goes_to_the_next_worker(backend: Backend) {
    let server = Server::start(&backend).await;
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

async fn nack_extend_cancel_retry_and_delay(backend: Backend) {
    let server = Server::start(&backend).await;
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

/// A dead task retried with a new payload: the next lease gets the new payload
/// and the history names the edit (who: nobody with auth off; when). A retry
/// with a payload refused (not dead, too large, not JSON) leaves the task as
/// it was.
async fn a_dead_tasks_payload_is_replaced_by_its_retry(backend: Backend) {
    let server = Server::start_with(&backend, &["--max-payload-bytes", "1024"]).await;
    server.put("/v1/queues/fix", json!({"max_attempts": 1})).await;
    let (_, t) = server.post("/v1/queues/fix/tasks", json!({"kind": "k", "payload": {"v": 1}})).await;
    let task_path = format!("/v1/tasks/{}", id(&t));
    let retry_path = format!("{task_path}/retry");
    let (_, l) = server.post("/v1/queues/fix/lease", json!({"worker": "w-1"})).await;
    let (_, dead) = server
        .post(&format!("{task_path}/nack"), json!({"lease": token(&l["tasks"][0]), "error": "bad v"}))
        .await;
    assert_eq!(dead["state"], "dead", "{dead}");

    // Refused: too large, not JSON, an unknown field, nested too deep, not JSON's
    // content type. The task stays dead with its payload.
    let large = format!(r#"{{"payload":"{}"}}"#, "x".repeat(2000));
    let deep = format!(r#"{{"payload":{}{}}}"#, "[".repeat(200), "]".repeat(200));
    for (body, want_status, want_code) in [
        (large.as_str(), 413, "payload_too_large"),
        (r#"{"payload": }"#, 400, "invalid_json"),
        (r#"{"payload": {"v": 2}, "kind": "other"}"#, 400, "invalid_json"),
        (deep.as_str(), 400, "invalid_json"),
    ] {
        let (status, body_back) = server.post_raw(&retry_path, body).await;
        assert_eq!(
            (status, body_back["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{}: {body_back}",
            &body[..body.len().min(60)]
        );
    }
    let response = http()
        .post(server.url(&retry_path))
        .header("content-type", "text/plain")
        .body(r#"{"payload": {"v": 2}}"#)
        .send()
        .await
        .expect("retry as text/plain");
    assert_eq!(response.status().as_u16(), 415, "a body not sent as JSON");
    let (_, still) = server.get(&task_path).await;
    assert_eq!((still["state"].as_str(), &still["payload"]), (Some("dead"), &json!({"v": 1})), "{still}");
    assert_eq!(still["history"][0].get("payload_edit"), None, "no edit recorded: {still}");

    let (status, retried) = server.post(&retry_path, json!({"payload": {"v": 2, "fixed": [true]}})).await;
    assert_eq!((status, retried["state"].as_str()), (200, Some("ready")), "{retried}");
    assert_eq!(retried["payload"], json!({"v": 2, "fixed": [true]}));
    let edit = &retried["history"][0]["payload_edit"];
    assert_eq!(edit["by"], Value::Null, "auth is off: no subject: {retried}");
    assert_eq!(edit["at"], retried["updated_at"], "edited as it was retried: {retried}");
    let (_, got) = server.get(&task_path).await;
    assert_eq!(got["history"], retried["history"], "the edit is stored");
    assert_eq!(got["history"][0]["error"], "bad v");

    let (_, l) = server.post("/v1/queues/fix/lease", json!({"worker": "w-2"})).await;
    assert_eq!(
        l["tasks"][0]["payload"],
        json!({"v": 2, "fixed": [true]}),
        "the lease has the new payload: {l}"
    );
    let (status, refused) = server.post(&retry_path, json!({"payload": {"v": 3}})).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("invalid_state")), "{refused}");
    let (_, running) = server.get(&task_path).await;
    assert_eq!(running["payload"], json!({"v": 2, "fixed": [true]}), "a refused retry leaves the payload");
    assert_eq!(running["history"][0]["payload_edit"], *edit);
    assert_eq!(running["history"][1]["outcome"], "running");
    assert_eq!(running["history"][1].get("payload_edit"), None);
}

async fn group_order_and_concurrency_limit_hold_with_racing_workers(backend: Backend) {
    let server = Arc::new(Server::start(&backend).await);
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

async fn bad_input_gets_4xx_and_changes_nothing(backend: Backend) {
    let server =
        Server::start_with(&backend, &["--max-body-bytes", "65536", "--max-payload-bytes", "1024"]).await;
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
        ("POST", "/v1/queues/q/lease", r#"{"acks": {"id": "x", "lease": "y"}}"#.into(), 400, "invalid_json"),
        ("POST", "/v1/queues/q/lease", r#"{"acks": [["x", "y"]]}"#.into(), 400, "invalid_json"),
        ("POST", "/v1/queues/q/lease", r#"{"acks": [{"id": "x"}]}"#.into(), 400, "invalid_json"),
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
        ("DELETE", "/v1/queues/q", "".into(), 409, "queue_not_empty"),
        ("DELETE", "/v1/queues/q?force=maybe", "".into(), 400, "invalid_request"),
        ("DELETE", "/v1/tasks/ack", "".into(), 405, "method_not_allowed"),
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

async fn list_pages_with_a_cursor_and_filters_by_state(backend: Backend) {
    let server = Server::start(&backend).await;
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

    // Search by kind, group and idempotency key (the dashboard's queue page).
    let tasks: Vec<Value> = (0..6)
        .map(|i| {
            json!({"kind": if i % 2 == 0 { "charge" } else { "refund" }, "payload": i,
                   "group": format!("tenant-{}", i % 3), "idempotency_key": format!("order-{i}")})
        })
        .collect();
    server.post("/v1/queues/s/tasks/batch", json!({ "tasks": tasks })).await;
    let payloads = |page: &Value| {
        page["tasks"].as_array().unwrap().iter().map(|t| t["payload"].as_i64().unwrap()).collect::<Vec<_>>()
    };
    let (status, page) = server.get("/v1/queues/s/tasks?kind=refund").await;
    assert_eq!((status, payloads(&page)), (200, vec![1, 3, 5]), "{page}");
    let (_, page) = server.get("/v1/queues/s/tasks?group=tenant-0").await;
    assert_eq!(payloads(&page), [0, 3]);
    let (_, page) = server.get("/v1/queues/s/tasks?group=tenant-0&kind=charge&state=ready").await;
    assert_eq!(payloads(&page), [0]);
    let (_, page) = server.get("/v1/queues/s/tasks?key=order-4").await;
    assert_eq!(payloads(&page), [4]);
    let (_, page) = server.get("/v1/queues/s/tasks?key=order-4&kind=refund").await;
    assert_eq!(payloads(&page), Vec::<i64>::new());
    let (_, page) = server.get("/v1/queues/q/tasks?key=order-4").await;
    assert_eq!(payloads(&page), Vec::<i64>::new(), "a key belongs to its queue");
    let (_, page) = server.get("/v1/queues/s/tasks?kind=refund&limit=2").await;
    assert_eq!(payloads(&page), [1, 3]);
    let next = page["next"].as_str().expect("a next page").to_owned();
    let (_, page) = server.get(&format!("/v1/queues/s/tasks?kind=refund&limit=2&after={next}")).await;
    assert_eq!(payloads(&page), [5]);
}

async fn a_lease_survives_a_crash_and_restart(backend: Backend) {
    let mut server = Server::start(&backend).await;
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

async fn kill_9_under_load_loses_nothing_acknowledged(backend: Backend) {
    let mut server = Server::start(&backend).await;
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
    // Each worker records the acks the server answered 200 to.
    let record = |acked: &Mutex<HashSet<String>>, items: &Value| {
        for item in items.as_array().into_iter().flatten() {
            if item["status"] == 200 {
                acked.lock().unwrap().insert(id(&item["task"]));
            }
        }
    };
    for w in 0..2 {
        let (url, acked, stop) = (url.clone(), acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            // Worker 1 acks its tasks with its next lease; worker 0 in batch acks.
            let mut pending = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut lease = json!({"max": 20, "wait_ms": 200, "worker": format!("w{w}")});
                if !pending.is_empty() {
                    lease["acks"] = Value::Array(std::mem::take(&mut pending));
                }
                let Ok(r) = http().post(format!("{url}/v1/queues/load/lease")).json(&lease).send().await
                else {
                    break;
                };
                let Ok(body) = r.json::<Value>().await else { break };
                record(&acked, &body["acks"]);
                let acks: Vec<Value> = body["tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| json!({"id": id(t), "lease": token(t)}))
                    .collect();
                if acks.is_empty() {
                    continue;
                }
                if w == 1 {
                    pending = acks;
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
                record(&acked, &body["results"]);
            }
        }));
    }
    // Let load build up, then pull the plug.
    wait_until(Duration::from_secs(120), "1500 enqueues and 300 acks before the kill", || async {
        enqueued.lock().unwrap().len() >= 1500 && acked.lock().unwrap().len() >= 300
    })
    .await;
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

async fn sigterm_drains_and_the_store_reopens(backend: Backend) {
    let mut server = Server::start(&backend).await;
    server.post("/v1/queues/q/tasks", json!({"kind": "k"})).await;
    // A long poll in flight when SIGTERM arrives returns promptly with an answer.
    let url = server.url("/v1/queues/empty/lease");
    let poll = tokio::spawn(async move { http().post(url).json(&json!({"wait_ms": 30000})).send().await });
    server.wait_for_log(LONG_POLL_WAITING, 1).await;
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

/// Several `cherga` nodes on one PostgreSQL database.
mod multi_node {
    use super::harness::{Backend, Proxy, Server, admin, http, upstream_of, via_port, wait_until};
    use super::{LONG_POLL_WAITING, id, token};

    /// A schema set through one node is enforced by another at once: the
    /// other node had compiled the earlier version, and does not use it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_schema_set_on_one_node_is_enforced_on_another() {
        let Some(backend) = Backend::postgres() else { return };
        let a = Server::start(&backend).await;
        let b = Server::start(&backend).await;
        let (status, _) = a.put("/v1/queues/shared/schema", json!({"schema": {"type": "object"}})).await;
        assert_eq!(status, 200);
        let (status, body) = b.post("/v1/queues/shared/tasks", json!({"kind": "k", "payload": 1})).await;
        assert_eq!(status, 422, "B enforces version 1: {body}");
        let (status, _) = b.post("/v1/queues/shared/tasks", json!({"kind": "k", "payload": {"n": 1}})).await;
        assert_eq!(status, 201, "B compiled version 1");
        let schema = super::schemas::order_schema();
        let (status, _) = a.put("/v1/queues/shared/schema", json!({"schema": schema})).await;
        assert_eq!(status, 200);
        let (status, body) =
            b.post("/v1/queues/shared/tasks", json!({"kind": "k", "payload": {"n": 1}})).await;
        assert_eq!(status, 422, "B enforces version 2 as soon as A answered: {body}");
        assert_eq!(body["error"]["violations"][0]["keyword"], "required", "{body}");
        let (status, _) = a.delete("/v1/queues/shared/schema").await;
        assert_eq!(status, 200);
        let (status, body) = b.post("/v1/queues/shared/tasks", json!({"kind": "k", "payload": 1})).await;
        assert_eq!(status, 201, "and its removal: {body}");
    }

    /// Three nodes commit at once, one is killed and started again, and a reader
    /// on another follows the stream: it misses no event and sees none twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_event_reader_follows_three_nodes_through_a_kill() {
        let Some(backend) = Backend::postgres() else { return };
        super::events::a_reader_follows_every_change_through_a_kill(backend, 3).await;
    }

    use serde_json::{Value, json};
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    /// Sends `body` to the first node that answers, starting at `first`; a node
    /// that refuses the connection is skipped (it was killed).
    async fn post_any(
        urls: &[String],
        first: usize,
        path: &str,
        body: &Value,
    ) -> Option<(usize, u16, Value)> {
        for k in 0..urls.len() {
            let node = (first + k) % urls.len();
            let Ok(response) = http().post(format!("{}{path}", urls[node])).json(body).send().await else {
                continue;
            };
            let status = response.status().as_u16();
            let Ok(value) = response.json::<Value>().await else { continue };
            return Some((node, status, value));
        }
        None
    }

    #[derive(Default)]
    struct Seen {
        running: HashSet<String>,
        running_groups: HashMap<i64, usize>,
        max_running: usize,
        /// Per group, the `i` of each task in the order it was first leased: a
        /// task of a group is leasable only once the one before it finished.
        /// (The order of the ack answers can differ: an ack answered by no node
        /// because its node was killed is replayed through another, later.)
        order: HashMap<i64, Vec<i64>>,
        /// Every task leased so far.
        leased: HashSet<String>,
        /// Per task, the lease tokens an ack succeeded with.
        acked_tokens: HashMap<String, HashSet<String>>,
    }

    /// Three nodes, producers and workers spread over all of them; one node is
    /// killed with `kill -9` halfway. Its producers and workers move to the other
    /// nodes (a lease taken through the dead node is acked through another).
    /// Afterwards every acknowledged enqueue is stored once, every acked task
    /// succeeded, no task was completed under two leases, no group had two tasks
    /// running, groups ran in enqueue order and the queue kept its limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn three_nodes_one_killed_keep_every_guarantee() {
        let Some(backend) = Backend::postgres() else { return };
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(Server::start(&backend).await);
        }
        let urls: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
        let limit = 6;
        let (status, body) =
            nodes[0].put("/v1/queues/mn", json!({"concurrency": limit, "lease_ms": 5000})).await;
        assert_eq!(status, 200, "{body}");

        let (n_groups, per_group, n_free) = (6i64, 40i64, 300i64);
        let total = (n_groups * per_group + n_free) as usize;
        let enqueued = Arc::new(Mutex::new(HashMap::<String, String>::new())); // key -> id
        let seen = Arc::new(Mutex::new(Seen::default()));
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut producers = Vec::new();
        // One producer per group (so a group's enqueue order is its `i` order) and
        // three for the ungrouped tasks; each starts on a different node.
        for p in 0..(n_groups + 3) {
            let (urls, enqueued) = (urls.clone(), enqueued.clone());
            producers.push(tokio::spawn(async move {
                let items: Vec<(String, Value)> = if p < n_groups {
                    (0..per_group)
                        .map(|i| {
                            let key = format!("g{p}-{i}");
                            let task = json!({"kind": "step", "payload": {"g": p, "i": i, "key": key},
                                              "group": format!("g{p}"), "idempotency_key": key});
                            (key, task)
                        })
                        .collect()
                } else {
                    (0..n_free / 3)
                        .map(|i| {
                            let key = format!("f{p}-{i}");
                            (key.clone(), json!({"kind": "free", "payload": {"g": -1, "key": key}, "idempotency_key": key}))
                        })
                        .collect()
                };
                for (key, task) in items {
                    // Retried until stored: the idempotency key makes a retry of an
                    // enqueue whose answer was lost in the kill a replay.
                    loop {
                        match post_any(&urls, p as usize, "/v1/queues/mn/tasks", &task).await {
                            Some((_, 200 | 201, body)) => {
                                enqueued.lock().unwrap().insert(key.clone(), id(&body));
                                break;
                            }
                            Some((_, status, body)) => {
                                assert_eq!(status, 503, "enqueue {key}: {body}");
                                // The retry interval while the database is unavailable.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            None => panic!("no node answers"),
                        }
                    }
                }
            }));
        }
        let mut workers = Vec::new();
        for w in 0..9usize {
            let (urls, seen, done, stop) = (urls.clone(), seen.clone(), done.clone(), stop.clone());
            workers.push(tokio::spawn(async move {
                let mut home = w % 3;
                while !stop.load(Ordering::Relaxed) {
                    let lease = json!({"max": 2, "wait_ms": 200, "worker": format!("w{w}")});
                    let Some((node, status, body)) =
                        post_any(&urls, home, "/v1/queues/mn/lease", &lease).await
                    else {
                        panic!("no node answers")
                    };
                    home = node;
                    if status != 200 {
                        // The retry interval while the database is unavailable.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    let leased = body["tasks"].as_array().unwrap().clone();
                    for t in &leased {
                        let g = t["payload"]["g"].as_i64().unwrap();
                        let mut s = seen.lock().unwrap();
                        s.running.insert(id(t));
                        s.max_running = s.max_running.max(s.running.len());
                        if g >= 0 {
                            let n = s.running_groups.entry(g).or_default();
                            *n += 1;
                            assert_eq!(*n, 1, "two tasks of group {g} running at once");
                            if s.leased.insert(id(t)) {
                                s.order.entry(g).or_default().push(t["payload"]["i"].as_i64().unwrap());
                            }
                        }
                    }
                    // The work itself: 0-3 ms, so that leases overlap and the limit is tested.
                    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..4))).await;
                    for t in &leased {
                        let g = t["payload"]["g"].as_i64().unwrap();
                        {
                            // Finished before the ack lands: the store frees the
                            // group and the slot only after it.
                            let mut s = seen.lock().unwrap();
                            s.running.remove(&id(t));
                            if g >= 0 {
                                *s.running_groups.get_mut(&g).unwrap() -= 1;
                            }
                        }
                        let ack = json!({"lease": token(t), "result": {"by": w}});
                        // The same ack again, through another node, if the first
                        // node died before it answered.
                        loop {
                            let path = format!("/v1/tasks/{}/ack", id(t));
                            let Some((node, status, body)) = post_any(&urls, home, &path, &ack).await else {
                                panic!("no node answers")
                            };
                            home = node;
                            match status {
                                200 => {
                                    let mut s = seen.lock().unwrap();
                                    let tokens = s.acked_tokens.entry(id(t)).or_default();
                                    let first = tokens.is_empty();
                                    tokens.insert(token(t));
                                    if first {
                                        done.fetch_add(1, Ordering::Relaxed);
                                    }
                                    break;
                                }
                                409 => break, // the lease expired meanwhile; the task comes back
                                // The retry interval while the database is unavailable.
                                503 => tokio::time::sleep(Duration::from_millis(20)).await,
                                other => panic!("ack: {other} {body}"),
                            }
                        }
                    }
                }
            }));
        }

        // Halfway through, kill node 1 outright.
        wait_until(Duration::from_secs(120), "half of the tasks acked", || async {
            done.load(Ordering::Relaxed) >= total / 2
        })
        .await;
        nodes[1].kill9().await;
        let at_kill = done.load(Ordering::Relaxed);
        for p in producers {
            p.await.unwrap();
        }
        wait_until(Duration::from_secs(120), "every task acked", || async {
            done.load(Ordering::Relaxed) >= total
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }

        let enqueued = enqueued.lock().unwrap().clone();
        assert_eq!(enqueued.len(), total);
        let mut stored: HashMap<String, Value> = HashMap::new();
        let mut after = String::new();
        loop {
            let (status, page) = nodes[2].get(&format!("/v1/queues/mn/tasks?limit=1000&after={after}")).await;
            assert_eq!(status, 200, "{page}");
            for t in page["tasks"].as_array().unwrap() {
                let key = t["payload"]["key"].as_str().unwrap().to_owned();
                assert!(stored.insert(key.clone(), t.clone()).is_none(), "key {key} stored twice");
            }
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => break,
            }
        }
        for (key, task_id) in &enqueued {
            let task = stored.get(key).unwrap_or_else(|| panic!("acknowledged enqueue {key} lost"));
            assert_eq!(&id(task), task_id, "{key}");
            assert_eq!(task["state"], "succeeded", "{task}");
        }
        let s = seen.lock().unwrap();
        for (task_id, tokens) in &s.acked_tokens {
            assert_eq!(tokens.len(), 1, "task {task_id} completed under two leases: {tokens:?}");
        }
        assert!(s.max_running <= limit, "{} tasks ran at once with a limit of {limit}", s.max_running);
        for g in 0..n_groups {
            assert_eq!(s.order[&g], (0..per_group).collect::<Vec<_>>(), "group {g} ran out of order");
        }
        eprintln!(
            "3 nodes, node 1 killed after {at_kill} of {total} acks; all {total} done, at most {} running",
            s.max_running
        );
    }

    /// A lease waiting on node B is answered promptly when a task is enqueued
    /// through node A: LISTEN/NOTIFY, not B's timer or the wait running out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_enqueue_on_one_node_wakes_a_long_poll_on_another() {
        let Some(backend) = Backend::postgres() else { return };
        let a = Server::start(&backend).await;
        let b = Server::start(&backend).await;
        // Create the queue, and wait for B's listener (it logs at debug once it listens).
        assert_eq!(b.put("/v1/queues/lp", json!({})).await.0, 200);
        b.wait_for_log("listening for work from other nodes", 1).await;
        for round in 0..3 {
            let url = b.url("/v1/queues/lp/lease");
            let waiting = tokio::spawn(async move {
                let response = http().post(url).json(&json!({"wait_ms": 20000})).send().await.expect("lease");
                (Instant::now(), response.json::<Value>().await.expect("json"))
            });
            b.wait_for_log(LONG_POLL_WAITING, round + 1).await;
            let enqueued_at = Instant::now();
            let (status, task) = a.post("/v1/queues/lp/tasks", json!({"kind": "k", "payload": round})).await;
            assert_eq!(status, 201, "{task}");
            let (answered_at, leased) = waiting.await.unwrap();
            let delay = answered_at.duration_since(enqueued_at);
            assert_eq!(id(&leased["tasks"][0]), id(&task), "round {round}: {leased}");
            assert!(delay < Duration::from_millis(1500), "round {round}: woken after {delay:?}");
            eprintln!("round {round}: the long poll on B got A's task {delay:?} after the enqueue");
        }
    }

    /// A node loses its database: first its connections are killed
    /// (`pg_terminate_backend`), then the network to the database is cut for a
    /// while (a proxy drops every connection and refuses new ones). Requests in
    /// the gap get 503 `unavailable` or succeed after a reconnect; nothing
    /// acknowledged is lost; the node serves again by itself, without a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_node_rides_out_a_database_outage() {
        let Some(direct) = Backend::postgres() else { return };
        let proxy = Proxy::start(upstream_of(&direct.pg().url)).await;
        let backend = direct.through(via_port(&direct.pg().url, proxy.port));
        let node = Server::start(&backend).await;
        let app = node.application_name.clone().expect("a PostgreSQL node");
        let url = node.base.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let enqueued = Arc::new(Mutex::new(HashMap::<String, String>::new()));
        let acked = Arc::new(Mutex::new(HashSet::<String>::new()));
        let statuses = Arc::new(Mutex::new(HashMap::<u16, usize>::new()));
        let mut clients = Vec::new();
        for c in 0..2 {
            let (url, stop, enqueued, statuses) =
                (url.clone(), stop.clone(), enqueued.clone(), statuses.clone());
            clients.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("c{c}-{i}");
                    let response = http()
                        .post(format!("{url}/v1/queues/out/tasks"))
                        .json(&json!({"kind": "k", "payload": {"key": key}, "idempotency_key": key}))
                        .send()
                        .await
                        .expect("the node itself stays up");
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.expect("json");
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    match status {
                        200 | 201 => {
                            enqueued.lock().unwrap().insert(key, id(&body));
                            i += 1;
                        }
                        503 => {
                            assert_eq!(body["error"]["code"], "unavailable", "{body}");
                            // The retry interval while the database is unreachable.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        other => panic!("enqueue: {other} {body}"),
                    }
                }
            }));
        }
        {
            let (url, stop, acked, statuses) = (url.clone(), stop.clone(), acked.clone(), statuses.clone());
            clients.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let response = http()
                        .post(format!("{url}/v1/queues/out/lease"))
                        .json(&json!({"max": 20, "wait_ms": 100}))
                        .send()
                        .await
                        .expect("the node itself stays up");
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.expect("json");
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    if status != 200 {
                        assert_eq!(
                            (status, body["error"]["code"].as_str()),
                            (503, Some("unavailable")),
                            "{body}"
                        );
                        // The retry interval while the database is unreachable.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    let acks: Vec<Value> = body["tasks"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|t| json!({"id": id(t), "lease": token(t)}))
                        .collect();
                    if acks.is_empty() {
                        continue;
                    }
                    let response = http()
                        .post(format!("{url}/v1/tasks/ack"))
                        .json(&json!({ "acks": acks }))
                        .send()
                        .await
                        .expect("the node itself stays up");
                    let status = response.status().as_u16();
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                    let body: Value = response.json().await.expect("json");
                    if status == 200 {
                        for item in body["results"].as_array().unwrap() {
                            if item["status"] == 200 {
                                acked.lock().unwrap().insert(id(&item["task"]));
                            }
                        }
                    } else {
                        assert_eq!(status, 503, "{body}");
                    }
                }
            }));
        }
        let count = |map: &Mutex<HashMap<String, String>>| map.lock().unwrap().len();
        let unavailable = || statuses.lock().unwrap().get(&503).copied().unwrap_or(0);
        // Waits for `n` more acknowledged enqueues than `from`.
        let wait_for_progress = |from: usize, n: usize, what: &'static str| {
            let enqueued = enqueued.clone();
            async move {
                let what = format!("{n} more enqueues {what}");
                wait_until(Duration::from_secs(30), &what, || async { count(&enqueued) >= from + n }).await;
            }
        };
        wait_for_progress(0, 50, "before the outage").await;

        // 1. Every connection of the node is killed, three times over: each time
        // once the node has connected again (it does so when a request needs
        // a connection, which on a busy machine may take a while) and served.
        let client = admin(&direct.pg().schema.admin_url).await;
        for round in 0..3 {
            let what = format!("connections of the node to kill (round {round})");
            wait_until(Duration::from_secs(30), &what, || async {
                let killed = client
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                        &[&app],
                    )
                    .await
                    .expect("pg_terminate_backend");
                !killed.is_empty()
            })
            .await;
            wait_for_progress(count(&enqueued), 1, "after a kill").await;
        }
        wait_for_progress(count(&enqueued), 50, "after pg_terminate_backend").await;

        // 2. The database is unreachable until requests have had 503s for it.
        let before_cut = unavailable();
        proxy.cut();
        wait_until(Duration::from_secs(30), "503s while the database is unreachable", || async {
            unavailable() >= before_cut + 10
        })
        .await;
        let in_gap = unavailable() - before_cut;
        proxy.restore();
        let restored = Instant::now();
        wait_for_progress(count(&enqueued), 50, "after the database came back").await;
        let recovery = restored.elapsed();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        assert!(in_gap > 0, "requests in the gap should have had 503s");
        assert_eq!(node.get("/healthz").await.0, 200);

        // Nothing acknowledged is lost.
        let enqueued = enqueued.lock().unwrap().clone();
        let acked = acked.lock().unwrap().clone();
        let mut states: HashMap<String, String> = HashMap::new();
        let mut keys = HashSet::new();
        let mut after = String::new();
        loop {
            let (status, page) = node.get(&format!("/v1/queues/out/tasks?limit=1000&after={after}")).await;
            assert_eq!(status, 200, "{page}");
            for t in page["tasks"].as_array().unwrap() {
                assert!(keys.insert(t["payload"]["key"].as_str().unwrap().to_owned()), "duplicate {t}");
                states.insert(id(t), t["state"].as_str().unwrap().to_owned());
            }
            match page["next"].as_str() {
                Some(next) => after = next.to_owned(),
                None => break,
            }
        }
        for (key, task_id) in &enqueued {
            assert!(states.contains_key(task_id), "acknowledged enqueue {key} ({task_id}) lost");
        }
        for task_id in &acked {
            assert_eq!(states.get(task_id).map(String::as_str), Some("succeeded"), "acked task {task_id}");
        }
        eprintln!(
            "outage: statuses {:?}; {} enqueues and {} acks acknowledged, all intact; serving again {recovery:?} after the database returned",
            statuses.lock().unwrap(),
            enqueued.len(),
            acked.len()
        );
    }
}

/// `Prefer: return=minimal` (RFC 7240) turns the answers of enqueues and acks into
/// ids and states, and a lease's tasks into what a worker needs; errors keep their
/// whole body; the tasks themselves are whole.
async fn prefer_return_minimal_shortens_answers_but_not_errors(backend: Backend) {
    let server = Server::start(&backend).await;
    let client = http();
    let post = |path: &str, body: Value| {
        client.post(server.url(path)).header("prefer", "return=minimal").json(&body).send()
    };
    let answer = post("/v1/queues/brief/tasks", json!({"kind": "k", "payload": {"n": 1}})).await.unwrap();
    assert_eq!(answer.status(), 201);
    assert_eq!(answer.headers()["preference-applied"], "return=minimal");
    let one: Value = answer.json().await.unwrap();
    assert_eq!(one["state"], "ready", "{one}");
    assert!(one.get("payload").is_none(), "a short answer holds no payload: {one}");
    let answer = post(
        "/v1/queues/brief/tasks/batch",
        json!({"tasks": [{"kind": "k", "payload": {"n": 2}}, {"kind": "", "payload": {"n": 3}}]}),
    )
    .await
    .unwrap();
    assert_eq!(answer.headers()["preference-applied"], "return=minimal");
    let batch: Value = answer.json().await.unwrap();
    let items = batch["results"].as_array().unwrap();
    assert_eq!(items[0]["status"], 201, "{batch}");
    assert!(items[0]["id"].is_string() && items[0].get("task").is_none(), "{batch}");
    assert_eq!(items[1]["status"], 400, "{batch}");
    assert!(items[1]["error"]["message"].is_string(), "errors are never shortened: {batch}");

    let (_, leased) = server.post("/v1/queues/brief/lease", json!({"max": 2})).await;
    let leased = leased["tasks"].as_array().unwrap().clone();
    assert_eq!(leased.len(), 2, "{leased:?}");
    assert_eq!(leased[0]["payload"], json!({"n": 1}), "a lease without the header is whole");
    assert_eq!(leased[0]["queue"], "brief", "a lease without the header is whole");
    let answer = post(&format!("/v1/tasks/{}/ack", id(&leased[0])), json!({"lease": token(&leased[0])}))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.json::<Value>().await.unwrap(), json!({"id": id(&leased[0]), "state": "succeeded"}));
    let acks = json!({"acks": [
        {"id": id(&leased[1]), "lease": token(&leased[1])},
        {"id": id(&leased[1]), "lease": "stale"},
    ]});
    let batch: Value = post("/v1/tasks/ack", acks).await.unwrap().json().await.unwrap();
    assert_eq!(batch["results"][0], json!({"status": 200, "id": id(&leased[1])}), "{batch}");
    assert_eq!(batch["results"][1]["status"], 409, "{batch}");
    assert_eq!(batch["results"][1]["error"]["code"], "lease_lost", "{batch}");

    // Without the header, the same routes answer whole tasks.
    let (status, whole) =
        server.post("/v1/queues/brief/tasks", json!({"kind": "k", "payload": {"n": 4}})).await;
    assert_eq!(status, 201);
    assert_eq!(whole["payload"], json!({"n": 4}), "{whole}");
    let (_, got) = server.get(&format!("/v1/tasks/{}", id(&one))).await;
    assert_eq!(got["state"], "succeeded", "{got}");
    assert_eq!(got["history"][0]["outcome"], "succeeded", "whole tasks carry their history: {got}");
    assert!(whole["history"].as_array().is_some_and(Vec::is_empty), "{whole}");

    // A short lease: each task as a worker needs it, and its lease works.
    let answer = post("/v1/queues/brief/lease", json!({"max": 5})).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["preference-applied"], "return=minimal");
    let short: Value = answer.json().await.unwrap();
    let tasks = short["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1, "{short}");
    let mut keys: Vec<&str> = tasks[0].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["attempts", "id", "kind", "lease", "max_attempts", "payload"], "{short}");
    assert_eq!((tasks[0]["id"].clone(), tasks[0]["payload"].clone()), (whole["id"].clone(), json!({"n": 4})));
    assert_eq!((tasks[0]["attempts"].clone(), tasks[0]["kind"].clone()), (json!(1), json!("k")));
    let (status, acked) =
        server.post(&format!("/v1/tasks/{}/ack", id(&tasks[0])), json!({"lease": token(&tasks[0])})).await;
    assert_eq!((status, acked["state"].clone()), (200, json!("succeeded")), "{acked}");
    let empty = post("/v1/queues/brief/lease", json!({"max": 5})).await.unwrap();
    assert_eq!(empty.headers()["preference-applied"], "return=minimal");
    assert_eq!(empty.json::<Value>().await.unwrap(), json!({"tasks": []}));
}

/// The kinds of the tasks the polls got, sorted; each must have got exactly one.
async fn one_task_each(polls: Vec<tokio::task::JoinHandle<Vec<Value>>>) -> Vec<String> {
    let mut kinds = Vec::new();
    for poll in polls {
        let tasks = poll.await.expect("poll");
        assert_eq!(tasks.len(), 1, "one task per waiting lease: {tasks:?}");
        kinds.push(tasks[0]["kind"].as_str().expect("kind").to_owned());
    }
    kinds.sort();
    kinds
}

/// Waiting leases are woken one per task that became leasable, not all at once,
/// and none is left asleep beside a leasable task: a batch of three tasks reaches
/// three waiting leases; a single enqueue reaches one of two and the next the
/// other; an ack that frees the only concurrency slot reaches the waiting lease.
/// A lease left asleep would only claim again at its deadline, 30 s on; one
/// that answers after 20 s fails here (the wake-ups take milliseconds). Each
/// change is made once the server says its leases are waiting (its log).
async fn long_polls_are_woken_one_per_leasable_task(backend: Backend) {
    let server = Server::start(&backend).await;
    let poll = |queue: &str| {
        let url = server.url(&format!("/v1/queues/{queue}/lease"));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let response =
                http().post(url).json(&json!({"max": 1, "wait_ms": 30000})).send().await.expect("lease");
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.expect("lease body");
            assert!(started.elapsed() < Duration::from_secs(20), "the lease was not woken: {body}");
            body["tasks"].as_array().expect("tasks").clone()
        })
    };

    let polls: Vec<_> = (0..3).map(|_| poll("wake")).collect();
    server.wait_for_log(LONG_POLL_WAITING, 3).await;
    let batch = json!({"tasks": [{"kind": "a"}, {"kind": "b"}, {"kind": "c"}]});
    let (status, _) = server.post("/v1/queues/wake/tasks/batch", batch).await;
    assert_eq!(status, 200);
    assert_eq!(one_task_each(polls).await, ["a", "b", "c"], "each waiting lease gets one task of the batch");

    let polls: Vec<_> = (0..2).map(|_| poll("one")).collect();
    server.wait_for_log(LONG_POLL_WAITING, 5).await;
    for kind in ["x", "y"] {
        assert_eq!(server.post("/v1/queues/one/tasks", json!({"kind": kind})).await.0, 201);
    }
    assert_eq!(one_task_each(polls).await, ["x", "y"], "each of two enqueues reaches a waiting lease");

    let (status, _) = server.put("/v1/queues/slot", json!({"concurrency": 1})).await;
    assert_eq!(status, 200);
    for kind in ["first", "second"] {
        assert_eq!(server.post("/v1/queues/slot/tasks", json!({"kind": kind})).await.0, 201);
    }
    let (_, leased) = server.post("/v1/queues/slot/lease", json!({"max": 2})).await;
    let leased = leased["tasks"].as_array().expect("tasks").clone();
    assert_eq!(leased.len(), 1, "the slot holds one: {leased:?}");
    let waiter = poll("slot");
    server.wait_for_log(LONG_POLL_WAITING, 6).await;
    let ack = format!("/v1/tasks/{}/ack", id(&leased[0]));
    assert_eq!(server.post(&ack, json!({"lease": token(&leased[0])})).await.0, 200);
    let tasks = waiter.await.expect("poll");
    assert_eq!(tasks.len(), 1, "the freed slot reaches the waiting lease: {tasks:?}");
    assert_eq!(tasks[0]["kind"], "second");
}
