//! The OpenAPI document agrees with the server: what it declares is accepted,
//! and the security it states is the server's.

use super::security::{Server, request};
use axum::body::Body;
use serde_json::Value;

/// The batch item's schema declares every field but `kind` nullable, and so
/// does the enqueue's for `priority`: `null` is the default.
#[tokio::test]
async fn a_null_priority_is_the_default_priority() {
    let server = Server::open(|_| {}).await;
    let (status, task) = server.json("POST", "/v1/queues/q/tasks", r#"{"kind":"k","priority":null}"#).await;
    assert_eq!((status, &task["priority"]), (201, &Value::from(0)), "{task}");
    let batch = r#"{"tasks":[{"kind":"k","priority":null,"payload":null,"run_at":null,"delay_ms":null,
        "idempotency_key":null,"group":null,"max_attempts":null},{"kind":"k","priority":-3}]}"#;
    let (status, answer) = server.json("POST", "/v1/queues/q/tasks/batch", batch).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], 201, "{answer}");
    assert_eq!(results[0]["task"]["priority"], 0, "{answer}");
    assert_eq!(results[1]["task"]["priority"], -3, "{answer}");
}

/// With auth off no operation needs a token, and the document must not say
/// otherwise (clients and fuzzers would send one, or expect 401s).
#[tokio::test]
async fn the_document_asks_for_a_token_only_when_the_server_does() {
    for (server, auth) in [(Server::open(|_| {}).await, false), (Server::authenticated(|_| {}).await, true)] {
        let (status, document) =
            server.send(request("GET", "/v1/openapi.json").body(Body::empty()).unwrap()).await;
        assert_eq!(status, 200);
        let bearer = serde_json::json!([{"bearer": []}]);
        assert_eq!(document.get("security") == Some(&bearer), auth, "auth {auth}: {}", document["security"]);
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let open = ["/healthz", "/readyz", "/v1/openapi.json"].contains(&path.as_str());
                let needs_token = operation["responses"].get("401").is_some();
                assert_eq!(needs_token, auth && !open, "auth {auth}: {method} {path} and 401");
            }
        }
    }
}
