//! `GET /ui`: the dashboard, a page of hand-written HTML, CSS and JavaScript
//! embedded in the binary (`ui/` beside `src/`), so serving it needs nothing
//! but the binary.
//!
//! The page is a client of the v1 API like any other: it reads and changes
//! state only through `fetch` with JSON bodies (so the rules of `browser` hold
//! for it too), and with auth on it sends the token the user gives it as a
//! bearer token, kept in the tab's `sessionStorage`, never in a URL. The page
//! itself holds no data, so its routes need no token.
//!
//! **Invariant:** every answer here carries a Content-Security-Policy that
//! allows scripts, styles and connections from this origin only (no inline
//! script or style, no other origin, no framing), with `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`.
//! **Invariant:** the script renders every value with `textContent` or
//! attributes, never as HTML.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Only this origin, for scripts, styles, connections (the API and the event
/// stream) and images; nothing inline, no plugins, no framing, no forms.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const APP_CSS: &str = include_str!("../ui/app.css");
const ICON_SVG: &str = include_str!("../ui/icon.svg");

/// The dashboard's routes; they need no state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/ui/icon.svg", get(|| async { asset("image/svg+xml", ICON_SVG) }))
}

/// One embedded file with the page's security headers.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // The assets change with the binary; a stale script against a new API
        // would be worse than a re-download.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    (headers, body).into_response()
}
