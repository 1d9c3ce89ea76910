//! End-to-end tests of cherga's security: the real binary with authentication,
//! TLS and limits switched on, driven over HTTP as an attacker and as honest
//! clients would. A second test binary beside `e2e.rs` because every server here
//! needs flags of its own; it reuses the same harness.

#[allow(dead_code)]
mod harness;

use cherga_api::auth::{KeyEntry, KeyFile};
use cherga_auth::{Alg, KeySet, NewToken};
use harness::{Backend, LONG_POLL_WAITING, Server, http, wait_until};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn write_keys(path: &Path, keys: &[KeyEntry]) {
    std::fs::write(path, serde_json::to_string(&KeyFile { keys: keys.to_vec() }).unwrap()).unwrap();
}

/// A token signed with `entry`, valid for an hour from now, unless `edit` says otherwise.
fn mint(entry: &KeyEntry, scopes: &[&str], edit: impl FnOnce(&mut NewToken)) -> String {
    let keys = KeySet::from_file_contents(&KeyFile { keys: vec![entry.clone()] }).unwrap();
    let mut new = NewToken {
        subject: "test".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        issuer: "cherga".into(),
        audience: "cherga".into(),
        now_s: now_s(),
        ttl_s: 3600,
        jti: None,
    };
    edit(&mut new);
    cherga_auth::issue(&keys, Some(&entry.kid), &new).unwrap().0
}

