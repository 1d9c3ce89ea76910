"""The request/response core that ``Client`` and ``AsyncClient`` share.

It performs no I/O. Each API operation is a function that returns a ``Call``: the
HTTP request to make plus the function that turns the answer into Python values.
The two client faces only differ in how they send a ``Call`` (blocking or
awaiting) and how they sleep between retries; what is sent, how answers are
parsed, which failures are retried and how long to wait all live here.

Retries. A failure is retried when resending cannot change the outcome:

- the request never reached the server (connection refused, connect timeout),
- the server answered 503 ``unavailable`` (it applied nothing),
- the answer was lost after the request was sent (reset, read timeout) *and* the
  call is idempotent. Every enqueue is: it always carries an idempotency key, so
  a resent enqueue returns the task the first one created. Acks, extends, reads,
  ``PUT`` and ``DELETE`` are idempotent too. A lease whose answer was lost is
  resent as well: the tasks it leased come back when their leases expire.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Generator, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

from . import _json
from .errors import (
    ChergaError,
    ConnectionFailed,
    InvalidQueueName,
    InvalidTaskId,
    Unavailable,
    error_from_response,
)
from .types import BatchResult, NewTask, Queue, QueueSchemas, Task, TaskPage

T = TypeVar("T")

# Longest a lease request may wait on the server (the API's MAX_WAIT_MS).
MAX_WAIT_MS = 60_000


@dataclass(frozen=True)
class Answer:
    """What came back: status, headers (lower-case names) and decoded JSON."""

    status: int
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[Answer], T]
    json: Any = None
    params: dict[str, Any] | None = None
    # Safe to resend when the fate of an earlier try is unknown.
    idempotent: bool = True
    # Extra seconds on top of the client's timeout (long polls wait on purpose).
    extra_timeout: float = 0.0

    def result(self, answer: Answer) -> T:
        """The parsed answer, or the API error it carries, raised."""
        if answer.status >= 400:
            raise error_from_response(answer.status, answer.body, answer.headers)
        return self.parse(answer)


@dataclass
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter.

    ``attempts`` counts every try, the first included; ``attempts=1`` disables
    retries. The n-th retry waits a random time up to
    ``min(max_delay, initial_delay * 2**(n-1))`` seconds.
    """

    attempts: int = 5
    initial_delay: float = 0.1
    max_delay: float = 2.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, retry_number: int) -> float:
        ceiling = min(self.max_delay, self.initial_delay * (2 ** (retry_number - 1)))
        return self.rng.uniform(ceiling / 2, ceiling)

    def should_retry(self, call: Call[Any], error: BaseException, tries_so_far: int) -> bool:
        if tries_so_far >= self.attempts:
            return False
        if isinstance(error, NotSent):
            return True
        if isinstance(error, MaybeSent):
            return call.idempotent
        # A 503 means the server applied nothing. ConnectionFailed is ours, not an answer.
        return isinstance(error, Unavailable) and error.status == 503


class NotSent(Exception):
    """Transport failure before the request reached the server."""


class MaybeSent(Exception):
    """Transport failure after the request may have reached the server."""


# A program is a generator that does the work of an operation without doing
# any I/O: it yields a ``Call`` when a request must be sent (and is sent back
# the transport's ``Answer``, or the ``NotSent``/``MaybeSent`` it failed with)
# and a float when it must pause that many seconds, and returns its value. The
# sync and async shells (``Client.run``, ``AsyncClient.run``) only carry out
# those two steps, so every behaviour is written, and tested, once for both.
Step = Call[Any] | float
Program = Generator[Step, Any, T]


@dataclass(frozen=True)
class Done(Generic[T]):
    """A program's end: its value."""

    value: T


def advance(program: Program[T], outcome: Any) -> Step | Done[T]:
    """Sends ``outcome`` (``None`` to start, or after a pause) into
    ``program``: its next step, or ``Done`` with its value."""
    try:
        return program.send(outcome)
    except StopIteration as done:
        return Done(done.value)


class SyncShell(Protocol):
    """What carries out programs, blocking (``Client``)."""

    retry_policy: RetryPolicy

    def run(self, program: Program[T], pause: Callable[[float], object] = ...) -> T: ...


class AsyncShell(Protocol):
    """What carries out programs, awaiting (``AsyncClient``)."""

    retry_policy: RetryPolicy

    async def run(self, program: Program[T], pause: Callable[[float], Awaitable[object]] = ...) -> T: ...


