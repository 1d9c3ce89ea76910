//! The OpenAPI document of the v1 API, served at `/v1/openapi.json`.
//!
//! It is generated from the code: request and answer schemas are derived from
//! the `cherga-api` types, and each operation from the `#[utoipa::path]` on its
//! handler in `routes`. What every operation shares — the bearer security
//! scheme and the error answers any request can get (bad input, 401, 403, 408,
//! 413, 415, 429, 500, 503, 507) — is added here in one place, so no handler can
//! forget it. A server with auth off serves the document without the security
//! scheme and without 401s: nothing there needs a token. A test checks that
//! every route of the router is in the document and back.

use crate::{App, routes};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use cherga_api::ErrorBody;
use cherga_store::Store;
use std::sync::Arc;
use std::sync::OnceLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, PartialSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "cherga",
        description = "A durable task broker: enqueue tasks, lease them to workers, acknowledge them. \
                       Every error is `{\"error\": {\"code\", \"message\"}}`.",
        version = "1"
    ),
    paths(
        routes::health,
        crate::observe::ready,
        crate::observe::metrics,
        routes::list_queues,
        routes::get_queue,
        routes::put_queue,
        routes::enqueue,
        routes::enqueue_batch,
        routes::list_tasks,
        routes::lease,
        routes::ack,
        routes::ack_batch,
        routes::nack,
        routes::extend,
        routes::get_task,
        routes::cancel,
        routes::retry,
        routes::revoke,
        routes::list_revocations,
        routes::whoami,
        crate::bulk::retry,
        crate::bulk::cancel,
        crate::bulk::purge,
        crate::bulk::delete_queue,
        crate::payload_schemas::put_schema,
        crate::payload_schemas::get_schema,
        crate::payload_schemas::delete_schema,
        crate::events::stream,
        openapi_path,
    )
)]
struct ApiDoc;

/// The common parts of every operation, for a server with auth on or off.
struct Shared {
    auth: bool,
}

/// Operations whose body may be left out, as (path, is PUT).
const OPTIONAL_BODIES: [(&str, bool); 6] = [
    ("/v1/queues/{queue}/lease", false),
    ("/v1/tasks/{id}/retry", false),
    ("/v1/queues/{queue}", true),
    ("/v1/queues/{queue}/tasks/retry", false),
    ("/v1/queues/{queue}/tasks/cancel", false),
    ("/v1/queues/{queue}/tasks/purge", false),
];

/// Error answers any operation but the open ones can give, besides its own.
const COMMON_ERRORS: [(&str, &str); 10] = [
    (
        "400",
        "the request is malformed: bad JSON, JSON nested too deep, a field out of range, a bad queue name or task id",
    ),
    ("401", "no bearer token, or one that is invalid, expired or revoked"),
    (
        "403",
        "the token's scopes do not allow this; or the request came from a web page of another site (`Origin`), or \
         (auth off) was addressed to a host that is neither local nor allowed",
    ),
    ("408", "the request took longer than the server's request timeout"),
    ("413", "the body or a payload is larger than the server's limit"),
    ("415", "the request has a body not sent as `Content-Type: application/json`"),
    ("429", "too many failed authentications from this client, or too many waiting long polls"),
    ("500", "an internal error (reveals nothing; the server logs the cause)"),
    ("503", "the store is unavailable or the server is shutting down; retry later"),
    (
        "507",
        "the store's disk is full (`insufficient_storage`): nothing of the request was stored; it succeeds again once \
         space is freed",
    ),
];

impl Modify for Shared {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        if self.auth {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
                ),
            );
        }
        components.schemas.insert("ErrorBody".to_owned(), ErrorBody::schema());
        // The answer of an enqueue or an ack sent with `Prefer: return=minimal`.
        components.schemas.insert("TaskBrief".to_owned(), cherga_api::TaskBrief::schema());
        // Each task of a lease answer sent with `Prefer: return=minimal`.
        components.schemas.insert("LeasedBrief".to_owned(), cherga_api::LeasedBrief::schema());
        doc.security = self.auth.then(|| vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        // Bodies whose fields are all optional may be left out: an empty body
        // reads as `{}` (so `curl -X POST .../lease` works).
        for (path, put) in OPTIONAL_BODIES {
            if let Some(item) = doc.paths.paths.get_mut(path) {
                let operation = if put { item.put.as_mut() } else { item.post.as_mut() };
                if let Some(body) = operation.and_then(|o| o.request_body.as_mut()) {
                    body.required = Some(utoipa::openapi::Required::False);
                }
            }
        }
        for item in doc.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                add_common_errors(operation, self.auth);
            }
        }
    }
}