/// A server with authentication on, and the key that signs its tokens.
struct Secured {
    server: Server,
    key: KeyEntry,
    keys_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Secured {
    async fn start(extra: &[&str]) -> Self {
        Self::start_on(&Backend::sqlite(), extra).await
    }

    async fn start_on(backend: &Backend, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = cherga_auth::generate(Alg::EdDSA, "k1").unwrap();
        let keys_path = dir.path().join("keys.json");
        write_keys(&keys_path, std::slice::from_ref(&key));
        let mut args = vec!["--auth-keys", keys_path.to_str().unwrap()];
        args.extend_from_slice(extra);
        let server = Server::start_with(backend, &args).await;
        Self { server, key, keys_path, _dir: dir }
    }

    fn token(&self, scopes: &[&str]) -> String {
        mint(&self.key, scopes, |_| {})
    }

    async fn call(&self, token: Option<&str>, method: &str, path: &str, body: Value) -> (u16, Value) {
        call(&self.server, token, method, path, body).await
    }
}

async fn call(server: &Server, token: Option<&str>, method: &str, path: &str, body: Value) -> (u16, Value) {
    let (status, value, _) = call_full(server, token, method, path, body).await;
    (status, value)
}

async fn call_full(
    server: &Server,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http().request(method, server.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if !body.is_null() {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value, headers)
}

fn id(task: &Value) -> String {
    task["id"].as_str().unwrap_or_else(|| panic!("no id in {task}")).to_owned()
}

fn lease_token(task: &Value) -> String {
    task["lease"]["token"].as_str().unwrap_or_else(|| panic!("no lease in {task}")).to_owned()
}

/// Asserts the status and, for refusals, the error code.
#[track_caller]
fn expect(what: &str, (status, body): (u16, Value), want: u16) -> Value {
    assert_eq!(status, want, "{what}: {body}");
    match want {
        401 => assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}"),
        403 => assert_eq!(body["error"]["code"], "forbidden", "{what}: {body}"),
        _ => {}
    }
    body
}

fn send_signal(server: &Server, signal: i32) {
    // SAFETY: kill(2) with a pid we own and a valid signal number.
    let rc = unsafe { libc::kill(server.pid() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill -{signal}");
}

// ---------------------------------------------------------------------------
// Scopes.
// ---------------------------------------------------------------------------

/// Setting or removing a payload schema needs `admin`; reading it, a scope on
/// the queue. The history names the token's subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_schemas_need_admin_to_change() {
    let s = Secured::start(&[]).await;
    let producer = s.token(&["produce:payments"]);
    let stranger = s.token(&["produce:other"]);
    let admin = s.token(&["admin"]);
    let schema = json!({"schema": {"type": "object"}});
    for (who, method) in [("producer", "PUT"), ("producer", "DELETE"), ("stranger", "PUT")] {
        let token = if who == "producer" { &producer } else { &stranger };
        expect(who, s.call(Some(token), method, "/v1/queues/payments/schema", schema.clone()).await, 403);
    }
    let set = expect("admin", s.call(Some(&admin), "PUT", "/v1/queues/payments/schema", schema).await, 200);
    assert_eq!(set["history"][0]["subject"], "test", "{set}");
    let shown = expect(
        "producer reads",
        s.call(Some(&producer), "GET", "/v1/queues/payments/schema", Value::Null).await,
        200,
    );
    assert_eq!(shown["version"], 1);
    expect(
        "stranger reads",
        s.call(Some(&stranger), "GET", "/v1/queues/payments/schema", Value::Null).await,
        403,
    );
    let refused = s
        .call(Some(&producer), "POST", "/v1/queues/payments/tasks", json!({"kind": "k", "payload": 1}))
        .await;
    expect("enforced", refused, 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_needs_its_scope() {
    let s = Secured::start(&[]).await;
    let producer = s.token(&["produce:payments"]);
    let consumer = s.token(&["consume:payments"]);
    let wildcard = s.token(&["consume:pay*"]);
    let stranger = s.token(&["produce:other", "consume:other"]);
    let admin = s.token(&["admin"]);
    let nothing = s.token(&[]);

    // Open routes.
    assert_eq!(s.call(None, "GET", "/healthz", Value::Null).await.0, 200);
    let (status, doc) = s.call(None, "GET", "/v1/openapi.json", Value::Null).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    // Enqueue and batch enqueue: produce.
    let task = json!({"kind": "charge", "payload": {"n": 1}});
    let created = expect(
        "producer enqueues",
        s.call(Some(&producer), "POST", "/v1/queues/payments/tasks", task.clone()).await,
        201,
    );
    expect(
        "admin enqueues",
        s.call(Some(&admin), "POST", "/v1/queues/payments/tasks", task.clone()).await,
        201,
    );
    for (who, token) in [("consumer", &consumer), ("stranger", &stranger), ("no scopes", &nothing)] {
        expect(who, s.call(Some(token), "POST", "/v1/queues/payments/tasks", task.clone()).await, 403);
    }
    let batch = json!({"tasks": [task.clone(), task.clone()]});
    let answer = expect(
        "producer batch",
        s.call(Some(&producer), "POST", "/v1/queues/payments/tasks/batch", batch.clone()).await,
        200,
    );
    assert_eq!(answer["results"][1]["status"], 201, "{answer}");
    expect(
        "consumer batch",
        s.call(Some(&consumer), "POST", "/v1/queues/payments/tasks/batch", batch).await,
        403,
    );
    // A refused enqueue is refused before its body is read: even a broken body gets 403.
    let (status, _) = s.call(Some(&consumer), "POST", "/v1/queues/payments/tasks", json!("not a task")).await;
    assert_eq!(status, 403, "scope before body");

    // Reading: produce or consume on the queue.
    let path = format!("/v1/tasks/{}", id(&created));
    for (who, token) in [("producer", &producer), ("consumer", &consumer), ("wildcard", &wildcard)] {
        expect(who, s.call(Some(token), "GET", &path, Value::Null).await, 200);
        expect(who, s.call(Some(token), "GET", "/v1/queues/payments", Value::Null).await, 200);
        expect(who, s.call(Some(token), "GET", "/v1/queues/payments/tasks", Value::Null).await, 200);
    }
    expect("stranger gets task", s.call(Some(&stranger), "GET", &path, Value::Null).await, 403);
    expect(
        "stranger gets queue",
        s.call(Some(&stranger), "GET", "/v1/queues/payments", Value::Null).await,
        403,
    );
    expect(
        "stranger lists",
        s.call(Some(&stranger), "GET", "/v1/queues/payments/tasks", Value::Null).await,
        403,
    );

    // GET /v1/queues: any valid token, filtered by its scopes.
    expect("other queue", s.call(Some(&stranger), "POST", "/v1/queues/other/tasks", task.clone()).await, 201);
    let names = |body: Value| -> Vec<String> {
        body["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(
        names(expect(
            "producer lists queues",
            s.call(Some(&producer), "GET", "/v1/queues", Value::Null).await,
            200
        )),
        ["payments"]
    );
    assert_eq!(
        names(expect(
            "stranger lists queues",
            s.call(Some(&stranger), "GET", "/v1/queues", Value::Null).await,
            200
        )),
        ["other"]
    );
    assert_eq!(
        names(expect(
            "admin lists queues",
            s.call(Some(&admin), "GET", "/v1/queues", Value::Null).await,
            200
        )),
        ["other", "payments"]
    );
    assert!(
        names(expect("no scopes", s.call(Some(&nothing), "GET", "/v1/queues", Value::Null).await, 200))
            .is_empty()
    );

    // Lease: consume.
    let lease = json!({"max": 1, "worker": "w"});
    expect(
        "producer leases",
        s.call(Some(&producer), "POST", "/v1/queues/payments/lease", lease.clone()).await,
        403,
    );
    expect(
        "stranger leases",
        s.call(Some(&stranger), "POST", "/v1/queues/payments/lease", lease.clone()).await,
        403,
    );
    let leased = expect(
        "consumer leases",
        s.call(Some(&consumer), "POST", "/v1/queues/payments/lease", lease.clone()).await,
        200,
    );
    let held = leased["tasks"][0].clone();
    let leased = expect(
        "wildcard leases",
        s.call(Some(&wildcard), "POST", "/v1/queues/payments/lease", lease.clone()).await,
        200,
    );
    let held2 = leased["tasks"][0].clone();

    // Ack, nack, extend: consume on the task's queue.
    let ack = json!({"lease": lease_token(&held), "result": {"ok": true}});
    let extend = json!({"lease": lease_token(&held), "lease_ms": 60000});
    let nack = json!({"lease": lease_token(&held2), "error": "boom"});
    for (who, token) in [("producer", &producer), ("stranger", &stranger), ("no scopes", &nothing)] {
        expect(
            who,
            s.call(Some(token), "POST", &format!("/v1/tasks/{}/extend", id(&held)), extend.clone()).await,
            403,
        );
        expect(
            who,
            s.call(Some(token), "POST", &format!("/v1/tasks/{}/ack", id(&held)), ack.clone()).await,
            403,
        );
        expect(
            who,
            s.call(Some(token), "POST", &format!("/v1/tasks/{}/nack", id(&held2)), nack.clone()).await,
            403,
        );
    }
    expect(
        "consumer extends",
        s.call(Some(&consumer), "POST", &format!("/v1/tasks/{}/extend", id(&held)), extend).await,
        200,
    );
    expect(
        "consumer acks",
        s.call(Some(&consumer), "POST", &format!("/v1/tasks/{}/ack", id(&held)), ack).await,
        200,
    );
    expect(
        "wildcard nacks",
        s.call(Some(&wildcard), "POST", &format!("/v1/tasks/{}/nack", id(&held2)), nack).await,
        200,
    );

    // Batch ack: any token; each item checked on its own.
    let leased = expect(
        "lease for batch",
        s.call(Some(&consumer), "POST", "/v1/queues/payments/lease", json!({"max": 1})).await,
        200,
    );
    let item = &leased["tasks"][0];
    let acks = json!({"acks": [{"id": id(item), "lease": lease_token(item)}]});
    let answer = expect(
        "stranger batch ack",
        s.call(Some(&stranger), "POST", "/v1/tasks/ack", acks.clone()).await,
        200,
    );
    assert_eq!(answer["results"][0]["status"], 403, "{answer}");
    assert_eq!(answer["results"][0]["error"]["code"], "forbidden", "{answer}");
    // Acks riding on a lease of a queue the token may consume are checked as
    // those of a batch ack: each on its own task's queue.
    let mut lease = json!({"max": 1});
    lease["acks"] = acks["acks"].clone();
    let answer = expect(
        "stranger's lease of its own queue with an ack of a payments task",
        s.call(Some(&stranger), "POST", "/v1/queues/other/lease", lease).await,
        200,
    );
    assert_eq!(answer["acks"][0]["status"], 403, "{answer}");
    assert_eq!(answer["acks"][0]["error"]["code"], "forbidden", "{answer}");
    let answer =
        expect("consumer batch ack", s.call(Some(&consumer), "POST", "/v1/tasks/ack", acks).await, 200);
    assert_eq!(answer["results"][0]["status"], 200, "{answer}");

    // Cancel and retry a dead task: produce on the task's queue.
    let victim = expect(
        "enqueue",
        s.call(
            Some(&producer),
            "POST",
            "/v1/queues/payments/tasks",
            json!({"kind": "later", "delay_ms": 3_600_000}),
        )
        .await,
        201,
    );
    let cancel_path = format!("/v1/tasks/{}", id(&victim));
    expect("consumer cancels", s.call(Some(&consumer), "DELETE", &cancel_path, Value::Null).await, 403);
    expect("producer cancels", s.call(Some(&producer), "DELETE", &cancel_path, Value::Null).await, 200);
    expect(
        "enqueue doomed",
        s.call(Some(&producer), "POST", "/v1/queues/payments/tasks", json!({"kind": "doomed"})).await,
        201,
    );
    let leased = expect(
        "lease doomed",
        s.call(Some(&consumer), "POST", "/v1/queues/payments/lease", json!({"max": 10})).await,
        200,
    );
    let doomed = leased["tasks"].as_array().unwrap().iter().find(|t| t["kind"] == "doomed").unwrap().clone();
    expect(
        "dead",
        s.call(
            Some(&consumer),
            "POST",
            &format!("/v1/tasks/{}/nack", id(&doomed)),
            json!({"lease": lease_token(&doomed), "dead": true}),
        )
        .await,
        200,
    );
    let retry_path = format!("/v1/tasks/{}/retry", id(&doomed));
    expect("consumer retries", s.call(Some(&consumer), "POST", &retry_path, Value::Null).await, 403);
    expect("producer retries", s.call(Some(&producer), "POST", &retry_path, Value::Null).await, 200);

    // Queue settings and revocations: admin.
    let settings = json!({"max_attempts": 3});
    for (who, token) in [("producer", &producer), ("consumer", &consumer), ("wildcard", &wildcard)] {
        expect(who, s.call(Some(token), "PUT", "/v1/queues/payments", settings.clone()).await, 403);
        expect(who, s.call(Some(token), "GET", "/v1/revocations", Value::Null).await, 403);
        expect(who, s.call(Some(token), "POST", "/v1/revocations", json!({"jti": "x"})).await, 403);
    }
    expect("admin puts", s.call(Some(&admin), "PUT", "/v1/queues/payments", settings).await, 200);
    // Bulk actions: admin.
    for (who, token) in [("producer", &producer), ("consumer", &consumer), ("wildcard", &wildcard)] {
        expect(who, s.call(Some(token), "POST", "/v1/queues/payments/tasks/retry", json!({})).await, 403);
        expect(who, s.call(Some(token), "DELETE", "/v1/queues/payments", Value::Null).await, 403);
    }
    let answer = expect(
        "admin retries",
        s.call(Some(&admin), "POST", "/v1/queues/payments/tasks/retry", json!({})).await,
        200,
    );
    assert!(answer["matched"].is_u64(), "{answer}");
    expect("admin lists revocations", s.call(Some(&admin), "GET", "/v1/revocations", Value::Null).await, 200);

    // No token at all: 401 everywhere but the open routes, with WWW-Authenticate.
    for (method, path) in [
        ("GET", "/v1/queues"),
        ("GET", "/v1/queues/payments"),
        ("PUT", "/v1/queues/payments"),
        ("DELETE", "/v1/queues/payments"),
        ("POST", "/v1/queues/payments/tasks/purge"),
        ("POST", "/v1/queues/payments/tasks"),
        ("GET", "/v1/queues/payments/tasks"),
        ("POST", "/v1/queues/payments/tasks/batch"),
        ("POST", "/v1/queues/payments/lease"),
        ("POST", "/v1/tasks/ack"),
        ("GET", path.as_str()),
        ("DELETE", path.as_str()),
        ("POST", "/v1/revocations"),
    ] {
        let (status, body, headers) = call_full(&s.server, None, method, path, json!({})).await;
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"cherga\"", "{method} {path}");
    }
}

/// Per-task routes look the task's queue up in the store when this node has not
/// seen the task (here: after a restart emptied its cache).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_task_scope_checks_survive_a_restart() {
    let mut s = Secured::start(&[]).await;
    let producer = s.token(&["produce:jobs"]);
    let consumer = s.token(&["consume:jobs"]);
    let stranger = s.token(&["consume:other"]);
    expect(
        "enqueue",
        s.call(Some(&producer), "POST", "/v1/queues/jobs/tasks", json!({"kind": "k"})).await,
        201,
    );
    let leased = expect(
        "lease",
        s.call(Some(&consumer), "POST", "/v1/queues/jobs/lease", json!({"lease_ms": 600000})).await,
        200,
    );
    let task = leased["tasks"][0].clone();
    s.server.sigterm().await;
    s.server.restart().await;
    let ack = json!({"lease": lease_token(&task)});
    let path = format!("/v1/tasks/{}/ack", id(&task));
    expect("stranger acks after restart", s.call(Some(&stranger), "POST", &path, ack.clone()).await, 403);
    expect("consumer acks after restart", s.call(Some(&consumer), "POST", &path, ack).await, 200);
    let missing = "/v1/tasks/00000000-0000-7000-8000-000000000000/ack";
    let (status, body) = s.call(Some(&stranger), "POST", missing, json!({"lease": "x"})).await;
    assert!(status == 404 || status == 400, "unknown task: {status} {body}");
}

/// A dead task's payload edited with its retry names the subject of the
/// token that edited it; a token without `produce` on the queue edits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_edit_names_the_tokens_subject() {
    let s = Secured::start(&[]).await;
    let producer = mint(&s.key, &["produce:jobs"], |t| t.subject = "ops@example.com".into());
    let consumer = s.token(&["consume:jobs"]);
    s.call(Some(&producer), "PUT", "/v1/queues/jobs", json!({})).await;
    let task = expect(
        "enqueue",
        s.call(Some(&producer), "POST", "/v1/queues/jobs/tasks", json!({"kind": "k", "payload": 1})).await,
        201,
    );
    let leased =
        expect("lease", s.call(Some(&consumer), "POST", "/v1/queues/jobs/lease", json!({})).await, 200);
    let nack = json!({"lease": lease_token(&leased["tasks"][0]), "dead": true});
    let path = format!("/v1/tasks/{}", id(&task));
    expect("nack", s.call(Some(&consumer), "POST", &format!("{path}/nack"), nack).await, 200);
    let retry = format!("{path}/retry");
    expect("consumer edits", s.call(Some(&consumer), "POST", &retry, json!({"payload": 2})).await, 403);
    let dead = expect("get", s.call(Some(&producer), "GET", &path, Value::Null).await, 200);
    assert_eq!((dead["state"].as_str(), &dead["payload"]), (Some("dead"), &json!(1)), "{dead}");
    let retried =
        expect("producer edits", s.call(Some(&producer), "POST", &retry, json!({"payload": 2})).await, 200);
    assert_eq!(retried["payload"], 2);
    assert_eq!(retried["history"][0]["payload_edit"]["by"], "ops@example.com", "{retried}");
    assert!(retried["history"][0]["payload_edit"]["at"].is_string(), "{retried}");
}

// ---------------------------------------------------------------------------
// Bad tokens.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_and_are_never_echoed() {
    let s = Secured::start(&[]).await;
    let scopes = ["admin"];
    let now = now_s();
    let stranger_key = cherga_auth::generate(Alg::EdDSA, "k1").unwrap();
    let hs_key = cherga_auth::generate(Alg::HS256, "k1").unwrap();
    let b64 = |v: Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let claims =
        json!({"iss": "cherga", "aud": "cherga", "exp": now + 3600, "jti": "j-none", "scope": "admin"});
    let good = s.token(&scopes);
    let parts: Vec<&str> = good.split('.').collect();
    let mut tampered_claims: Value = {
        use base64::Engine as _;
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
            .unwrap()
    };
    tampered_claims["sub"] = json!("mallory");

    let cases: Vec<(&str, String)> = vec![
        ("expired", mint(&s.key, &scopes, |t| t.now_s = now - 7200)),
        ("not yet valid", mint(&s.key, &scopes, |t| t.now_s = now + 3600)),
        ("wrong audience", mint(&s.key, &scopes, |t| t.audience = "someone-else".into())),
        ("wrong issuer", mint(&s.key, &scopes, |t| t.issuer = "evil".into())),
        ("alg none", format!("{}.{}.", b64(json!({"alg": "none", "kid": "k1"})), b64(claims.clone()))),
        ("alg none, no kid", format!("{}.{}.", b64(json!({"alg": "none"})), b64(claims.clone()))),
        ("same kid, another key", mint(&stranger_key, &scopes, |_| {})),
        ("HS256 on the EdDSA kid", mint(&hs_key, &scopes, |_| {})),
        ("unknown kid", mint(&cherga_auth::generate(Alg::EdDSA, "k9").unwrap(), &scopes, |_| {})),
        ("tampered payload", format!("{}.{}.{}", parts[0], b64(tampered_claims), parts[2])),
        ("garbage", "not-a-token".to_owned()),
        ("empty", String::new()),
    ];
    for (what, token) in &cases {
        let (status, body) = s.call(Some(token), "GET", "/v1/queues", Value::Null).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
        if !token.is_empty() {
            assert!(
                !body.to_string().contains(token.as_str()),
                "{what}: the answer echoes the token: {body}"
            );
        }
    }
    // Not a bearer scheme at all.
    let response = http()
        .get(s.server.url("/v1/queues"))
        .header("authorization", format!("Basic {good}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // The good one still works.
    expect("good token", s.call(Some(&good), "GET", "/v1/queues", Value::Null).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_flags_are_enforced() {
    let s = Secured::start(&["--auth-issuer", "https://id.example", "--auth-audience", "cherga-prod"]).await;
    let default = s.token(&["admin"]);
    expect("default iss/aud", s.call(Some(&default), "GET", "/v1/queues", Value::Null).await, 401);
    let right = mint(&s.key, &["admin"], |t| {
        t.issuer = "https://id.example".into();
        t.audience = "cherga-prod".into();
    });
    expect("configured iss/aud", s.call(Some(&right), "GET", "/v1/queues", Value::Null).await, 200);
}

/// One `--scope` is one scope: a value with whitespace inside is refused rather
/// than split (a templated `--scope "$SCOPES"` must not grant what it names by
/// accident), and so is a word that is not a scope.
#[test]
fn token_issue_takes_one_scope_per_flag() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    write_keys(&keys, &[cherga_auth::generate(Alg::EdDSA, "k1").unwrap()]);
    let issue = |scopes: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cherga"));
        command.args(["token", "issue", "--keys"]).arg(&keys).args(["--sub", "s", "--ttl", "1h"]);
        for scope in scopes {
            command.args(["--scope", scope]);
        }
        command.output().unwrap()
    };
    let ok = issue(&["produce:q1", "admin"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for bad in ["produce:q1 admin", "admin\tconsume:*", "produce:", "read", "write:*"] {
        let refused = issue(&[bad]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success(),
            "{bad:?} was issued: {}",
            String::from_utf8_lossy(&refused.stdout)
        );
        assert!(stderr.contains("--scope"), "{bad:?}: {stderr}");
    }
}

/// `cherga token revoke` writes the jti to the store: the token is refused at
/// once, and still after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_are_refused_and_stay_revoked() {
    let mut s = Secured::start(&[]).await;
    let admin = s.token(&["admin"]);
    // Issued by the CLI, as an operator would.
    let issued = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["token", "issue", "--keys"])
        .arg(&s.keys_path)
        .args(["--sub", "billing", "--scope", "produce:payments", "--ttl", "30d"])
        .output()
        .unwrap();
    assert!(issued.status.success(), "{}", String::from_utf8_lossy(&issued.stderr));
    let victim = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    let other = s.token(&["produce:payments"]);
    let enqueue = json!({"kind": "k"});
    expect("before", s.call(Some(&victim), "POST", "/v1/queues/payments/tasks", enqueue.clone()).await, 201);

    let revoke = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["token", "revoke", &victim, "--server", &s.server.base, "--token", &admin])
        .output()
        .unwrap();
    assert!(revoke.status.success(), "revoke: {}", String::from_utf8_lossy(&revoke.stderr));
    let (status, body) = s.call(Some(&victim), "POST", "/v1/queues/payments/tasks", enqueue.clone()).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
    expect(
        "another token",
        s.call(Some(&other), "POST", "/v1/queues/payments/tasks", enqueue.clone()).await,
        201,
    );
    let list = expect("list", s.call(Some(&admin), "GET", "/v1/revocations", Value::Null).await, 200);
    assert_eq!(list["revocations"].as_array().unwrap().len(), 1, "{list}");

    // Revoking without an admin token is refused, and does not leak whether the
    // jti exists.
    let refused = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["token", "revoke", "some-jti", "--server", &s.server.base, "--token", &other])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));

    s.server.sigterm().await;
    s.server.restart().await;
    expect(
        "after restart",
        s.call(Some(&victim), "POST", "/v1/queues/payments/tasks", enqueue.clone()).await,
        401,
    );
    expect(
        "other after restart",
        s.call(Some(&other), "POST", "/v1/queues/payments/tasks", enqueue).await,
        201,
    );
}

