//! Extractors that answer bad input with the API's JSON errors.
//!
//! **Invariant:** every request body is read through [`JsonBody`], which checks
//! its nesting depth before anything parses it: no JSON deeper than the server's
//! limit is parsed, stored or handed to a worker.

use crate::App;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use cherga_api::ErrorCode;
use cherga_store::Store;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// A JSON body. Its size and nesting depth are limited, and an empty body reads
/// as `{}` for bodies whose fields are all optional. (The content type is
/// checked for every request with a body, before routing: [`crate::browser`].)
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Store> FromRequest<Arc<App<S>>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &Arc<App<S>>) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, app).await.map_err(|e: BytesRejection| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(ErrorCode::BodyTooLarge, "request body is larger than the server's limit")
            } else {
                ApiError::invalid(format!("could not read the request body: {e}"))
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        // Every request body is an object; serde would also read a struct from an
        // array of its fields, which the API does not promise.
        if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::new(ErrorCode::InvalidJson, "the request body must be a JSON object"));
        }
        // Payloads and results pass through as raw JSON, which serde does not
        // limit: without this, JSON nested 100,000 deep would be stored, and
        // break the parser of whoever reads it back.
        if !nested_at_most(text, app.max_json_depth) {
            return Err(ApiError::new(
                ErrorCode::InvalidJson,
                format!(
                    "the JSON body is nested deeper than {} levels of arrays and objects, the server's limit",
                    app.max_json_depth
                ),
            ));
        }
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
    }
}

/// Whether arrays and objects in `json` nest at most `limit` deep (the outermost
/// one is level 1). One pass, no allocation: strings are skipped whole, escapes
/// included, so brackets inside them do not count. On text that is not JSON the
/// answer means nothing, and the parser refuses the text anyway.
fn nested_at_most(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                // To the closing quote, stepping over each escaped character.
                i += 1;
                loop {
                    match json.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
                        Some(at) if json[i + at] == b'"' => break i += at,
                        Some(at) => i += at + 2,
                        None => return true,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// A query string.
pub struct QueryArgs<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|q| QueryArgs(q.0))
            .map_err(|e| ApiError::invalid(format!("invalid query string: {}", e.body_text())))
    }
}

/// A path parameter. A value that is not valid percent-encoded UTF-8 gets the
/// API's JSON error, not axum's plain-text one.
pub struct PathArg<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathArg<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathArg(p.0))
            .map_err(|e| ApiError::invalid(format!("invalid path: {}", e.body_text())))
    }
}

/// Whether the request asked for short answers with `Prefer: return=minimal`
/// (RFC 7240: a preference the server may ignore; unknown preferences are).
#[derive(Clone, Copy, Debug, Default)]
pub struct Prefer {
    pub minimal: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Prefer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let minimal = parts
            .headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(asks_minimal));
        Ok(Prefer { minimal })
    }
}

/// `return=minimal`, with the spaces and quotes RFC 7240 allows and any parameters.
fn asks_minimal(preference: &str) -> bool {
    let head = preference.split(';').next().unwrap_or("");
    head.split_once('=').is_some_and(|(name, value)| {
        name.trim().eq_ignore_ascii_case("return")
            && value.trim().trim_matches('"').eq_ignore_ascii_case("minimal")
    })
}

#[cfg(test)]
mod tests {
    use super::{asks_minimal, nested_at_most};

    #[test]
    fn nesting_counts_arrays_and_objects_outside_strings() {
        let check = |json: &str, depth: usize| {
            assert!(nested_at_most(json.as_bytes(), depth), "{json} is at most {depth} deep");
            assert!(!nested_at_most(json.as_bytes(), depth - 1), "{json} is deeper than {}", depth - 1);
        };
        check("{}", 1);
        check(r#"{"a":[1,{"b":[]}]}"#, 4);
        check(r#"[[],[],[[]]]"#, 3);
        check(r#"{"[[[":"{{{","\"[[":["]\\"]}"#, 2);
        check(r#"{"a":"\\",  "b":[["\u005b"]]}"#, 3);
        assert!(nested_at_most(b"", 0));
        assert!(nested_at_most(b"\"[[[[", 0), "an unclosed string: not JSON, left to the parser");
        assert!(nested_at_most(b"]]]]{}", 1), "unbalanced: not JSON, left to the parser");
    }

    #[test]
    fn reads_return_minimal_as_rfc_7240_writes_it() {
        for yes in ["return=minimal", " return = \"minimal\" ", "RETURN=Minimal; foo=1"] {
            assert!(asks_minimal(yes), "{yes}");
        }
        for no in ["return=representation", "respond-async", "return", "minimal", "returns=minimal"] {
            assert!(!asks_minimal(no), "{no}");
        }
    }
}
