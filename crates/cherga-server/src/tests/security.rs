//! The HTTP rules of SECURITY.md, through the router in process: what a browser
//! on the same machine may not do, hostile JSON, names, revocations in the
//! clock-skew leeway, and the OpenAPI document's security as served.

use crate::{App, AuthConfig, ServerConfig, TokenKeys, router};
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::http::request::Builder;
use cherga_api::auth::{KeyEntry, KeyFile};
use cherga_auth::{Alg, KeySet, NewToken, Policy, Verifier};
use cherga_store_sqlite::SqliteStore;
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt as _;

/// A router over a fresh embedded store, with the app behind it.
pub(super) struct Server {
    router: Router,
    app: Arc<App<SqliteStore>>,
    /// The key tokens are signed with, when auth is on.
    key: Option<KeyEntry>,
    _dir: tempfile::TempDir,
}

fn store(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(cherga_store_sqlite::Options {
        path: dir.path().join("db"),
        durable: false,
        ..cherga_store_sqlite::Options::in_dir(dir.path())
    })
    .unwrap()
}

fn policy() -> Policy {
    Policy { issuer: "cherga".into(), audience: "cherga".into(), leeway_s: cherga_auth::LEEWAY_S }
}

impl Server {
    /// Auth off, the defaults of `cherga serve`, as changed by `edit`.
    pub(super) async fn open(edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::unauthenticated(1 << 20, 1 << 16);
        edit(&mut config);
        Self::with(config, None).await
    }

    /// Auth on with one EdDSA key.
    pub(super) async fn authenticated(edit: impl FnOnce(&mut ServerConfig)) -> Self {
        let key = cherga_auth::generate(Alg::EdDSA, "k").unwrap();
        let keys = KeySet::from_file_contents(&KeyFile { keys: vec![key.clone()] }).unwrap();
        let mut config = ServerConfig::unauthenticated(1 << 20, 1 << 16);
        config.auth = Some(AuthConfig {
            keys: TokenKeys::new(Verifier::new(keys, policy())),
            max_failures_per_minute: 0,
        });
        edit(&mut config);
        Self::with(config, Some(key)).await
    }

    async fn with(config: ServerConfig, key: Option<KeyEntry>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (app, _shutdown) = App::new(Arc::new(store(&dir)), &config);
        app.load_revocations().await.unwrap();
        Self { router: router(app.clone(), &config), app, key, _dir: dir }
    }

    /// A token with `scopes` and the id `jti`, valid from `now_s` for `ttl_s`.
    fn token_at(&self, scopes: &[&str], jti: Option<&str>, now_s: i64, ttl_s: i64) -> String {
        let key = self.key.clone().expect("auth is on");
        let keys = KeySet::from_file_contents(&KeyFile { keys: vec![key] }).unwrap();
        let new = NewToken {
            subject: "test".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            issuer: "cherga".into(),
            audience: "cherga".into(),
            now_s,
            ttl_s,
            jti: jti.map(str::to_owned),
        };
        cherga_auth::issue(&keys, None, &new).unwrap().0
    }

    pub(super) fn token(&self, scopes: &[&str]) -> String {
        self.token_at(scopes, None, crate::now_ms() / 1000, 3600)
    }

    /// Sends `request`; the whole answer, body unread.
    pub(super) async fn raw(&self, request: Request<Body>) -> axum::response::Response {
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// Sends `request`; the answer's status and JSON body.
    pub(super) async fn send(&self, request: Request<Body>) -> (u16, Value) {
        let what = format!("{} {}", request.method(), request.uri());
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{what}: the answer is not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
        });
        (status, value)
    }

    /// Sends a JSON `body` as the clients cherga ships do.
    pub(super) async fn json(&self, method: &str, uri: &str, body: &str) -> (u16, Value) {
        self.send(
            request(method, uri)
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap(),
        )
        .await
    }
}

/// A request addressed as a local client addresses it.
pub(super) fn request(method: &str, uri: &str) -> Builder {
    Request::builder().method(method).uri(uri).header("host", "127.0.0.1:7700")
}