/// Two nodes on one PostgreSQL database: a revocation made through one is
/// honoured by the other within its refresh interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_node_sharing_the_store() {
    let Some(backend) = Backend::postgres() else { return };
    let a = Secured::start_on(&backend, &[]).await;
    let b_server = Server::start_with(&backend, &["--auth-keys", a.keys_path.to_str().unwrap()]).await;
    let admin = a.token(&["admin"]);
    let victim = a.token(&["produce:q"]);
    expect(
        "node b before",
        call(&b_server, Some(&victim), "POST", "/v1/queues/q/tasks", json!({"kind": "k"})).await,
        201,
    );
    let revoked = expect(
        "revoke on a",
        a.call(Some(&admin), "POST", "/v1/revocations", json!({"jti": jti_of(&victim)})).await,
        200,
    );
    assert_eq!(revoked["jti"], jti_of(&victim));
    expect("node a at once", a.call(Some(&victim), "GET", "/v1/queues", Value::Null).await, 401);
    let started = Instant::now();
    wait_until(Duration::from_secs(5), "node b to refuse the revoked token", || async {
        call(&b_server, Some(&victim), "GET", "/v1/queues", Value::Null).await.0 == 401
    })
    .await;
    eprintln!("node b refused the revoked token after {:?}", started.elapsed());
}

