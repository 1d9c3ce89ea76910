//! Error codes of the API. Each code is stable; the server maps it to one status.

use serde::{Deserialize, Serialize};

/// Defines [`ErrorCode`] from one table: each code once, with its text and its
/// HTTP status, so that [`ErrorCode::ALL`] cannot miss one.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $code:ident = $text:literal => $status:literal,)*) => {
        /// The machine-readable codes of API errors.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode {
            $($(#[$doc])* $code,)*
        }

        impl ErrorCode {
            /// Every code, as declared: the `code`s an error body may carry (the
            /// OpenAPI document lists them, so clients can be checked against it).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$code),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => $text,)*
                }
            }

            /// The HTTP status of this code.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$code => $status,)*
                }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON, or a field is missing or of the wrong type, or it is
    /// nested deeper than the server's limit.
    InvalidJson = "invalid_json" => 400,
    /// A field has a value out of range.
    InvalidRequest = "invalid_request" => 400,
    InvalidQueueName = "invalid_queue_name" => 400,
    InvalidTaskId = "invalid_task_id" => 400,
    /// No bearer token, or one that is malformed, expired, not yet valid, signed
    /// by an unknown key, for another issuer or audience, or revoked.
    Unauthorized = "unauthorized" => 401,
    /// The token is valid but its scopes do not cover this request; or the
    /// request came from a web page of another site, or (auth off) was addressed
    /// to a host that is not local or allowed.
    Forbidden = "forbidden" => 403,
    QueueNotFound = "queue_not_found" => 404,
    TaskNotFound = "task_not_found" => 404,
    RouteNotFound = "route_not_found" => 404,
    MethodNotAllowed = "method_not_allowed" => 405,
    /// The request took longer than the server's request timeout.
    RequestTimeout = "request_timeout" => 408,
    /// The lease token is not the task's current lease.
    LeaseLost = "lease_lost" => 409,
    /// The task is not in a state the operation applies to.
    InvalidState = "invalid_state" => 409,
    /// The queue still holds unfinished tasks (delete it with `force=true`), or
    /// a task arrived while it was being deleted.
    QueueNotEmpty = "queue_not_empty" => 409,
    PayloadTooLarge = "payload_too_large" => 413,
    BodyTooLarge = "body_too_large" => 413,
    /// A request body not sent as `Content-Type: application/json`.
    UnsupportedMediaType = "unsupported_media_type" => 415,
    IdempotencyKeyReused = "idempotency_key_reused" => 422,
    /// The payload breaks the queue's JSON Schema for the task's kind; the
    /// error's `violations` name each failing value and keyword. Also: a
    /// schema given to `PUT /v1/queues/{queue}/schema` is not a valid schema.
    PayloadInvalid = "payload_invalid" => 422,
    /// Too many failed authentications from this client, or too many long polls
    /// waiting: retry after the `Retry-After` seconds.
    TooManyRequests = "too_many_requests" => 429,
    Internal = "internal" => 500,
    /// The store cannot take requests right now; retry.
    Unavailable = "unavailable" => 503,
    /// The store's disk is full: nothing of the request was stored. Requests
    /// that write fail until space is freed on it; then they succeed again.
    InsufficientStorage = "insufficient_storage" => 507,
}

/// `{"code": ..., "message": ...}`: what went wrong, for machines and for people.
/// `code` is one of [`ErrorCode::ALL`] (a client must still expect new ones).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireError {
    pub code: String,
    pub message: String,
    /// With `payload_invalid`: each way the payload breaks its schema.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<crate::Violation>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.as_str().to_owned(), message: message.into(), violations: Vec::new() }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: WireError,
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for WireError {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(ErrorCode::ALL.iter().map(|code| code.as_str())))
                    .description(Some("The stable machine code; each maps to one HTTP status")),
            )
            .required("code")
            .property(
                "message",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("What went wrong, for people")),
            )
            .required("message")
            .property(
                "violations",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(<crate::Violation as utoipa::PartialSchema>::schema())
                    .description(Some("With `payload_invalid`: each way the payload breaks its schema")),
            )
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for WireError {}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_is_listed_once_with_the_status_of_its_family() {
        let mut texts: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), ErrorCode::ALL.len(), "codes are unique");
        for code in ErrorCode::ALL {
            assert!((400..600).contains(&code.status()), "{code:?}");
            assert!(code.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code:?}");
        }
    }
}
