//! `/metrics`, `/readyz` and request ids through the router in process.

use super::security::{Server, request};
use axum::body::Body;

async fn text(response: axum::response::Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 26).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// `/metrics` tells about every queue: a token must be able to read them all.
/// `/readyz` is open, like `/healthz`.
#[tokio::test]
async fn metrics_need_a_token_that_reads_every_queue_and_readyz_is_open() {
    let server = Server::authenticated(|_| {}).await;
    let cases: [(&[&str], u16); 6] = [
        (&["read:*"], 200),
        (&["admin"], 200),
        (&["consume:*"], 200),
        (&["read:billing.*"], 403),
        (&["produce:q", "consume:q"], 403),
        (&[], 403),
    ];
    for (scopes, want) in cases {
        let bearer = format!("Bearer {}", server.token(scopes));
        let response = server
            .raw(request("GET", "/metrics").header("authorization", bearer).body(Body::empty()).unwrap())
            .await;
        assert_eq!(response.status(), want, "scopes {scopes:?}");
    }
    let response = server.raw(request("GET", "/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), 401);
    let (status, body) = server.send(request("GET", "/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ready")), "{body}");
}

/// Every answer carries `X-Request-Id`: the client's when it is sane, else a
/// new one; refusals and unknown routes too.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let server = Server::open(|_| {}).await;
    let sent = request("GET", "/healthz").header("x-request-id", "abc-123").body(Body::empty()).unwrap();
    let response = server.raw(sent).await;
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    let mut seen = Vec::new();
    for (uri, id) in [("/healthz", "bad id"), ("/nowhere", ""), ("/v1/queues/%FF", "x")] {
        let mut builder = request("GET", uri);
        if !id.is_empty() {
            builder = builder.header("x-request-id", id);
        }
        let response = server.raw(builder.body(Body::empty()).unwrap()).await;
        let made = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        if id == "x" {
            assert_eq!(made, "x");
        } else {
            assert_eq!(made.len(), 32, "{uri}: a new id, not {id:?}");
            seen.push(made);
        }
    }
    assert_ne!(seen[0], seen[1]);
}

/// A scrape of 1,000 queues: one sample per queue and state, and the time it
/// took printed (a figure to report, not a limit: timing is not asserted).
#[tokio::test]
async fn a_scrape_covers_every_queue() {
    let server = Server::open(|_| {}).await;
    for n in 0..1_000 {
        let (status, body) =
            server.json("POST", &format!("/v1/queues/q{n:04}/tasks"), r#"{"kind":"k"}"#).await;
        assert_eq!(status, 201, "{body}");
    }
    let mut took = Vec::new();
    let mut scraped = String::new();
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let response = server.raw(request("GET", "/metrics").body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), 200);
        scraped = text(response).await;
        took.push(started.elapsed());
    }
    let tasks = scraped.lines().filter(|l| l.starts_with("cherga_queue_tasks{")).count();
    assert_eq!(tasks, 6_000, "6 states of 1,000 queues");
    let ready = scraped
        .lines()
        .filter(|l| {
            l.starts_with("cherga_queue_tasks{") && l.contains("state=\"ready\"") && l.ends_with(" 1")
        })
        .count();
    assert_eq!(ready, 1_000);
    took.sort();
    eprintln!(
        "scrape of 1,000 queues: median {:?} over 5 (min {:?}, max {:?}), {} bytes",
        took[2],
        took[0],
        took[4],
        scraped.len()
    );
}