fn add_common_errors(operation: &mut Operation, auth: bool) {
    // Open operations (security: [{}]) are answered whatever the request says
    // but can still get bad-input and overload errors; they store nothing.
    let open = operation.security.as_ref().is_some_and(|s| s.iter().all(is_empty_requirement));
    for (status, description) in COMMON_ERRORS {
        if (open && matches!(status, "401" | "403" | "415" | "429" | "507")) || (!auth && status == "401") {
            continue;
        }
        operation.responses.responses.entry(status.to_owned()).or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody"))))
                            .build(),
                    )
                    .build(),
            )
        });
    }
}

fn is_empty_requirement(requirement: &SecurityRequirement) -> bool {
    requirement == &SecurityRequirement::default()
}

/// The document of a server with auth on (`auth`) or off, built once.
pub fn document(auth: bool) -> &'static Document {
    static DOCUMENTS: [OnceLock<Document>; 2] = [OnceLock::new(), OnceLock::new()];
    DOCUMENTS[usize::from(auth)].get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        Shared { auth }.modify(&mut doc);
        doc
    })
}

/// [`document`] as JSON text, built once.
pub fn document_json(auth: bool) -> &'static str {
    static JSON: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    JSON[usize::from(auth)]
        .get_or_init(|| document(auth).to_pretty_json().expect("the OpenAPI document serializes"))
}

/// This document. Open to everyone: it describes the API, not the data.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "the OpenAPI document of the v1 API", content_type = "application/json",
        body = Object)))]
#[allow(dead_code)] // Describes `serve_document` for the document.
fn openapi_path() {}

