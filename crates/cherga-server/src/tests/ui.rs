//! The dashboard as the server sends it: embedded files with headers that keep
//! a browser from running anything but them, and `GET /v1/whoami`, which tells
//! the page what its token may do.

use super::security::{Server, request};
use axum::body::Body;

#[tokio::test]
async fn the_dashboard_is_served_with_a_strict_policy_and_without_a_token() {
    for server in [Server::open(|_| {}).await, Server::authenticated(|_| {}).await] {
        for (path, kind) in [
            ("/ui", "text/html"),
            ("/ui/", "text/html"),
            ("/ui/app.js", "text/javascript"),
            ("/ui/app.css", "text/css"),
            ("/ui/icon.svg", "image/svg+xml"),
        ] {
            let response = server.raw(request("GET", path).body(Body::empty()).unwrap()).await;
            assert_eq!(response.status(), 200, "{path}");
            let header = |name: &str| {
                response.headers().get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
            };
            assert!(header("content-type").starts_with(kind), "{path}: {}", header("content-type"));
            let policy = header("content-security-policy");
            for rule in
                ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]
            {
                assert!(policy.contains(rule), "{path}: {policy:?} lacks {rule:?}");
            }
            assert!(!policy.contains("unsafe"), "{path}: {policy:?}");
            assert_eq!(header("x-frame-options"), "DENY", "{path}");
            assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
            assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
        }
    }
}

/// The page has no inline script or style for the policy to refuse, and the
/// script never hands text to the HTML parser.
#[test]
fn the_dashboard_has_nothing_inline_and_no_html_sinks() {
    let html = include_str!("../../ui/index.html");
    assert!(!html.contains("<script>") && !html.contains("style="), "inline script or style in index.html");
    assert!(!regex::Regex::new(r"\son[a-z]+=").unwrap().is_match(html), "an inline handler in index.html");
    let script = include_str!("../../ui/app.js");
    for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
        assert!(!script.contains(sink), "app.js uses {sink}");
    }
}

#[tokio::test]
async fn a_page_of_another_host_is_not_served_with_auth_off() {
    let server = Server::open(|_| {}).await;
    let rebound = axum::http::Request::builder()
        .uri("/ui")
        .header("host", "attacker.example")
        .body(Body::empty())
        .unwrap();
    assert_eq!(server.raw(rebound).await.status(), 403);
}

#[tokio::test]
async fn whoami_tells_the_caller_its_scopes() {
    let server = Server::open(|_| {}).await;
    let (status, me) = server.send(request("GET", "/v1/whoami").body(Body::empty()).unwrap()).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        me,
        serde_json::json!({"auth": false, "subject": null, "scopes": ["admin"], "expires_at": null})
    );

    let server = Server::authenticated(|_| {}).await;
    let (status, me) = server.send(request("GET", "/v1/whoami").body(Body::empty()).unwrap()).await;
    assert_eq!((status, &me["error"]["code"]), (401, &serde_json::json!("unauthorized")), "{me}");
    let token = server.token(&["consume:mail.*", "read:*", "nonsense"]);
    let (status, me) = server
        .send(
            request("GET", "/v1/whoami")
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["auth"], true);
    assert_eq!(me["subject"], "test");
    assert_eq!(me["scopes"], serde_json::json!(["consume:mail.*", "read:*"]));
    assert!(me["expires_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{me}");
}
