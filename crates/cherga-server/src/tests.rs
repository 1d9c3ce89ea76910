//! Regressions found by fuzzing (`fuzz/`), through the real router; the
//! security rules in `security`; the OpenAPI document against the server in
//! `document`; the dashboard's headers and `GET /v1/whoami` in `ui`; metrics,
//! readiness and request ids in `observe`.

mod document;
mod observe;
mod security;
mod ui;

use crate::{App, ServerConfig, router};
use axum::body::Body;
use axum::http::Request;
use std::sync::Arc;
use tower::ServiceExt as _;

async fn answer(method: &str, uri: &str, body: &str) -> (u16, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let store = cherga_store_sqlite::SqliteStore::open(cherga_store_sqlite::Options {
        path: dir.path().join("db"),
        durable: false,
        ..cherga_store_sqlite::Options::in_dir(dir.path())
    })
    .unwrap();
    let config = ServerConfig::unauthenticated(1 << 20, 1 << 16);
    let (app, _shutdown) = App::new(Arc::new(store), &config);
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = router(app, &config).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!("{method} {uri}: the answer is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
    });
    (status, value)
}

/// fuzz/http_router: a path value that is not UTF-8 got axum's plain-text error.
#[tokio::test]
async fn invalid_utf8_in_a_path_gets_a_json_error() {
    for (method, uri) in [
        ("GET", "/v1/tasks/%FF"),
        ("DELETE", "/v1/tasks/%FF"),
        ("POST", "/v1/tasks/%C3/ack"),
        ("GET", "/v1/queues/%FF"),
    ] {
        let (status, body) = answer(method, uri, "{}").await;
        assert_eq!(status, 400, "{method} {uri}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{method} {uri}: {body}");
    }
}

/// A time past the year 9999 was stored, and writing it back (RFC 3339 stops at
/// 9999) panicked the handler.
#[tokio::test]
async fn times_past_the_year_9999_are_refused_not_stored() {
    for body in [
        r#"{"kind":"k","run_at":253402300800000}"#,
        r#"{"kind":"k","run_at":9223372036854775807}"#,
        r#"{"kind":"k","delay_ms":9223372036854775807}"#,
    ] {
        let (status, answer) = answer("POST", "/v1/queues/q/tasks", body).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, answer) =
        answer("POST", "/v1/queues/q/tasks", r#"{"kind":"k","run_at":"9999-12-31T23:59:59.999Z"}"#).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["run_at"], "9999-12-31T23:59:59.999Z");
}
