"""cherga: Python client, worker and Django Tasks backend for the cherga broker.

- ``Client`` / ``AsyncClient``: the v1 HTTP API, with retries that are safe
  because every enqueue carries an idempotency key.
- ``client.lease(queue)`` / ``client.consume(queue)``: hold leased tasks, with
  heartbeats, acking on success and nacking on failure.
- ``Worker`` / ``AsyncWorker``: handlers per task kind, concurrency, graceful
  shutdown; ``cherga-worker module:worker`` runs one.
- ``cherga.django``: a Django 6 Tasks backend, a transactional outbox, and the
  ``cherga_worker`` / ``cherga_relay`` management commands.
"""

from ._outcome import Dead, Retry
from .client import DEFAULT_URL, AsyncClient, Client
from .errors import (
    BodyTooLarge,
    ChergaError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IdempotencyKeyReused,
    InsufficientStorage,
    InternalError,
    InvalidJson,
    InvalidQueueName,
    InvalidRequest,
    InvalidState,
    InvalidTaskId,
    LeaseLost,
    MethodNotAllowed,
    NotFound,
    PayloadInvalid,
    PayloadTooLarge,
    QueueNotEmpty,
    QueueNotFound,
    RequestTimeout,
    RouteNotFound,
    TaskNotFound,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    Unprocessable,
    UnsupportedMediaType,
)
from .events import AsyncEventStream, Event, EventStream
from .lease import AsyncConsumer, AsyncLeaseContext, Consumer, LeaseContext
from .types import (
    Attempt,
    AttemptOutcome,
    Backoff,
    BatchResult,
    Counts,
    Lease,
    NewTask,
    PayloadEdit,
    Queue,
    QueueSchemas,
    QueueSettings,
    SchemaVersion,
    State,
    Task,
    TaskPage,
)
from .worker import AsyncWorker, Worker, run_workers

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncConsumer",
    "AsyncEventStream",
    "AsyncLeaseContext",
    "AsyncWorker",
    "Attempt",
    "AttemptOutcome",
    "Backoff",
    "BatchResult",
    "BodyTooLarge",
    "ChergaError",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "Consumer",
    "Counts",
    "Dead",
    "Event",
    "EventStream",
    "Forbidden",
    "IdempotencyKeyReused",
    "InsufficientStorage",
    "InternalError",
    "InvalidJson",
    "InvalidQueueName",
    "InvalidRequest",
    "InvalidState",
    "InvalidTaskId",
    "Lease",
    "LeaseContext",
    "LeaseLost",
    "MethodNotAllowed",
    "NewTask",
    "NotFound",
    "PayloadEdit",
    "PayloadInvalid",
    "PayloadTooLarge",
    "Queue",
    "QueueSchemas",
    "QueueNotEmpty",
    "QueueNotFound",
    "QueueSettings",
    "RequestTimeout",
    "Retry",
    "RouteNotFound",
    "SchemaVersion",
    "State",
    "Task",
    "TaskNotFound",
    "TaskPage",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "UnsupportedMediaType",
    "Worker",
    "run_workers",
]