fn jti_of(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
            .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

// ---------------------------------------------------------------------------
// Key rotation.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_with_two_kids() {
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("keys.json");
    let old = cherga_auth::generate(Alg::EdDSA, "2026-01").unwrap();
    let new = cherga_auth::generate(Alg::HS256, "2026-06").unwrap();
    write_keys(&keys_path, &[old.clone(), new.clone()]);
    let server = Server::start_with(&Backend::sqlite(), &["--auth-keys", keys_path.to_str().unwrap()]).await;
    let old_token = mint(&old, &["admin"], |_| {});
    let new_token = mint(&new, &["admin"], |_| {});
    expect("old kid", call(&server, Some(&old_token), "GET", "/v1/queues", Value::Null).await, 200);
    expect("new kid", call(&server, Some(&new_token), "GET", "/v1/queues", Value::Null).await, 200);

    // Retire the old key: rewrite the file and send SIGHUP; no restart.
    write_keys(&keys_path, std::slice::from_ref(&new));
    send_signal(&server, libc::SIGHUP);
    wait_until(Duration::from_secs(5), "the old key to be refused after SIGHUP", || async {
        call(&server, Some(&old_token), "GET", "/v1/queues", Value::Null).await.0 == 401
    })
    .await;
    expect(
        "new kid after reload",
        call(&server, Some(&new_token), "GET", "/v1/queues", Value::Null).await,
        200,
    );

    // A broken key file is not loaded: the keys in force stay. The server says so
    // once it has tried.
    std::fs::write(&keys_path, "{ broken").unwrap();
    send_signal(&server, libc::SIGHUP);
    server.wait_for_log("key file not reloaded; keeping the old keys", 1).await;
    expect(
        "after a bad reload",
        call(&server, Some(&new_token), "GET", "/v1/queues", Value::Null).await,
        200,
    );
}

