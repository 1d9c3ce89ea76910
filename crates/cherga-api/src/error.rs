//! Error codes of the API. Each code is stable; the server maps it to one status.

use serde::{Deserialize, Serialize};

/// The machine-readable codes of API errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not JSON, or a field is missing or of the wrong type.
    InvalidJson,
    /// A field has a value out of range.
    InvalidRequest,
    InvalidQueueName,
    InvalidTaskId,
    PayloadTooLarge,
    BodyTooLarge,
    QueueNotFound,
    TaskNotFound,
    RouteNotFound,
    MethodNotAllowed,
    UnsupportedMediaType,
    /// The lease token is not the task's current lease.
    LeaseLost,
    /// The task is not in a state the operation applies to.
    InvalidState,
    IdempotencyKeyReused,
    /// No bearer token, or one that is malformed, expired, not yet valid, signed
    /// by an unknown key, for another issuer or audience, or revoked.
    Unauthorized,
    /// The token is valid but its scopes do not cover this request.
    Forbidden,
    /// The request took longer than the server's request timeout.
    RequestTimeout,
    /// Too many failed authentications from this client, or too many long polls
    /// waiting: retry after the `Retry-After` seconds.
    TooManyRequests,
    /// The store cannot take requests right now; retry.
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidQueueName => "invalid_queue_name",
            ErrorCode::InvalidTaskId => "invalid_task_id",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::QueueNotFound => "queue_not_found",
            ErrorCode::TaskNotFound => "task_not_found",
            ErrorCode::RouteNotFound => "route_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::LeaseLost => "lease_lost",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status of this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidJson
            | ErrorCode::InvalidRequest
            | ErrorCode::InvalidQueueName
            | ErrorCode::InvalidTaskId => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::QueueNotFound | ErrorCode::TaskNotFound | ErrorCode::RouteNotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::LeaseLost | ErrorCode::InvalidState => 409,
            ErrorCode::PayloadTooLarge | ErrorCode::BodyTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }
}

/// `{"code": ..., "message": ...}`: what went wrong, for machines and for people.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WireError {
    pub code: String,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code: code.as_str().to_owned(), message: message.into() }
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