def exchange(call: Call[T], policy: RetryPolicy) -> Program[T]:
    """The program of one API call, its retries included: it returns the
    parsed value, or raises the API error (``ConnectionFailed`` when no
    answer ever arrived). Other programs use it with ``yield from``."""
    tries = 0
    while True:
        tries += 1
        outcome = yield call
        try:
            if isinstance(outcome, Exception):
                raise outcome
            assert outcome is not None
            return call.result(outcome)
        except (NotSent, MaybeSent, Unavailable) as error:
            if not policy.should_retry(call, error, tries):
                if isinstance(error, ChergaError):
                    raise
                raise ConnectionFailed(f"no answer from cherga after {tries} tries: {error}") from error.__cause__
        yield policy.delay(tries)


def task_path(task_id: str) -> str:
    return f"/v1/tasks/{_segment(task_id, InvalidTaskId, 'task id')}"


def queue_path(queue: str) -> str:
    return f"/v1/queues/{_segment(queue, InvalidQueueName, 'queue name')}"


def _segment(value: str, error: type[ChergaError], what: str) -> str:
    """``value`` as exactly one path segment, whatever it holds (``/`` and
    ``?`` are percent-encoded). An empty segment, ``.`` and ``..`` cannot be
    sent as one (an empty segment names another route, and a URL's ``.`` and
    ``..`` segments are resolved away: ``/v1/tasks/..`` is ``/v1``); none of
    them is a queue name or a task id, so they are refused before anything is
    sent, with the error the server answers for them (``status`` ``None``)."""
    if not value:
        raise error(f"the {what} is empty", status=None)
    if value in (".", ".."):
        raise error(f"{value!r} is not a {what}: a URL path resolves '.' and '..' away", status=None)
    return quote(value, safe="")


def task_and_lease(task: Task | str, lease: str | None) -> tuple[str, str]:
    """The task id and lease token of ``task`` (a leased ``Task``, or an id with
    an explicit ``lease``)."""
    if isinstance(task, Task):
        token = lease or (task.lease.token if task.lease else None)
        if token is None:
            raise ValueError(f"task {task.id} carries no lease; pass lease=")
        return task.id, token
    if lease is None:
        raise ValueError("pass lease= with a task id")
    return task, lease


def _task(answer: Answer) -> Task:
    return Task.from_wire(answer.body, replayed=answer.headers.get("idempotent-replayed") == "true")


def _tasks(answer: Answer) -> list[Task]:
    return [Task.from_wire(t) for t in answer.body["tasks"]]


def _batch(answer: Answer) -> list[BatchResult]:
    return _items(answer.body["results"])


def _tasks_and_acks(answer: Answer) -> tuple[list[Task], list[BatchResult]]:
    return _tasks(answer), _items(answer.body["acks"])


def _items(items: list[Any]) -> list[BatchResult]:
    out = []
    for item in items:
        status = item["status"]
        if item.get("error") is not None:
            out.append(BatchResult(status, error=error_from_response(status, {"error": item["error"]})))
        else:
            out.append(BatchResult(status, task=Task.from_wire(item["task"], replayed=status == 200)))
    return out


# -- operations -------------------------------------------------------------


# Each operation's docstring is the client method's: ``Client.enqueue`` is
# ``enqueue`` here, sent (see ``cherga.client``).


def enqueue(
    queue: str,
    kind: str,
    payload: Any = None,
    *,
    key: str | None = None,
    priority: int = 0,
    run_at: datetime | int | None = None,
    delay_ms: int | None = None,
    group: str | None = None,
    max_attempts: int | None = None,
) -> Call[Task]:
    """Enqueue one task; returns the ``Task`` (``task.replayed`` is true when
    ``key`` matched an existing task and nothing was created).

    Without ``key`` a uuid4 key is generated, which makes the client's own
    retries safe; pass a key derived from your operation to make *your*
    retries safe as well. Raises ``IdempotencyKeyReused`` when ``key`` was
    used for a different request.
    """
    new = NewTask(kind, payload, key, priority, run_at, delay_ms, group, max_attempts)
    return Call("POST", f"{queue_path(queue)}/tasks", _task, json=new.to_wire())


def enqueue_many(queue: str, tasks: Iterable[NewTask]) -> Call[list[BatchResult]]:
    """Enqueue many tasks in one request; one ``BatchResult`` per item, in order."""
    body = {"tasks": [t.to_wire() for t in tasks]}
    return Call("POST", f"{queue_path(queue)}/tasks/batch", _batch, json=body)