// ---------------------------------------------------------------------------
// Hostile JSON.
// ---------------------------------------------------------------------------

/// `cherga serve` with `args` must refuse to start, saying `why`.
fn refuses_to_start(args: &[&str], why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["serve", "--addr", "127.0.0.1:0", "--log", "warn", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?}: started");
    assert!(stderr.contains(why), "{args:?}: {stderr}");
}

/// `--max-json-depth` sets how deep a request body may nest (64 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_depth_limit_is_a_flag() {
    let server = Server::start_with(&Backend::sqlite(), &["--max-json-depth", "8"]).await;
    let enqueue = |levels: usize| {
        let payload = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        format!(r#"{{"kind":"k","payload":{payload}}}"#)
    };
    let (status, body) = server.post_raw("/v1/queues/q/tasks", &enqueue(7)).await;
    assert_eq!(status, 201, "eight levels with the body's own: {body}");
    let (status, body) = server.post_raw("/v1/queues/q/tasks", &enqueue(8)).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_json")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("8 levels"), "{body}");
    refuses_to_start(&["--max-json-depth", "2"], "--max-json-depth");
}

// ---------------------------------------------------------------------------
// Web pages in a browser on the same machine.
// ---------------------------------------------------------------------------

/// With auth off, the real binary answers only requests addressed to loopback
/// hosts and those of `--allowed-hosts`, refuses pages of other origins, and
/// takes bodies only as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_rules_follow_the_allowed_hosts_flag() {
    let server = Server::start_with(&Backend::sqlite(), &["--allowed-hosts", "cherga.test,10.9.8.7"]).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let send = |host: String, origin: Option<&str>, content_type: &str| {
        let mut request = http()
            .post(server.url("/v1/queues/q/tasks"))
            .header("host", host)
            .header("content-type", content_type)
            .body(r#"{"kind":"k"}"#);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let json = "application/json; charset=utf-8";
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("cherga.test:{port}"),
        "10.9.8.7".into(),
    ] {
        let (status, body) = send(host.clone(), None, json).await;
        assert_eq!(status, 201, "Host: {host}: {body}");
    }
    for host in [format!("evil.test:{port}"), format!("10.9.8.6:{port}")] {
        let (status, body) = send(host.clone(), None, json).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "Host: {host}: {body}"
        );
    }
    let local = format!("127.0.0.1:{port}");
    let (status, body) = send(local.clone(), Some("http://evil.test"), json).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) = send(local.clone(), Some("https://cherga.test"), json).await;
    assert_eq!(status, 201, "an allowed origin: {body}");
    let (status, body) = send(local, None, "text/plain").await;
    assert_eq!((status, body["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{body}");
    let (_, list) = server.get("/v1/queues/q/tasks").await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 5, "{list}");
    refuses_to_start(&["--allowed-hosts", "cherga.test:80"], "--allowed-hosts");
}

