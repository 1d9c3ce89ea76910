"""Exceptions of the cherga client, one class per API error code.

Every error the server answers is ``{"error": {"code", "message"}}``; the client
raises the class registered for ``code`` (see ``ERROR_CLASSES``), or
``ChergaError`` itself for a code this version does not know, so a newer server
never breaks an older client. Transport failures that outlived the client's
retries raise ``ConnectionFailed``.

The classes form a small tree so callers can catch at the level they care about:
``InvalidRequest`` covers every 400, ``NotFound`` every 404, ``Conflict`` every
409, and ``Unavailable`` both a 503 and an unreachable server.

The codes are the server's ``ErrorCode::as_str`` (``crates/cherga-api/src/error.rs``);
``tests/test_errors.py`` reads that list and fails when the two differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ChergaError(Exception):
    """An error answered by cherga (or the failure to reach it).

    ``code`` is the stable machine code (``"lease_lost"``), ``status`` the HTTP
    status (``None`` when no answer arrived) and ``message`` the server's text.
    """

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"


class InvalidRequest(ChergaError):
    """400: a field has a value out of range, or the request is malformed."""

    code = "invalid_request"


class InvalidJson(InvalidRequest):
    code = "invalid_json"


class InvalidQueueName(InvalidRequest):
    code = "invalid_queue_name"


class InvalidTaskId(InvalidRequest):
    code = "invalid_task_id"


class NotFound(ChergaError):
    """404 of any kind."""

    code = "not_found"


class QueueNotFound(NotFound):
    code = "queue_not_found"


class TaskNotFound(NotFound):
    code = "task_not_found"


class RouteNotFound(NotFound):
    code = "route_not_found"


class Unauthorized(ChergaError):
    """401: no bearer token, or one the server does not accept (malformed,
    expired, signed by an unknown key, for another issuer or audience, revoked)."""

    code = "unauthorized"


class Forbidden(ChergaError):
    """403: the token is valid, but its scopes do not cover this request."""

    code = "forbidden"


class MethodNotAllowed(ChergaError):
    code = "method_not_allowed"


class UnsupportedMediaType(ChergaError):
    code = "unsupported_media_type"


class Conflict(ChergaError):
    """409 of any kind."""

    code = "conflict"


class LeaseLost(Conflict):
    """The lease token is not the task's current lease: it expired, or another
    worker holds the task now. Never retried: the task belongs to someone else."""

    code = "lease_lost"


class InvalidState(Conflict):
    """The task is not in a state the operation applies to (e.g. cancelling a
    running task)."""

    code = "invalid_state"


class QueueNotEmpty(Conflict):
    """The queue still holds unfinished tasks (delete it with ``force=True``),
    or a task arrived while it was being deleted."""

    code = "queue_not_empty"


class PayloadTooLarge(ChergaError):
    code = "payload_too_large"


class BodyTooLarge(PayloadTooLarge):
    code = "body_too_large"


class RequestTimeout(ChergaError):
    """408: the request took longer than the server's request timeout. Not
    retried: a change may have been applied before the time ran out."""

    code = "request_timeout"


class TooManyRequests(ChergaError):
    """429: too many failed authentications from this client, or too many
    long polls waiting at once. ``retry_after`` is the server's ``Retry-After``
    in seconds (``None`` when it sent none). Not retried by the client."""

    code = "too_many_requests"

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class Unprocessable(ChergaError):
    """422 of any kind: the request was understood and refused."""

    code = "unprocessable"


class IdempotencyKeyReused(Unprocessable):
    """422: the idempotency key was already used for a *different* request."""

    code = "idempotency_key_reused"


class PayloadInvalid(Unprocessable):
    """422: the payload breaks the queue's JSON Schema (``violations``: one dict
    per failing value, with ``pointer``, ``keyword``, ``schema_pointer`` and
    ``message``), or a schema given to set is not a valid schema."""

    code = "payload_invalid"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        violations: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.violations = violations or []


class Unavailable(ChergaError):
    """503: the server cannot take requests right now (store busy, shutting
    down). Retried by the client before it is raised."""

    code = "unavailable"


class InsufficientStorage(ChergaError):
    """507: the server's disk is full; nothing of the request was stored. Not
    retried by the client: the same request succeeds once space is freed on
    the server, which takes an operator, not milliseconds."""

    code = "insufficient_storage"


class ConnectionFailed(Unavailable):
    """No answer from the server (refused, reset, timed out) after the client's
    retries. ``status`` is ``None``. ``__cause__`` is the httpx exception."""

    code = "connection_failed"


class InternalError(ChergaError):
    """500: the server failed; its log has the cause."""

    code = "internal"


ERROR_CLASSES: dict[str, type[ChergaError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        InvalidJson,
        InvalidQueueName,
        InvalidTaskId,
        QueueNotFound,
        TaskNotFound,
        RouteNotFound,
        Unauthorized,
        Forbidden,
        MethodNotAllowed,
        UnsupportedMediaType,
        LeaseLost,
        InvalidState,
        QueueNotEmpty,
        PayloadTooLarge,
        BodyTooLarge,
        RequestTimeout,
        IdempotencyKeyReused,
        PayloadInvalid,
        TooManyRequests,
        Unavailable,
        InsufficientStorage,
        InternalError,
    )
}

# A status whose body was not the API's error shape (a proxy's HTML page, say)
# still maps to the family its status implies.
_STATUS_CLASSES: dict[int, type[ChergaError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    408: RequestTimeout,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    429: TooManyRequests,
    500: InternalError,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
    507: InsufficientStorage,
}


def error_from_response(status: int, body: Any, headers: Mapping[str, str] | None = None) -> ChergaError:
    """The exception for an error answer: ``body`` is the decoded JSON (or
    ``None`` when it was not JSON); ``headers`` (lower-case names) give a 429
    its ``retry_after``."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
        cls = ERROR_CLASSES.get(code, ChergaError)
    else:
        code = None
        message = f"HTTP {status} without an API error body"
        cls = _STATUS_CLASSES.get(status, ChergaError)
    if cls is PayloadInvalid:
        found = error.get("violations") if isinstance(error, dict) else None
        violations = [v for v in found if isinstance(v, dict)] if isinstance(found, list) else []
        return PayloadInvalid(message, code=code, status=status, violations=violations)
    if cls is TooManyRequests:
        retry_after = _seconds((headers or {}).get("retry-after"))
        return TooManyRequests(message, code=code, status=status, retry_after=retry_after)
    return cls(message, code=code, status=status)


def _seconds(retry_after: str | None) -> float | None:
    """A ``Retry-After`` given in seconds (the form cherga sends); ``None``
    for anything else."""
    try:
        return float(retry_after) if retry_after is not None else None
    except ValueError:
        return None