def lease_tasks(
    queue: str, *, max: int = 1, wait_ms: int = 0, lease_ms: int | None = None, worker: str | None = None
) -> Call[list[Task]]:
    """Lease up to ``max`` tasks, waiting up to ``wait_ms`` (at most 60 s) for
    one to arrive. Each returned task carries its ``lease``. Prefer
    ``lease()``, ``consume()`` or a ``Worker``, which also ack and heartbeat."""
    body, wait_ms = _lease_body(max, wait_ms, lease_ms, worker)
    return Call("POST", f"{queue_path(queue)}/lease", _tasks, json=body, extra_timeout=wait_ms / 1000)


def lease_and_ack(
    queue: str,
    acks: Iterable[tuple[Task, Any]],
    *,
    max: int = 1,
    wait_ms: int = 0,
    lease_ms: int | None = None,
    worker: str | None = None,
) -> Call[tuple[list[Task], list[BatchResult]]]:
    """``lease_tasks`` that also acks earlier tasks, ``[(task, result), ...]``,
    in the same commit (one round trip): → ``(tasks, [BatchResult per ack])``.
    The acks are stored before the lease waits."""
    body, wait_ms = _lease_body(max, wait_ms, lease_ms, worker)
    body["acks"] = _ack_items(acks)
    return Call("POST", f"{queue_path(queue)}/lease", _tasks_and_acks, json=body, extra_timeout=wait_ms / 1000)


def _lease_body(max: int, wait_ms: int, lease_ms: int | None, worker: str | None) -> tuple[dict[str, Any], int]:
    wait_ms = 0 if wait_ms < 0 else min(int(wait_ms), MAX_WAIT_MS)
    body: dict[str, Any] = {"max": max, "wait_ms": wait_ms}
    if lease_ms is not None:
        body["lease_ms"] = lease_ms
    if worker is not None:
        body["worker"] = worker
    return body, wait_ms


def ack(task: Task | str, result: Any = None, *, lease: str | None = None) -> Call[Task]:
    """Mark a leased task succeeded with ``result``. Sending the same ack twice
    succeeds twice; a stale lease raises ``LeaseLost``."""
    task_id, token = task_and_lease(task, lease)
    return Call("POST", f"{task_path(task_id)}/ack", _task, json={"lease": token, "result": result})


def ack_many(items: Iterable[tuple[Task, Any]]) -> Call[list[BatchResult]]:
    """Ack many leased tasks: ``[(task, result), ...]`` → one ``BatchResult`` each."""
    return Call("POST", "/v1/tasks/ack", _batch, json={"acks": _ack_items(items)})


def _ack_items(items: Iterable[tuple[Task, Any]]) -> list[dict[str, Any]]:
    acks = []
    for task, result in items:
        task_id, token = task_and_lease(task, None)
        acks.append({"id": task_id, "lease": token, "result": result})
    return acks


def nack(
    task: Task | str,
    error: str | None = None,
    *,
    retry_in_ms: int | None = None,
    dead: bool = False,
    lease: str | None = None,
) -> Call[Task]:
    """Report a failure: the task is retried after the queue's backoff (or
    ``retry_in_ms``), or becomes dead (``dead=True`` or out of attempts)."""
    task_id, token = task_and_lease(task, lease)
    body: dict[str, Any] = {"lease": token, "dead": dead}
    if error is not None:
        body["error"] = error
    if retry_in_ms is not None:
        body["retry_in_ms"] = retry_in_ms
    return Call("POST", f"{task_path(task_id)}/nack", _task, json=body)


def extend(task: Task | str, lease_ms: int | None = None, *, lease: str | None = None) -> Call[Task]:
    """Heartbeat: the lease now expires ``lease_ms`` (default: the queue's
    lease) from now."""
    task_id, token = task_and_lease(task, lease)
    body: dict[str, Any] = {"lease": token}
    if lease_ms is not None:
        body["lease_ms"] = lease_ms
    return Call("POST", f"{task_path(task_id)}/extend", _task, json=body)


def get_task(task_id: str) -> Call[Task]:
    """The task with its state and result; ``TaskNotFound`` if unknown."""
    return Call("GET", task_path(task_id), _task)


def cancel(task_id: str) -> Call[Task]:
    """Cancel a scheduled or ready task (idempotent)."""
    return Call("DELETE", task_path(task_id), _task)


# `retry`'s payload left out, told apart from ``None`` (a JSON null payload).
_NO_PAYLOAD: Any = object()


