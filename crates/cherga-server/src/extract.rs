//! Extractors that answer bad input with the API's JSON errors.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use cherga_api::ErrorCode;
use serde::de::DeserializeOwned;

/// A JSON body. The content type is not insisted on (so `curl -d` works), the size
/// limit is; an empty body reads as `{}` for bodies whose fields are all optional.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
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
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid JSON body: {e}")))
    }
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
    use super::asks_minimal;

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