/// `GET /v1/openapi.json`: open to everyone (it describes the API, not the data);
/// with a security requirement when this server's auth is on.
pub(crate) async fn serve_document<S: Store>(State(app): State<Arc<App<S>>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document_json(app.guard.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the router has, as (method, path). Kept next to the test that
    /// compares it with the router, which fails when a route is added without
    /// being listed here and in the document.
    const ROUTES: [(&str, &str); 29] = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/v1/events"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/queues"),
        ("get", "/v1/queues/{queue}"),
        ("put", "/v1/queues/{queue}"),
        ("delete", "/v1/queues/{queue}"),
        ("post", "/v1/queues/{queue}/tasks/retry"),
        ("post", "/v1/queues/{queue}/tasks/cancel"),
        ("post", "/v1/queues/{queue}/tasks/purge"),
        ("put", "/v1/queues/{queue}/schema"),
        ("get", "/v1/queues/{queue}/schema"),
        ("delete", "/v1/queues/{queue}/schema"),
        ("post", "/v1/queues/{queue}/tasks"),
        ("get", "/v1/queues/{queue}/tasks"),
        ("post", "/v1/queues/{queue}/tasks/batch"),
        ("post", "/v1/queues/{queue}/lease"),
        ("post", "/v1/tasks/ack"),
        ("get", "/v1/tasks/{id}"),
        ("delete", "/v1/tasks/{id}"),
        ("post", "/v1/tasks/{id}/ack"),
        ("post", "/v1/tasks/{id}/nack"),
        ("post", "/v1/tasks/{id}/extend"),
        ("post", "/v1/tasks/{id}/retry"),
        ("post", "/v1/revocations"),
        ("get", "/v1/revocations"),
        ("get", "/v1/whoami"),
    ];

    fn documented() -> Vec<(String, String)> {
        let value: serde_json::Value = serde_json::from_str(document_json(true)).unwrap();
        let mut out = Vec::new();
        for (path, item) in value["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    out.push((method.clone(), path.clone()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn document_lists_exactly_the_routes() {
        let mut want: Vec<(String, String)> =
            ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
        want.sort();
        assert_eq!(documented(), want);
    }

    #[tokio::test]
    async fn router_answers_every_documented_route_and_no_other() {
        use tower::ServiceExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = cherga_store_sqlite::SqliteStore::open(cherga_store_sqlite::Options {
            path: dir.path().join("db"),
            durable: false,
            ..cherga_store_sqlite::Options::in_dir(dir.path())
        })
        .unwrap();
        let config = crate::ServerConfig::unauthenticated(1 << 20, 1 << 16);
        let (app, _shutdown) = crate::App::new(std::sync::Arc::new(store), &config);
        let router = crate::router(app, &config);
        for (method, path) in ROUTES {
            let uri = path.replace("{queue}", "q").replace("{id}", "not-an-id");
            let request = axum::http::Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                // A page, not an endless stream, from `GET /v1/events`.
                .header("accept", "application/json")
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            // `/metrics` answers text; anything else not JSON is a failure below.
            let answer: serde_json::Value =
                serde_json::from_slice(&body).unwrap_or_else(|_| String::from_utf8_lossy(&body).into());
            let code = answer["error"]["code"].as_str().unwrap_or("");
            assert!(!["route_not_found", "method_not_allowed"].contains(&code), "{method} {uri}: {answer}");
        }
        // A method the document does not list for a path is not served either.
        let request = axum::http::Request::builder()
            .method("PATCH")
            .uri("/v1/queues/q")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), 405);
    }

    fn properties<T: PartialSchema>() -> Vec<String> {
        let value = serde_json::to_value(T::schema()).unwrap();
        let mut names: Vec<String> = value["properties"].as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn batch_items_have_the_fields_of_an_enqueue() {
        assert_eq!(
            properties::<cherga_api::openapi::BatchItemRequest>(),
            properties::<cherga_api::EnqueueRequest>()
        );
    }

    #[test]
    fn documented_ranges_are_the_checked_ones() {
        let lease = serde_json::to_value(cherga_api::LeaseRequest::schema()).unwrap();
        assert_eq!(lease["properties"]["lease_ms"]["maximum"], cherga_core::queue::MAX_LEASE_MS);
        assert_eq!(lease["properties"]["wait_ms"]["maximum"], cherga_api::MAX_WAIT_MS);
        assert_eq!(lease["properties"]["max"]["maximum"], cherga_api::MAX_BATCH as u64);
        assert_eq!(lease["properties"]["worker"]["maxLength"], cherga_api::MAX_NAME_LEN as u64);
        let enqueue = serde_json::to_value(cherga_api::EnqueueRequest::schema()).unwrap();
        assert_eq!(enqueue["properties"]["delay_ms"]["maximum"], cherga_api::MAX_DELAY_MS);
        let nack = serde_json::to_value(cherga_api::NackRequest::schema()).unwrap();
        assert_eq!(nack["properties"]["retry_in_ms"]["maximum"], cherga_api::MAX_RETRY_IN_MS);
        let revoke = serde_json::to_value(cherga_api::auth::RevokeRequest::schema()).unwrap();
        assert_eq!(revoke["properties"]["jti"]["maxLength"], cherga_auth::MAX_JTI_LEN as u64);
    }

    /// Every string of `alphabet` up to `max_len` characters long.
    fn strings(alphabet: &[char], max_len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max_len {
            last = last.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}"))).collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn documented_patterns_are_the_checked_ones() {
        let value: serde_json::Value = serde_json::from_str(document_json(true)).unwrap();
        let parameters = value["paths"]["/v1/queues/{queue}"]["get"]["parameters"].as_array().unwrap();
        let queue = parameters.iter().find(|p| p["name"] == "queue").unwrap();
        let pattern = regex::Regex::new(queue["schema"]["pattern"].as_str().unwrap()).unwrap();
        let mut names = strings(&['a', 'Z', '.', '-', '_', '/', ' ', '*'], 3);
        for len in [126, 127, 128, 129] {
            names.extend([".", "..", "a", "-"].map(|head| format!("{head}{}", "q".repeat(len - head.len()))));
        }
        for name in names {
            let checked = cherga_core::QueueName::new(&name).is_ok();
            assert_eq!(pattern.is_match(&name), checked, "queue name {name:?}: the code says {checked}");
        }

        let time = serde_json::to_value(cherga_api::Timestamp::schema()).unwrap();
        let text = time["oneOf"].as_array().unwrap().iter().find(|s| s["type"] == "string").unwrap();
        let pattern = regex::Regex::new(text["pattern"].as_str().unwrap()).unwrap();
        let check = |time: &str| {
            let parsed = cherga_api::Timestamp::parse(time).is_ok();
            assert_eq!(pattern.is_match(time), parsed, "time {time:?}: the parser says {parsed}");
        };
        // Every day of the years at the edges and around leap rules.
        let years = [1969, 1970, 1971, 1972, 1999, 2000, 2023, 2024, 2100, 2400, 2401, 9996, 9999];
        for year in years.into_iter().chain((1970..10_000).step_by(97)) {
            for month in 0..=13 {
                for day in 0..=32 {
                    check(&format!("{year:04}-{month:02}-{day:02}T12:00:00Z"));
                }
            }
        }
        for time in [
            "2026-01-02T03:04:05Z",
            "2026-01-02T03:04:05.Z",
            "2026-01-02T03:04:05.123456789123Z",
            "2026-01-02T03:04:05+00:00",
            "2026-01-02T03:04:05.5+00:00",
            "2026-01-02T23:59:60Z",
            "2026-01-02T23:59:60.25Z",
            "2026-01-02T22:04:60Z",
            "2026-01-02T23:58:60Z",
            "2026-01-02T24:00:00Z",
            "2026-01-02T03:60:05Z",
            "2026-01-02T03:04:61Z",
            "2026-01-02t03:04:05Z",
            "2026-01-02T03:04:05z",
            "2026-01-02 03:04:05Z",
            "2026-01-02T03:04:05+01:00",
            "2026-01-02T03:04:05-00:00",
            "2026-01-02T03:04:05",
            "9999-12-31T23:59:59.999Z",
            "10000-01-01T00:00:00Z",
            "2026-1-02T03:04:05Z",
            "2026-01-02T03:04:05.1a2Z",
        ] {
            check(time);
        }
    }

    #[test]
    fn the_error_body_lists_every_error_code() {
        for auth in [true, false] {
            let value: serde_json::Value = serde_json::from_str(document_json(auth)).unwrap();
            let schemas = &value["components"]["schemas"];
            assert_eq!(schemas["ErrorBody"]["properties"]["error"]["$ref"], "#/components/schemas/WireError");
            let listed: Vec<&str> = schemas["WireError"]["properties"]["code"]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("no enum of codes: {}", schemas["WireError"]))
                .iter()
                .map(|code| code.as_str().unwrap())
                .collect();
            let all: Vec<&str> = cherga_api::ErrorCode::ALL.iter().map(|code| code.as_str()).collect();
            assert_eq!(listed, all);
            // Every status a code maps to is documented on some operation (but
            // those of requests that match no operation).
            let outside = [cherga_api::ErrorCode::RouteNotFound, cherga_api::ErrorCode::MethodNotAllowed];
            for code in cherga_api::ErrorCode::ALL.iter().filter(|code| !outside.contains(code)) {
                let status = code.status().to_string();
                let documented = value["paths"].as_object().unwrap().values().any(|item| {
                    item.as_object().unwrap().values().any(|op| op["responses"].get(&status).is_some())
                });
                assert!(documented || (!auth && status == "401"), "{code:?}: no operation answers {status}");
            }
        }
    }

    #[test]
    fn every_operation_declares_the_common_errors_and_bearer_security() {
        let value: serde_json::Value = serde_json::from_str(document_json(true)).unwrap();
        assert_eq!(value["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        for (path, item) in value["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                for status in ["400", "413", "500", "503"] {
                    assert!(responses.contains_key(status), "{method} {path} lacks {status}");
                }
                let open = ["/healthz", "/readyz", "/v1/openapi.json"].contains(&path.as_str());
                assert_eq!(responses.contains_key("401"), !open, "{method} {path}: 401");
            }
        }
    }
}