def retry(task_id: str, *, payload: Any = _NO_PAYLOAD) -> Call[Task]:
    """Send a dead task back to ready; with ``payload`` (``None`` too: JSON
    null), in place of its payload. The task's history records the edit
    (``Attempt.payload_edit``: when, and the token's subject)."""
    body = None if payload is _NO_PAYLOAD else {"payload": payload}
    # Not idempotent: a resend after the first one worked finds a ready task and
    # is refused with invalid_state.
    return Call("POST", f"{task_path(task_id)}/retry", _task, json=body, idempotent=False)


def list_tasks(
    queue: str,
    *,
    state: str | None = None,
    limit: int | None = None,
    after: str | None = None,
    kind: str | None = None,
    group: str | None = None,
    key: str | None = None,
) -> Call[TaskPage]:
    """A ``TaskPage`` of the queue's tasks, oldest first: only those of ``state``,
    ``kind`` and ``group`` when given, or the task holding idempotency ``key``."""
    given = (("state", state), ("limit", limit), ("after", after), ("kind", kind), ("group", group), ("key", key))
    params = {k: v for k, v in given if v is not None}
    return Call(
        "GET",
        f"{queue_path(queue)}/tasks",
        lambda a: TaskPage(_tasks(a), a.body.get("next")),
        params=params,
    )


def get_queue(queue: str) -> Call[Queue]:
    """The queue's settings and counts per state (``QueueNotFound`` if none)."""
    return Call("GET", queue_path(queue), lambda a: Queue.from_wire(a.body))


def list_queues() -> Call[list[Queue]]:
    """Every queue, with its settings and counts."""
    return Call("GET", "/v1/queues", lambda a: [Queue.from_wire(q) for q in a.body["queues"]])


UNSET: Any = object()


def configure_queue(
    queue: str,
    *,
    max_attempts: int | None = None,
    lease_ms: int | None = None,
    backoff: dict[str, Any] | None = None,
    concurrency: int | None = UNSET,
    paused: bool | None = None,
    retention_ms: int | None = None,
    dedup_window_ms: int | None = None,
) -> Call[Queue]:
    """Change queue settings (``PUT``, idempotent); settings not given are
    kept. ``concurrency=None`` removes the limit. ``backoff`` is a dict of
    ``initial_ms``, ``max_ms``, ``multiplier``, ``jitter``."""
    body: dict[str, Any] = {}
    for name, value in (
        ("max_attempts", max_attempts),
        ("lease_ms", lease_ms),
        ("backoff", backoff),
        ("paused", paused),
        ("retention_ms", retention_ms),
        ("dedup_window_ms", dedup_window_ms),
    ):
        if value is not None:
            body[name] = value
    # None is meaningful here: it removes the limit.
    if concurrency is not UNSET:
        body["concurrency"] = concurrency
    return Call("PUT", queue_path(queue), lambda a: Queue.from_wire(a.body), json=body)


def set_schema(queue: str, schema: Any, *, kind: str | None = None) -> Call[QueueSchemas]:
    """Set the queue's JSON Schema (draft 2020-12) for ``kind``, or for every kind
    without its own; every later enqueue is checked against it
    (``PayloadInvalid``). A new version each time: not resent on its own."""
    body: dict[str, Any] = {"schema": schema}
    if kind is not None:
        body["kind"] = kind
    return Call(
        "PUT", f"{queue_path(queue)}/schema", lambda a: QueueSchemas.from_wire(a.body), json=body, idempotent=False
    )


def get_schema(queue: str) -> Call[QueueSchemas]:
    """The queue's payload schemas in force and their history."""
    return Call("GET", f"{queue_path(queue)}/schema", lambda a: QueueSchemas.from_wire(a.body))


def delete_schema(queue: str, *, kind: str | None = None) -> Call[QueueSchemas]:
    """Remove the queue's schema for ``kind`` (or the queue-wide one)."""
    params = {"kind": kind} if kind is not None else None
    return Call("DELETE", f"{queue_path(queue)}/schema", lambda a: QueueSchemas.from_wire(a.body), params=params)


def health() -> Call[bool]:
    """True when the server answers its liveness check."""
    return Call("GET", "/healthz", lambda a: a.body.get("status") == "ok")


def decode(status: int, headers: dict[str, str], content: bytes) -> Answer:
    """An ``Answer`` from raw bytes; a body that is not JSON decodes to ``None``
    (errors then map by status alone)."""
    try:
        # Survives JSON nested too deeply for Python (see _json).
        body = _json.loads(content) if content else None
    except ValueError:
        body = None
    if status < 400 and body is None:
        raise ChergaError(f"HTTP {status} with a body that is not JSON", code="invalid_response", status=status)
    return Answer(status, headers, body)
