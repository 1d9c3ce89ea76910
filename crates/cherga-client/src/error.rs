//! The one error type of the client, and how an HTTP answer becomes a value or an
//! error. Every request of [`crate::Client`] ends in [`decode_answer`], so the
//! mapping from status and body to [`Error`] lives only here.

use cherga_api::{ErrorBody, ErrorCode};
use serde::de::DeserializeOwned;

/// Longest piece of an undecodable body kept in [`Error::Decode`], in bytes.
const BODY_SNIPPET_LEN: usize = 512;

/// What can go wrong when talking to cherga.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// cherga answered with an error: `status` is the HTTP status, `code` the
    /// stable machine code of [`cherga_api::ErrorCode`] (such as `lease_lost`),
    /// `message` the explanation for people.
    #[error("cherga refused the request ({status} {code}): {message}")]
    Api { status: u16, code: String, message: String },
    /// The request did not get an answer: the connection failed or timed out, or the
    /// request could not be built (a malformed base URL).
    #[error("HTTP request to cherga failed")]
    Http(#[from] reqwest::Error),
    /// An answer came back but its body is not what the API promises, such as an HTML
    /// page from a proxy in front of cherga. `body` holds the start of the body.
    #[error("cannot decode cherga's answer (status {status}); the body starts with {body:?}")]
    Decode {
        status: u16,
        #[source]
        source: serde_json::Error,
        body: String,
    },
    /// The base URL given to [`crate::Client::new`] cannot address a cherga server.
    #[error("invalid cherga base URL {url:?}: {reason}")]
    BaseUrl { url: String, reason: String },
}

impl Error {
    /// The machine code of an [`Error::Api`] (such as `"lease_lost"`), `None` for
    /// other errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status of the answer, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            Error::Http(error) => error.status().map(|s| s.as_u16()),
            Error::BaseUrl { .. } => None,
        }
    }

    /// Whether cherga answered with this error code.
    pub fn is(&self, code: ErrorCode) -> bool {
        self.code() == Some(code.as_str())
    }

    /// The lease presented is not the task's current lease (409 `lease_lost`): the
    /// lease expired and the task may already run elsewhere. Do not retry.
    pub fn is_lease_lost(&self) -> bool {
        self.is(ErrorCode::LeaseLost)
    }

    /// The task or the queue does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.is(ErrorCode::TaskNotFound) || self.is(ErrorCode::QueueNotFound)
    }

    /// The task is not in a state the operation applies to (409 `invalid_state`).
    pub fn is_invalid_state(&self) -> bool {
        self.is(ErrorCode::InvalidState)
    }

    /// The same idempotency key came with a different request (422).
    pub fn is_idempotency_key_reused(&self) -> bool {
        self.is(ErrorCode::IdempotencyKeyReused)
    }

    /// Whether sending the same request again later may succeed: the connection
    /// failed or timed out, or the server (or a proxy in front of it) is overloaded
    /// or failing (429 and 5xx). Refusals of the request itself (4xx) are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Http(error) => !error.is_builder(),
            Error::Api { status, .. } | Error::Decode { status, .. } => *status == 429 || *status >= 500,
            Error::BaseUrl { .. } => false,
        }
    }
}

/// Turns an answer into the value it carries or the error it reports.
///
/// A 2xx body is decoded as `T`; any other status is decoded as
/// [`cherga_api::ErrorBody`]. A body that does not decode gives [`Error::Decode`].
pub(crate) fn decode_answer<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, Error> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body).map_err(|source| decode_error(status, source, body));
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => Err(Error::Api { status, code: error.code, message: error.message }),
        Err(source) => Err(decode_error(status, source, body)),
    }
}

fn decode_error(status: u16, source: serde_json::Error, body: &[u8]) -> Error {
    // A cut through a multi-byte character shows as one replacement character.
    let end = body.len().min(BODY_SNIPPET_LEN);
    Error::Decode { status, source, body: String::from_utf8_lossy(&body[..end]).into_owned() }
}
