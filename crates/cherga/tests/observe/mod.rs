//! What the binary tells about itself: `/metrics` read by a Prometheus text
//! parser and checked against the queue's counts, `/readyz` while the database
//! goes away and comes back, request ids, and JSON log lines.

use super::harness::{Backend, Proxy, Server, upstream_of, via_port, wait_until};
use super::token;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// One scrape: its text, and its samples parsed by `prometheus-parse`.
async fn scrape(server: &Server) -> (String, prometheus_parse::Scrape) {
    let response = reqwest::get(server.url("/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = response.text().await.unwrap();
    let parsed =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    (text, parsed)
}

/// The value of the sample `metric` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
    match &sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(*v),
        other => panic!("{metric}: not a single value: {other:?}"),
    }
}

async fn metrics_agree_with_the_queue(backend: Backend) {
    let server = Server::start(&backend).await;
    for n in 0..3 {
        let (status, body) = server.post("/v1/queues/m/tasks", json!({"kind": "k", "payload": n})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, leased) = server.post("/v1/queues/m/lease", json!({"max": 2})).await;
    assert_eq!(status, 200, "{leased}");
    let first = &leased["tasks"][0];
    let (status, body) =
        server.post(&format!("/v1/tasks/{}/ack", super::id(first)), json!({"lease": token(first)})).await;
    assert_eq!(status, 200, "{body}");

    let (_, queue) = server.get("/v1/queues/m").await;
    let (text, scrape) = scrape(&server).await;
    let counts: HashMap<String, u64> = serde_json::from_value(queue["counts"].clone()).unwrap();
    assert_eq!(counts.values().sum::<u64>(), 3, "{queue}");
    for (state, n) in &counts {
        let scraped = value(&scrape, "cherga_queue_tasks", &[("queue", "m"), ("state", state)]);
        assert_eq!(scraped, Some(*n as f64), "state {state}: {queue}");
    }
    assert_eq!(counts["ready"], 1);
    assert_eq!(counts["running"], 1);
    assert_eq!(counts["succeeded"], 1);
    for (change, n) in [("enqueued", 3.0), ("leased", 2.0), ("acked", 1.0), ("nacked", 0.0)] {
        let scraped = value(&scrape, "cherga_task_transitions_total", &[("queue", "m"), ("change", change)]);
        assert_eq!(scraped, Some(n), "{change}");
    }
    assert_eq!(value(&scrape, "cherga_tasks_dead_total", &[("queue", "m")]), Some(0.0));
    assert_eq!(value(&scrape, "cherga_task_first_lease_seconds_count", &[("queue", "m")]), Some(2.0));
    let age = value(&scrape, "cherga_queue_oldest_ready_age_seconds", &[("queue", "m")]).unwrap();
    assert!((0.0..3600.0).contains(&age), "age of the ready task: {age}");
    // Routes by template, never by the path sent. (Read from the text:
    // prometheus-parse skips samples whose label values hold a `}`, which
    // the format allows and route templates have.)
    let routes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("cherga_http_request_duration_seconds_count{"))
        .filter_map(|l| l.split("route=\"").nth(1)?.split('"').next())
        .collect();
    assert!(routes.contains(&"/v1/queues/{queue}/tasks"), "{routes:?}");
    assert!(routes.contains(&"/v1/tasks/{id}/ack"), "{routes:?}");
    assert!(!routes.iter().any(|r| r.contains("/m/")), "{routes:?}");
    assert!(value(&scrape, "cherga_http_connections_open", &[]).unwrap() >= 1.0);
    assert_eq!(value(&scrape, "cherga_long_polls_waiting", &[]), Some(0.0));
    assert_eq!(value(&scrape, "cherga_event_stream_readers", &[]), Some(0.0));
    match backend {
        Backend::Sqlite => {
            let batches = value(&scrape, "cherga_store_commit_batch_jobs_count", &[]).unwrap();
            assert!(batches >= 5.0, "every change was a batch: {batches}");
            assert!(value(&scrape, "cherga_store_fsync_seconds_count", &[]).unwrap() >= 1.0);
            assert!(value(&scrape, "cherga_store_writer_queue_depth", &[]).is_some());
        }
        Backend::Postgres(_) => {
            assert_eq!(value(&scrape, "cherga_store_pool_connections_max", &[]), Some(8.0));
        }
    }
}

async fn every_answer_carries_a_request_id_and_json_logs_parse(backend: Backend) {
    let server = Server::start_with(&backend, &["--log-format", "json"]).await;
    let client = super::harness::http();
    let response =
        client.get(server.url("/v1/queues/nope")).header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "trace-42");
    let response = client.get(server.url("/healthz")).send().await.unwrap();
    let made = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(made.len(), 32, "a new id: {made}");

    server.wait_for_log("trace-42", 1).await;
    let line = server.log.text().lines().find(|l| l.contains("trace-42")).unwrap().to_owned();
    let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(parsed["span"]["id"], "trace-42", "{parsed}");
    assert_eq!(parsed["span"]["route"], "/v1/queues/{queue}", "{parsed}");
    assert_eq!(parsed["fields"]["status"], 404, "{parsed}");
    assert!(!line.contains('\u{1b}'), "no colour codes: {line}");
}

async fn readyz_answers_200_while_the_store_commits(backend: Backend) {
    let server = Server::start(&backend).await;
    let (status, body) = server.get("/readyz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_agree_with_the_queue() {
        super::metrics_agree_with_the_queue(Backend::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_answer_carries_a_request_id_and_json_logs_parse() {
        super::every_answer_carries_a_request_id_and_json_logs_parse(Backend::sqlite()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_answers_200_while_the_store_commits() {
        super::readyz_answers_200_while_the_store_commits(Backend::sqlite()).await;
    }
}

mod postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_agree_with_the_queue() {
        let Some(backend) = Backend::postgres() else { return };
        super::metrics_agree_with_the_queue(backend).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_answers_200_while_the_store_commits() {
        let Some(backend) = Backend::postgres() else { return };
        super::readyz_answers_200_while_the_store_commits(backend).await;
    }

    /// The database goes away (every connection cut, none let through): 503
    /// with a JSON error; it comes back: 200 again, `/healthz` 200 throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_answers_503_while_the_database_is_away() {
        let Some(direct) = Backend::postgres() else { return };
        let proxy = Proxy::start(upstream_of(&direct.pg().url)).await;
        let backend = direct.through(via_port(&direct.pg().url, proxy.port));
        let server = Server::start(&backend).await;
        let (status, body) = server.get("/readyz").await;
        assert_eq!(status, 200, "{body}");

        proxy.cut();
        let (status, body) = server.get("/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("store"), "{body}");
        let (status, _) = server.get("/healthz").await;
        assert_eq!(status, 200, "liveness is not readiness");

        proxy.restore();
        wait_until(Duration::from_secs(30), "ready again once the database is back", || async {
            server.get("/readyz").await.0 == 200
        })
        .await;
    }
}