// ---------------------------------------------------------------------------
// Refusing to start unprotected.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_auth_on_a_public_address_needs_insecure() {
    let dir = tempfile::tempdir().unwrap();
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let output = Command::new(env!("CARGO_BIN_EXE_cherga"))
            .args(["serve", "--addr", addr, "--log", "warn", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{addr}: started without auth");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("refusing to serve without authentication"), "{addr}: {stderr}");
    }
    // With --insecure it starts (and answers on loopback).
    let mut child = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["serve", "--addr", "0.0.0.0:0", "--insecure", "--log", "warn", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        // Its one line of log, the warning that --insecure lets every client do
        // everything, is expected; the test's output stays for failures.
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_owned();
    let answer = http().get(format!("http://127.0.0.1:{port}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    child.kill().unwrap();
    child.wait().unwrap();
    // With keys it starts too, and then needs tokens.
    let keys_path = dir.path().join("keys.json");
    write_keys(&keys_path, &[cherga_auth::generate(Alg::EdDSA, "k").unwrap()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["serve", "--addr", "0.0.0.0:0", "--log", "warn", "--auth-keys"])
        .arg(&keys_path)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
        .unwrap();
    let port = line.trim().rsplit(':').next().unwrap().to_owned();
    let answer = http().get(format!("http://127.0.0.1:{port}/v1/queues")).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------
// TLS.
// ---------------------------------------------------------------------------

/// A self-signed certificate for localhost and 127.0.0.1, written as PEM files.
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf, reqwest::Certificate) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
}

fn trusting(cert: &reqwest::Certificate) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert.clone())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_self_signed_certificate_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a, root_a) = self_signed(dir.path(), "a");
    let (_, _, root_b) = self_signed(dir.path(), "b");
    // The server reads fixed paths; the files are swapped under it.
    let cert_path = dir.path().join("server.crt");
    let key_path = dir.path().join("server.key");
    std::fs::copy(&cert_a, &cert_path).unwrap();
    std::fs::copy(&key_a, &key_path).unwrap();
    let server = Server::start_with(
        &Backend::sqlite(),
        &["--tls-cert", cert_path.to_str().unwrap(), "--tls-key", key_path.to_str().unwrap()],
    )
    .await;
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    let https = server.base.replace("127.0.0.1", "localhost");

    let answer = trusting(&root_a).get(format!("{https}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer = trusting(&root_a)
        .post(format!("{https}/v1/queues/tls/tasks"))
        .json(&json!({"kind": "k"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    assert!(trusting(&root_b).get(format!("{https}/healthz")).send().await.is_err(), "b is not served yet");
    // Plain HTTP on the TLS port gets no answer.
    let plain = http().get(server.url("/healthz").replace("https://", "http://")).send().await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "plain HTTP answered on the TLS port");

    // The CLI with --ca-cert.
    let queues = Command::new(env!("CARGO_BIN_EXE_cherga"))
        .args(["queues", "--server", &https, "--ca-cert"])
        .arg(&cert_a)
        .output()
        .unwrap();
    assert!(queues.status.success(), "cli over TLS: {}", String::from_utf8_lossy(&queues.stderr));
    assert!(String::from_utf8_lossy(&queues.stdout).contains("tls"));

    // Swap in certificate b and send SIGHUP: new connections get b.
    let (cert_b, key_b) = (dir.path().join("b.crt"), dir.path().join("b.key"));
    std::fs::copy(&cert_b, &cert_path).unwrap();
    std::fs::copy(&key_b, &key_path).unwrap();
    send_signal(&server, libc::SIGHUP);
    wait_until(Duration::from_secs(5), "certificate b to be served after SIGHUP", || async {
        trusting(&root_b).get(format!("{https}/healthz")).send().await.is_ok_and(|a| a.status() == 200)
    })
    .await;
    assert!(trusting(&root_a).get(format!("{https}/healthz")).send().await.is_err(), "a is still served");

    // A key that does not fit the certificate is not loaded: b stays. The server
    // says so once it has tried.
    std::fs::copy(&key_a, &key_path).unwrap();
    send_signal(&server, libc::SIGHUP);
    server.wait_for_log("TLS certificate not reloaded; keeping the old one", 1).await;
    let answer = trusting(&root_b).get(format!("{https}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
}

// ---------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------

fn tcp(server: &Server) -> TcpStream {
    let addr = server.base.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream
}

/// Whether the server closed the connection (a read returns EOF or a reset).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an error answer (408/400) before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// A connection to the server from the loopback address `from` (127.0.0.x): each
/// attacker below is a client of its own, as it would be on a network.
async fn connect_from(server: &Server, from: &str) -> std::io::Result<tokio::net::TcpStream> {
    let addr: std::net::SocketAddr = server.base.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_a_connection_flood_do_not_starve_healthy_clients() {
    use tokio::io::AsyncWriteExt as _;
    let server = std::sync::Arc::new(
        Server::start_with(
            &Backend::sqlite(),
            &[
                "--max-connections",
                "100",
                "--max-connections-per-client",
                "32",
                "--header-read-timeout",
                "1s",
                "--request-timeout",
                "3s",
            ],
        )
        .await,
    );
    let attack = Duration::from_secs(6);
    let until = Instant::now() + attack;
    let mut attackers = tokio::task::JoinSet::new();
    // Connections the flood opened, and bytes the slow heads and bodies sent.
    let (flooded, slow_heads, slow_bodies) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );

    // 127.0.0.2 floods: it keeps 300 connections open that never send a byte.
    let flood = {
        let (server, flooded) = (server.clone(), flooded.clone());
        tokio::spawn(async move {
            let mut opened = 0usize;
            let mut idle = Vec::new();
            while Instant::now() < until {
                while idle.len() < 300 {
                    match connect_from(&server, "127.0.0.2").await {
                        Ok(stream) => {
                            opened += 1;
                            flooded.fetch_add(1, Ordering::Relaxed);
                            idle.push(stream);
                        }
                        Err(_) => break,
                    }
                }
                // The flood's pace: it looks for closed connections every 100 ms.
                tokio::time::sleep(Duration::from_millis(100)).await;
                // Forget the ones the server closed, and open new ones.
                idle.retain(|s: &tokio::net::TcpStream| {
                    let mut byte = [0u8; 1];
                    matches!(s.try_read(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
            }
            opened
        })
    };
    // 127.0.0.3 sends request heads a byte every 100 ms (slowloris), 20 at a time.
    for _ in 0..20 {
        let (server, slow_heads) = (server.clone(), slow_heads.clone());
        attackers.spawn(async move {
            let head =
                b"POST /v1/queues/slow/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let mut sent = 0usize;
            while Instant::now() < until {
                let Ok(mut stream) = connect_from(&server, "127.0.0.3").await else { break };
                for byte in head.iter().cycle() {
                    if Instant::now() > until || stream.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    sent += 1;
                    slow_heads.fetch_add(1, Ordering::Relaxed);
                    // The attack itself: a byte every 100 ms.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            sent
        });
    }
    // 127.0.0.4 sends whole heads, then bodies a byte every 200 ms.
    for _ in 0..5 {
        let (server, slow_bodies) = (server.clone(), slow_bodies.clone());
        attackers.spawn(async move {
            let mut sent = 0usize;
            while Instant::now() < until {
                let Ok(mut stream) = connect_from(&server, "127.0.0.4").await else { break };
                let head = "POST /v1/queues/slow/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                            Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                while Instant::now() < until && stream.write_all(b"{").await.is_ok() {
                    sent += 1;
                    slow_bodies.fetch_add(1, Ordering::Relaxed);
                    // The attack itself: a byte every 200 ms.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            sent
        });
    }

    // Meanwhile, once every attacker is at work (the flood enough to take every
    // connection the server allows), an honest client on 127.0.0.1, a new
    // connection per request.
    wait_until(Duration::from_secs(5), "100 flood connections and the first slow bytes", || async {
        flooded.load(Ordering::Relaxed) >= 100
            && slow_heads.load(Ordering::Relaxed) > 0
            && slow_bodies.load(Ordering::Relaxed) > 0
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let response = client
            .post(server.url("/v1/queues/honest/tasks"))
            .json(&json!({"kind": "k"}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("an honest client was not answered during the attack: {e}"));
        assert_eq!(response.status(), 201);
        slowest = slowest.max(started.elapsed());
        answered += 1;
        // The honest client's pace: a request every 100 ms or so, all through the attack.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Some(done) = attackers.join_next().await {
        done.unwrap();
    }
    let flood = flood.await.unwrap();
    eprintln!(
        "{answered} honest requests answered during the attack, slowest {slowest:?}; \
         {flood} flood connections opened"
    );
    assert!(flood > 300, "the flood opened only {flood} connections");
    assert!(answered >= 10, "only {answered} honest requests were answered");
    assert!(slowest < Duration::from_secs(2), "an honest request waited {slowest:?}");

    // Each kind of slow client is cut off by the server.
    let mut idle = tcp(&server);
    let started = Instant::now();
    assert!(closed_by_server(&mut idle), "an idle connection stays open");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "idle connection closed after {:?}",
        started.elapsed()
    );
    let mut slow_head = tcp(&server);
    slow_head.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_by_server(&mut slow_head), "a connection with a half-sent head stays open");
    let mut slow_body = tcp(&server);
    slow_body
        .write_all(
            b"POST /v1/queues/q/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
              Content-Length: 50\r\n\r\n{",
        )
        .unwrap();
    let mut answer = String::new();
    let _ = slow_body.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "a trickling body: {answer:?}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // The per-client limit: 127.0.0.5 gets 32 connections, the 33rd is closed.
    // Each of the 32 is answered a request first: the server has accepted (and
    // counted) it before the 33rd arrives.
    let mut held = Vec::new();
    let healthz =
        format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", server.base.trim_start_matches("http://"));
    for _ in 0..32 {
        use tokio::io::AsyncReadExt as _;
        let mut connection = connect_from(&server, "127.0.0.5").await.unwrap();
        connection.write_all(healthz.as_bytes()).await.unwrap();
        let mut answer = [0u8; 64];
        let read = connection.read(&mut answer).await.unwrap();
        assert!(
            answer[..read].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&answer[..read])
        );
        held.push(connection);
    }
    let extra = connect_from(&server, "127.0.0.5").await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        extra.readable().await.ok();
        extra.try_read(&mut byte)
    })
    .await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the 33rd connection of a client is closed: {read:?}");
    drop(held);
    // And the server is still healthy.
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_and_bodies_are_refused() {
    let server = Server::start_with(
        &Backend::sqlite(),
        &["--max-header-bytes", "4096", "--max-body-bytes", "65536", "--max-payload-bytes", "1024"],
    )
    .await;
    let response = http().get(server.url("/healthz")).header("x-big", "a".repeat(8192)).send().await.unwrap();
    assert_eq!(response.status(), 431);
    let response = http()
        .post(server.url("/v1/queues/q/tasks"))
        .header("content-type", "application/json")
        .body(format!("{{\"kind\":\"k\",\"payload\":\"{}\"}}", "a".repeat(100_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_client() {
    let s = Secured::start(&["--max-auth-failures", "5"]).await;
    let good = s.token(&["admin"]);
    for n in 1..=5 {
        let (status, body) = s.call(Some("bad.token.here"), "GET", "/v1/queues", Value::Null).await;
        assert_eq!(status, 401, "attempt {n}: {body}");
    }
    let (status, body, headers) =
        call_full(&s.server, Some("bad.token.here"), "GET", "/v1/queues", Value::Null).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_requests");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    // While blocked, even a good token from this client is not looked at.
    expect("good token while blocked", s.call(Some(&good), "GET", "/v1/queues", Value::Null).await, 429);
    // Requests without a token are not guesses and do not count, but are refused.
    assert_eq!(s.call(None, "GET", "/healthz", Value::Null).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_long_polls_are_capped() {
    let server = Server::start_with(&Backend::sqlite(), &["--max-waiting-leases", "2"]).await;
    let server = std::sync::Arc::new(server);
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let server = server.clone();
        waiting.push(tokio::spawn(async move {
            server.post("/v1/queues/idle/lease", json!({"wait_ms": 3000})).await
        }));
    }
    server.wait_for_log(LONG_POLL_WAITING, 2).await;
    let (status, body) = server.post("/v1/queues/idle/lease", json!({"wait_ms": 3000})).await;
    assert_eq!(status, 429, "a third long poll: {body}");
    // A lease that does not wait is still served.
    assert_eq!(server.post("/v1/queues/idle/lease", json!({})).await.0, 200);
    for w in waiting {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["tasks"], json!([]));
    }
    // The slots are free again.
    assert_eq!(server.post("/v1/queues/idle/lease", json!({"wait_ms": 10})).await.0, 200);
}