#[track_caller]
fn expect_error((status, body): (u16, Value), want_status: u16, want_code: &str) -> String {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------
// Names.
// ---------------------------------------------------------------------------

/// `.` and `..` are resolved away in a URL path: no queue may carry them.
#[tokio::test]
async fn dot_and_dot_dot_are_not_queue_names() {
    let server = Server::open(|_| {}).await;
    for queue in [".", "..", "%2E", "%2E%2E", ".%2E"] {
        for (method, path) in [("POST", "tasks"), ("POST", "lease"), ("GET", "tasks")] {
            let uri = format!("/v1/queues/{queue}/{path}");
            let body = if path == "tasks" && method == "POST" { r#"{"kind":"k"}"# } else { "{}" };
            expect_error(server.json(method, &uri, body).await, 400, "invalid_queue_name");
        }
        expect_error(
            server.json("PUT", &format!("/v1/queues/{queue}"), "{}").await,
            400,
            "invalid_queue_name",
        );
    }
    let (status, body) = server.json("POST", "/v1/queues/.../tasks", r#"{"kind":"k"}"#).await;
    assert_eq!(status, 201, "three dots are a name: {body}");
}

// ---------------------------------------------------------------------------
// Revocations.
// ---------------------------------------------------------------------------

/// A token is accepted until its `exp` plus the clock-skew leeway, so its
/// revocation must be kept that long too: it was kept until `exp` only, and the
/// revoked token worked again for the rest of the leeway.
#[tokio::test]
async fn a_revoked_token_stays_refused_through_the_leeway() {
    let server = Server::authenticated(|_| {}).await;
    let now_s = crate::now_ms() / 1000;
    let victim = server.token_at(&["produce:q"], Some("victim"), now_s, 60);
    let exp_ms = (now_s + 60) * 1000;
    // As `cherga token revoke` sends it: until the token's own exp.
    let (status, body) = server
        .send(
            request("POST", "/v1/revocations")
                .header("authorization", format!("Bearer {}", server.token(&["admin"])))
                .header("content-type", "application/json")
                .body(Body::from(json!({"jti": "victim", "expires_at": exp_ms}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let guard = server.app.guard.as_ref().unwrap();
    let (parts, ()) = request("GET", "/v1/queues")
        .header("authorization", format!("Bearer {victim}"))
        .body(())
        .unwrap()
        .into_parts();
    let leeway_ms = cherga_auth::LEEWAY_S * 1000;
    // Every node reads the revocations from the store at `now`, then checks.
    for now in [exp_ms - 1_000, exp_ms, exp_ms + 1, exp_ms + leeway_ms / 2, exp_ms + leeway_ms - 1] {
        assert_eq!(guard.refresh_revocations(server.app.store.as_ref(), now).await.unwrap(), 1);
        let refused = guard.authenticate(&parts, now).expect_err("a revoked token");
        assert!(refused.message.contains("revoked"), "at exp + {} ms: {}", now - exp_ms, refused.message);
    }
    let now = exp_ms + leeway_ms;
    let kept = guard.refresh_revocations(server.app.store.as_ref(), now).await.unwrap();
    assert_eq!(kept, 0, "once the token is refused as expired, its revocation is forgotten");
    let refused = guard.authenticate(&parts, now).expect_err("an expired token");
    assert!(refused.message.contains("expired"), "{}", refused.message);
}

// ---------------------------------------------------------------------------
// Hostile JSON.
// ---------------------------------------------------------------------------

/// JSON nested `levels` deep: arrays, with an object and a string of brackets
/// (which must not count) on the way down.
fn nested(levels: usize) -> String {
    assert!(levels >= 2);
    let mut text = String::with_capacity(levels * 2 + 32);
    text.push_str(r#"{"s":"[[{{\"]]","a":"#);
    text.push_str(&"[".repeat(levels - 1));
    text.push_str(&"]".repeat(levels - 1));
    text.push('}');
    text
}

/// The default depth limit: 64 levels, counted from the body's own braces.
#[tokio::test]
async fn json_nested_deeper_than_the_limit_is_refused_before_anything_is_stored() {
    assert_eq!(crate::DEFAULT_MAX_JSON_DEPTH, 64);
    let server = Server::open(|_| {}).await;
    // `{"kind":"k","payload":P}`: the body is one level, P the rest.
    let enqueue = |payload_levels: usize| format!(r#"{{"kind":"k","payload":{}}}"#, nested(payload_levels));
    let (status, body) = server.json("POST", "/v1/queues/q/tasks", &enqueue(63)).await;
    assert_eq!(status, 201, "exactly at the limit: {body}");
    for levels in [64, 65, 5_000, 100_000] {
        let message = expect_error(
            server.json("POST", "/v1/queues/q/tasks", &enqueue(levels)).await,
            400,
            "invalid_json",
        );
        assert!(message.contains("64"), "the message names the limit: {message}");
        let batch = format!(r#"{{"tasks":[{{"kind":"k"}},{}]}}"#, enqueue(levels - 1));
        expect_error(server.json("POST", "/v1/queues/q/tasks/batch", &batch).await, 400, "invalid_json");
    }
    // Results, in an ack and in a lease's acks: nothing stored, the task still held.
    let (status, leased) = server.json("POST", "/v1/queues/q/lease", "{}").await;
    assert_eq!(status, 200, "{leased}");
    let task = &leased["tasks"][0];
    let (id, lease) = (task["id"].as_str().unwrap(), task["lease"]["token"].as_str().unwrap());
    for levels in [64, 100_000] {
        let ack = format!(r#"{{"lease":"{lease}","result":{}}}"#, nested(levels));
        expect_error(server.json("POST", &format!("/v1/tasks/{id}/ack"), &ack).await, 400, "invalid_json");
        let acks =
            format!(r#"{{"acks":[{{"id":"{id}","lease":"{lease}","result":{}}}]}}"#, nested(levels - 2));
        expect_error(server.json("POST", "/v1/queues/q/lease", &acks).await, 400, "invalid_json");
        expect_error(server.json("POST", "/v1/tasks/ack", &acks).await, 400, "invalid_json");
    }
    let (_, now) = server.json("GET", &format!("/v1/tasks/{id}"), "").await;
    assert_eq!(now["state"], "running", "{now}");
    // At the limit, in a lease's acks: body, acks, the ack, and 61 levels of result.
    let acks = format!(r#"{{"acks":[{{"id":"{id}","lease":"{lease}","result":{}}}]}}"#, nested(61));
    let (status, body) = server.json("POST", "/v1/queues/q/lease", &acks).await;
    assert_eq!((status, body["acks"][0]["status"].as_u64()), (200, Some(200)), "{body}");
    // And the server still serves.
    let (status, body) = server.json("POST", "/v1/queues/q/tasks", r#"{"kind":"after"}"#).await;
    assert_eq!(status, 201, "{body}");
    let (_, list) = server.json("GET", "/v1/queues/q/tasks", "").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 2, "only the two shallow tasks were stored: {list}");
}

/// The limit is the server's setting (`--max-json-depth`), and strings and
/// escapes do not count.
#[tokio::test]
async fn the_json_depth_limit_is_configured_and_counts_only_structure() {
    let server = Server::open(|config| config.max_json_depth = 4).await;
    let (status, body) =
        server.json("POST", "/v1/queues/q/tasks", r#"{"kind":"k","payload":[[{"a":1}]]}"#).await;
    assert_eq!(status, 201, "four levels: {body}");
    let message = expect_error(
        server.json("POST", "/v1/queues/q/tasks", r#"{"kind":"k","payload":[[[{}]]]}"#).await,
        400,
        "invalid_json",
    );
    assert!(message.contains('4'), "{message}");
    // Brackets in strings, escaped quotes and backslashes before a quote.
    let tricky = r#"{"kind":"[[[[[[","payload":["\"[[[[[[\\",{"k\"{{{{":"]]]]\\\"[[["}]}"#;
    let (status, body) = server.json("POST", "/v1/queues/q/tasks", tricky).await;
    assert_eq!(status, 201, "{body}");
}

// ---------------------------------------------------------------------------
// Web pages in a browser on the same machine.
// ---------------------------------------------------------------------------

/// A browser lets any page POST a `text/plain` or form body anywhere without
/// asking first; `application/json` it may only send after a CORS preflight,
/// which cherga never grants. So every body must say it is JSON.
#[tokio::test]
async fn a_body_must_be_sent_as_application_json() {
    let server = Server::open(|_| {}).await;
    let enqueue = |content_type: Option<&str>| {
        let mut builder = request("POST", "/v1/queues/q/tasks");
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        builder.body(Body::from(r#"{"kind":"k"}"#)).unwrap()
    };
    for refused in [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
        Some("application/json-seq"),
        Some("application/problem+json"),
        Some(""),
    ] {
        let message = expect_error(server.send(enqueue(refused)).await, 415, "unsupported_media_type");
        assert!(message.contains("application/json"), "{refused:?}: {message}");
    }
    for accepted in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;Charset=UTF-8",
        "application/json ;q=1",
    ] {
        let (status, body) = server.send(enqueue(Some(accepted))).await;
        assert_eq!(status, 201, "{accepted:?}: {body}");
    }
    // Every route, before it looks at anything else; a lease with no body at all
    // (`curl -X POST .../lease`) needs no content type.
    for (method, uri) in [
        ("POST", "/v1/queues/q/lease"),
        ("POST", "/v1/queues/q/tasks/batch"),
        ("PUT", "/v1/queues/q"),
        ("POST", "/v1/tasks/ack"),
        ("POST", "/v1/tasks/01a250a2-fa77-7000-8000-010000000002/retry"),
        ("POST", "/v1/revocations"),
        ("GET", "/v1/queues"),
    ] {
        let plain = request(method, uri).header("content-type", "text/plain").body(Body::from("{}")).unwrap();
        expect_error(server.send(plain).await, 415, "unsupported_media_type");
    }
    let (status, body) =
        server.send(request("POST", "/v1/queues/q/lease").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tasks"].as_array().unwrap().len(), 1, "a task enqueued as JSON: {body}");
}

/// With auth off, a page on a name of its own that resolves to 127.0.0.1 (DNS
/// rebinding) could read and change everything: only requests addressed to a
/// loopback address, `localhost` or a host of `--allowed-hosts` are answered.
#[tokio::test]
async fn with_auth_off_only_local_and_allowed_hosts_are_answered() {
    let hosts = crate::AllowedHosts::parse("cherga.internal, 10.0.0.5,[fd00::7]").unwrap();
    let server = Server::open(|config| config.allowed_hosts = hosts).await;
    let get = |host: &str| {
        Request::builder().method("GET").uri("/v1/queues").header("host", host).body(Body::empty()).unwrap()
    };
    for allowed in [
        "127.0.0.1:7700",
        "127.0.0.1",
        "127.1.2.3:80",
        "localhost",
        "LocalHost:9",
        "[::1]:7700",
        "[::1]",
        "[0:0:0:0:0:0:0:1]:1",
        "cherga.internal:7700",
        "CHERGA.internal",
        "10.0.0.5:7700",
        "[fd00::7]:7700",
    ] {
        let (status, body) = server.send(get(allowed)).await;
        assert_eq!(status, 200, "Host: {allowed}: {body}");
    }
    for refused in [
        "evil.example",
        "evil.example:7700",
        "127.0.0.1.nip.io:7700",
        "localhost.evil.example",
        "localhost.",
        "sub.cherga.internal",
        "10.0.0.6:7700",
        "[::2]:7700",
        "[fd00::7",
        "127.0.0.1:x",
        "",
    ] {
        let message = expect_error(server.send(get(refused)).await, 403, "forbidden");
        assert!(message.contains("--allowed-hosts"), "Host: {refused}: {message}");
    }
    // Not a way around: an absolute URI names the host too.
    let absolute = Request::builder()
        .uri("http://evil.example/v1/queues")
        .header("host", "127.0.0.1")
        .body(Body::empty())
        .unwrap();
    expect_error(server.send(absolute).await, 403, "forbidden");
    // A refused enqueue stores nothing; /healthz answers everyone.
    let enqueue = Request::builder()
        .method("POST")
        .uri("/v1/queues/q/tasks")
        .header("host", "evil.example")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"kind":"k"}"#))
        .unwrap();
    expect_error(server.send(enqueue).await, 403, "forbidden");
    let (_, list) = server.json("GET", "/v1/queues", "").await;
    assert_eq!(list["queues"], json!([]), "{list}");
    let health =
        Request::builder().uri("/healthz").header("host", "evil.example").body(Body::empty()).unwrap();
    assert_eq!(server.send(health).await.0, 200);

    // With auth on, a token is what a page does not have: the Host is not checked.
    let authenticated = Server::authenticated(|_| {}).await;
    let with_token = Request::builder()
        .uri("/v1/queues")
        .header("host", "cherga.example.com")
        .header("authorization", format!("Bearer {}", authenticated.token(&["admin"])))
        .body(Body::empty())
        .unwrap();
    assert_eq!(authenticated.send(with_token).await.0, 200);
}

/// A page of another site always sends its `Origin` with a POST: such requests
/// are refused (with auth off, any other than a local or allowed host; with
/// auth on, also any other than the request's own host).
#[tokio::test]
async fn requests_from_pages_of_other_origins_are_refused() {
    let hosts = crate::AllowedHosts::parse("app.example").unwrap();
    let open = Server::open(|config| config.allowed_hosts = hosts).await;
    let from = |origin: &str, method: &str, uri: &str| {
        let body = if method == "POST" { r#"{"kind":"k"}"# } else { "" };
        request(method, uri)
            .header("origin", origin)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    for foreign in
        ["http://evil.example", "https://evil.example:7700", "null", "http://127.0.0.1.evil.example", "junk"]
    {
        for (method, uri) in
            [("POST", "/v1/queues/q/tasks"), ("POST", "/v1/queues/q/lease"), ("GET", "/v1/queues")]
        {
            let message = expect_error(open.send(from(foreign, method, uri)).await, 403, "forbidden");
            assert!(message.contains("Origin"), "{foreign} {method} {uri}: {message}");
        }
    }
    for local in
        ["http://localhost:3000", "http://127.0.0.1:7700", "http://[::1]:8080", "https://app.example"]
    {
        let (status, body) = open.send(from(local, "POST", "/v1/queues/q/tasks")).await;
        assert_eq!(status, 201, "{local}: {body}");
    }
    let (_, tasks) = open.json("GET", "/v1/queues/q/tasks", "").await;
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 4, "only the local pages' tasks: {tasks}");

    let secured = Server::authenticated(|_| {}).await;
    let admin = secured.token(&["admin"]);
    let from = |origin: &str| {
        Request::builder()
            .method("POST")
            .uri("/v1/queues/q/tasks")
            .header("host", "cherga.example.com:7700")
            .header("origin", origin)
            .header("authorization", format!("Bearer {admin}"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"kind":"k"}"#))
            .unwrap()
    };
    expect_error(secured.send(from("https://evil.example")).await, 403, "forbidden");
    assert_eq!(secured.send(from("https://cherga.example.com")).await.0, 201, "its own origin");
}

// ---------------------------------------------------------------------------
// Read-only tokens and the event stream.
// ---------------------------------------------------------------------------

/// A `read:` token reads tasks and events of its queues and changes nothing;
/// the event stream gives any token only the events of queues it may read.
#[tokio::test]
async fn a_read_token_reads_its_queues_and_their_events_only() {
    let server = Server::authenticated(|_| {}).await;
    let admin = format!("Bearer {}", server.token(&["admin"]));
    let reader = format!("Bearer {}", server.token(&["read:billing.*"]));
    let send = |method: &str, uri: &str, auth: &str, body: &str| {
        request(method, uri)
            .header("authorization", auth)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let task = r#"{"kind": "k"}"#;
    let (status, billed) = server.send(send("POST", "/v1/queues/billing.eu/tasks", &admin, task)).await;
    assert_eq!(status, 201, "{billed}");
    let (status, _) = server.send(send("POST", "/v1/queues/emails/tasks", &admin, task)).await;
    assert_eq!(status, 201);

    let id = billed["id"].as_str().unwrap();
    let (status, body) = server.send(send("GET", &format!("/v1/tasks/{id}"), &reader, "")).await;
    assert_eq!(status, 200, "a read token reads a task of its queues: {body}");
    let (status, body) = server.send(send("GET", "/v1/queues/billing.eu/tasks", &reader, "")).await;
    assert_eq!(status, 200, "{body}");
    expect_error(server.send(send("GET", "/v1/queues/emails/tasks", &reader, "")).await, 403, "forbidden");
    expect_error(
        server.send(send("POST", "/v1/queues/billing.eu/tasks", &reader, task)).await,
        403,
        "forbidden",
    );
    let lease = r#"{"max": 1}"#;
    expect_error(
        server.send(send("POST", "/v1/queues/billing.eu/lease", &reader, lease)).await,
        403,
        "forbidden",
    );

    let (status, page) = server.send(send("GET", "/v1/events?after=0", &reader, "")).await;
    assert_eq!(status, 200, "{page}");
    let queues: Vec<&str> =
        page["events"].as_array().unwrap().iter().map(|e| e["data"]["queue"].as_str().unwrap()).collect();
    assert_eq!(queues, ["billing.eu"], "only the events of the token's queues: {page}");
    let (status, page) = server.send(send("GET", "/v1/events?after=0", &admin, "")).await;
    assert_eq!((status, page["events"].as_array().unwrap().len()), (200, 2), "{page}");
}
