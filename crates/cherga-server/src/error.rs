//! `ApiError`: the one place that picks status codes. Client errors explain
//! themselves; server errors are logged here and reveal nothing.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cherga_api::{ErrorBody, ErrorCode, Violation, WireError};
use cherga_core::Refusal;
use cherga_store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for a `Retry-After` header (429 answers).
    pub retry_after: Option<u64>,
    /// What a `payload_invalid` error found.
    pub violations: Vec<Violation>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None, violations: Vec::new() }
    }

    /// 422 `payload_invalid`: a payload of `kind` broke version `version` of
    /// its queue's schemas in these ways.
    pub fn payload_invalid(kind: &str, version: u64, violations: Vec<Violation>) -> Self {
        let message = format!(
            "the payload breaks the queue's schema for kind {kind:?} (version {version}) in {} place(s); see violations",
            violations.len()
        );
        Self { violations, ..Self::new(ErrorCode::PayloadInvalid, message) }
    }

    /// 401, with `WWW-Authenticate: Bearer`. `message` must not quote the token.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// 429 with `Retry-After`.
    pub fn too_many(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self { retry_after: Some(retry_after_s), ..Self::new(ErrorCode::TooManyRequests, message) }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// Maps a store error about a task.
    pub fn from_task_error(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => {
                Self::new(ErrorCode::TaskNotFound, "no task with this id (it may have been purged)")
            }
            other => Self::from_store(other),
        }
    }

    /// Maps a store error about a queue.
    pub fn from_queue_error(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::new(ErrorCode::QueueNotFound, "no queue with this name"),
            other => Self::from_store(other),
        }
    }

    fn from_store(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::new(ErrorCode::TaskNotFound, "not found"),
            StoreError::Refused(refusal @ Refusal::LeaseLost) => {
                Self::new(ErrorCode::LeaseLost, refusal.to_string())
            }
            StoreError::Refused(refusal @ Refusal::InvalidState { .. }) => {
                Self::new(ErrorCode::InvalidState, refusal.to_string())
            }
            StoreError::KeyReused(task_id) => Self::new(
                ErrorCode::IdempotencyKeyReused,
                format!("this idempotency key was already used for a different request (task {task_id})"),
            ),
            StoreError::InvalidSettings(message) => Self::invalid(message),
            StoreError::NotEmpty(n) => Self::new(
                ErrorCode::QueueNotEmpty,
                format!("the queue still holds {n} tasks (one arrived while it was being deleted?)"),
            ),
            StoreError::Unavailable(source) => {
                let source: &(dyn std::error::Error + 'static) = source.as_ref();
                tracing::error!(error = source, "store unavailable");
                Self::new(ErrorCode::Unavailable, "the store is unavailable; retry later")
            }
            StoreError::StorageFull(source) => {
                let source: &(dyn std::error::Error + 'static) = source.as_ref();
                tracing::warn!(
                    error = source,
                    "the store's disk is full; refusing writes until space is freed"
                );
                Self::new(
                    ErrorCode::InsufficientStorage,
                    "the store's disk is full: nothing of this request was stored; free space on the disk of the \
                     server's data directory, then retry (no restart is needed)",
                )
            }
            StoreError::Closed => {
                Self::new(ErrorCode::Unavailable, "the server is shutting down; retry later")
            }
            StoreError::Corrupt(detail) => {
                tracing::error!(%detail, "corrupt data in store");
                Self::new(ErrorCode::Internal, "internal error")
            }
        }
    }

    pub fn to_wire(&self) -> WireError {
        WireError { violations: self.violations.clone(), ..WireError::new(self.code, self.message.clone()) }
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        // WireError codes made by cherga-api are always request errors.
        let code = match e.code.as_str() {
            "payload_too_large" => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::InvalidRequest,
        };
        Self::new(code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(ErrorBody { error: self.to_wire() })).into_response();
        let headers = response.headers_mut();
        if self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"cherga\""));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
