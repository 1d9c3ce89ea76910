//! Whole HTTP requests — method, path, query, headers, body — through the real
//! router over a real (non-durable) SQLite store, with authentication on. The
//! property the API promises: malformed input never gets a 5xx, and every
//! answer is JSON.

#![no_main]

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::Request;
use cherga_api::auth::{KeyEntry, KeyFile};
use cherga_auth::{KeySet, NewToken, Policy, Verifier};
use cherga_server::{AuthConfig, ServerConfig, TokenKeys};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tower::ServiceExt as _;

struct World {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    tokens: Vec<String>,
    _dir: std::path::PathBuf,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = std::env::temp_dir().join(format!("cherga-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let key = KeyEntry {
            kid: "k".into(),
            alg: "HS256".into(),
            public_key: None,
            private_key: None,
            secret: Some("ZnV6emluZy1zZWNyZXQtZnV6emluZy1zZWNyZXQtMzI=".into()),
        };
        let file = KeyFile { keys: vec![key] };
        let policy = Policy { issuer: "cherga".into(), audience: "cherga".into(), leeway_s: 30 };
        let keys = KeySet::from_file_contents(&file).unwrap();
        let mint = |scopes: &[&str]| {
            let new = NewToken {
                subject: "fuzz".into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                issuer: "cherga".into(),
                audience: "cherga".into(),
                now_s: cherga_server::now_ms() / 1000,
                ttl_s: 86_400,
                jti: None,
            };
            cherga_auth::issue(&keys, Some("k"), &new).unwrap().0
        };
        let tokens = vec![mint(&["admin"]), mint(&["produce:q*", "consume:q"]), mint(&["consume:*"])];
        let router = runtime.block_on(async {
            let store = cherga_store_sqlite::SqliteStore::open(cherga_store_sqlite::Options {
                path: dir.join("cherga.db"),
                durable: false,
            })
            .unwrap();
            let config = ServerConfig {
                auth: Some(AuthConfig {
                    keys: TokenKeys::new(Verifier::new(KeySet::from_file_contents(&file).unwrap(), policy)),
                    max_failures_per_minute: 0,
                }),
                ..ServerConfig::unauthenticated(1 << 20, 1 << 16)
            };
            let (app, shutdown) = cherga_server::App::new(std::sync::Arc::new(store), &config);
            std::mem::forget(shutdown);
            app.load_revocations().await.unwrap();
            // As `serve` does: without the refresher the revocation set goes stale
            // and every token is refused (503), by design.
            tokio::spawn(app.clone().run_revocations());
            cherga_server::router(app, &config)
        });
        World { runtime, router, tokens, _dir: dir }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    route: u8,
    segment: String,
    query: String,
    token: u8,
    bad_token: String,
    header_name: String,
    header_value: Vec<u8>,
    body: Vec<u8>,
}

const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"];

fuzz_target!(|input: Input| {
    let world = world();
    let segment: String =
        input.segment.chars().filter(|c| !c.is_control() && *c != '/' && *c != '?' && *c != '#').collect();
    let path = match input.route % 12 {
        0 => "/v1/queues".to_owned(),
        1 => format!("/v1/queues/{segment}"),
        2 => format!("/v1/queues/{segment}/tasks"),
        3 => format!("/v1/queues/{segment}/tasks/batch"),
        4 => format!("/v1/queues/{segment}/lease"),
        5 => "/v1/tasks/ack".to_owned(),
        6 => format!("/v1/tasks/{segment}"),
        7 => format!("/v1/tasks/{segment}/ack"),
        8 => format!("/v1/tasks/{segment}/nack"),
        9 => format!("/v1/tasks/{segment}/extend"),
        10 => format!("/v1/tasks/{segment}/retry"),
        _ => "/v1/revocations".to_owned(),
    };
    let uri = if input.query.is_empty() { path } else { format!("{path}?{}", input.query) };
    let mut request = Request::builder().method(METHODS[usize::from(input.method) % METHODS.len()]).uri(uri);
    match input.token % 5 {
        0 => {}
        1 => request = request.header("authorization", format!("Bearer {}", input.bad_token)),
        n => {
            request = request.header("authorization", format!("Bearer {}", world.tokens[usize::from(n) - 2]))
        }
    }
    if let (Ok(name), Ok(value)) = (
        axum::http::HeaderName::from_bytes(input.header_name.as_bytes()),
        axum::http::HeaderValue::from_bytes(&input.header_value),
    ) {
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Body::from(input.body)) else { return };
    // Long polls would wait: the fuzzer asks for none (wait_ms in bodies is capped
    // by the handler at 60 s, so cut any wait short).
    let answer = world.runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_millis(200), world.router.clone().oneshot(request))
            .await
    });
    let Ok(Ok(response)) = answer else { return };
    let status = response.status().as_u16();
    let body = world.runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 24)).unwrap();
    assert!(status < 500, "status {status}: {}", String::from_utf8_lossy(&body));
    if !body.is_empty() {
        assert!(
            serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
            "status {status}: the answer is not JSON: {}",
            String::from_utf8_lossy(&body)
        );
    }
});
