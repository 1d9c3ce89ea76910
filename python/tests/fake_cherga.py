"""An in-memory stand-in for cherga's task API, served to a client through
``httpx.MockTransport``: enqueue, lease (with acks), ack, nack, extend, get
and list, answered in the JSON shapes cherga uses
(``test_the_fake_answers_in_the_shapes_cherga_does`` compares them with the
real server's).

It keeps every payload and result as JSON text and writes it into its answers
as is, so it can hand a client what a real server now refuses to store: JSON
nested deeper than Python's parser goes (a task stored by an older version, or
sent by any server that does not limit the depth). It records every request
it gets (``requests``), so a test can check what the client sent back.

Not modelled: auth, queue settings, backoff (a nacked task with attempts left
is ready again at once, or after ``retry_in_ms``), lease expiry, idempotency
windows, priorities and groups.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import httpx

DEFAULT_LEASE_MS = 30_000


def wire_time(value: datetime) -> str:
    """A time as cherga writes it: RFC 3339, milliseconds, ``Z``."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class FakeTask:
    id: str
    queue: str
    kind: str
    payload: str  # JSON text, written into answers as is
    max_attempts: int
    key: str
    created_at: datetime
    priority: int = 0
    group: str | None = None
    run_at: datetime = field(default_factory=now)
    attempts: int = 0
    state: str = "ready"
    result: str | None = None  # JSON text
    last_error: str | None = None
    updated_at: datetime = field(default_factory=now)
    finished_at: datetime | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # finished attempts
    token: str | None = None
    leased_at: datetime | None = None
    lease_expires_at: datetime | None = None
    worker: str | None = None

    def leasable(self, at: datetime) -> bool:
        return self.state in ("ready", "scheduled") and self.run_at <= at

    def end_attempt(self, outcome: str, error: str | None, at: datetime) -> None:
        assert self.leased_at is not None
        self.history.append(
            {
                "attempt": self.attempts,
                "worker": self.worker,
                "started_at": wire_time(self.leased_at),
                "finished_at": wire_time(at),
                "outcome": outcome,
                "error": error,
            }
        )
        self.token = self.leased_at = self.lease_expires_at = self.worker = None
        self.updated_at = at

    def to_json(self, *, leased: bool = False) -> str:
        """The task as cherga shows it (``TaskView``); ``leased`` adds the
        lease the worker that just leased it holds."""
        history = list(self.history)
        running = self.state == "running"
        if running:
            assert self.leased_at is not None
            history.append(
                {
                    "attempt": self.attempts,
                    "worker": self.worker,
                    "started_at": wire_time(self.leased_at),
                    "finished_at": None,
                    "outcome": "running",
                    "error": None,
                }
            )
        fields: list[tuple[str, str]] = [
            ("id", json.dumps(self.id)),
            ("queue", json.dumps(self.queue)),
            ("kind", json.dumps(self.kind)),
            ("payload", self.payload),
            ("priority", json.dumps(self.priority)),
            ("run_at", json.dumps(wire_time(self.run_at))),
            ("idempotency_key", json.dumps(self.key)),
            ("group", json.dumps(self.group)),
            ("max_attempts", json.dumps(self.max_attempts)),
            ("attempts", json.dumps(self.attempts)),
            ("state", json.dumps(self.state)),
            ("result", self.result if self.result is not None else "null"),
            ("last_error", json.dumps(self.last_error)),
            ("created_at", json.dumps(wire_time(self.created_at))),
            ("updated_at", json.dumps(wire_time(self.updated_at))),
            ("finished_at", json.dumps(wire_time(self.finished_at) if self.finished_at else None)),
            ("history", json.dumps(history)),
        ]
        if running:
            assert self.lease_expires_at is not None
            fields.append(("lease_expires_at", json.dumps(wire_time(self.lease_expires_at))))
            if self.worker is not None:
                fields.append(("worker", json.dumps(self.worker)))
            if leased:
                lease = {"token": self.token, "expires_at": wire_time(self.lease_expires_at)}
                fields.append(("lease", json.dumps(lease)))
        return "{" + ",".join(f'"{name}":{value}' for name, value in fields) + "}"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Request:
    """A request the fake received: method, path and JSON body (``None``
    when it had none)."""

    method: str
    path: str
    body: Any


class FakeCherga:
    """See the module documentation. ``transport()`` serves a ``Client``,
    ``async_transport()`` an ``AsyncClient``."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._tasks: dict[str, FakeTask] = {}  # in enqueue order
        self._tokens: dict[str, list[str]] = {}  # every lease token handed out, by task id
        self.requests: list[Request] = []

    # -- for tests -------------------------------------------------------------

    def store(self, queue: str, kind: str, payload_json: str, *, max_attempts: int = 1) -> str:
        """Adds a ready task whose payload is the JSON text given, as if an
        earlier version of the server had stored it; returns its id."""
        with self._lock:
            task = self._new_task(queue, kind, payload_json, max_attempts, key=str(uuid.uuid4()))
            self._lock.notify_all()
            return task.id

    def store_result(self, task_id: str, result_json: str) -> None:
        """Marks a task succeeded with the result given as JSON text."""
        with self._lock:
            task = self._tasks[task_id]
            task.state, task.result, task.finished_at = "succeeded", result_json, now()

    def requests_to(self, suffix: str, *, after: Request | None = None) -> list[Request]:
        """The requests received whose path ends with ``suffix`` (``/nack``),
        only those after the request ``after`` when it is given."""
        with self._lock:
            start = 0 if after is None else next(i for i, r in enumerate(self.requests) if r is after) + 1
            return [r for r in self.requests[start:] if r.path.endswith(suffix)]

    def state(self, task_id: str) -> str:
        with self._lock:
            return self._task(task_id).state

    def lease_tokens(self) -> dict[str, list[str]]:
        """Every lease token handed out, by task id."""
        with self._lock:
            return {task_id: list(tokens) for task_id, tokens in self._tokens.items()}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def async_transport(self) -> httpx.MockTransport:
        # A long poll blocks a thread, never the event loop.
        async def handle(request: httpx.Request) -> httpx.Response:
            return await asyncio.to_thread(self.handle, request)

        return httpx.MockTransport(handle)

    # -- the API ---------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else None
        with self._lock:
            self.requests.append(Request(request.method, path, body))
        segments = [unquote(s) for s in request.url.raw_path.decode().split("?")[0].split("/")[1:]]
        try:
            status, text, headers = self._route(request.method, segments, body or {}, dict(request.url.params))
        except ApiError as error:
            status, headers = error.status, {}
            text = json.dumps({"error": {"code": error.code, "message": error.message}})
        return httpx.Response(status, content=text.encode(), headers={"content-type": "application/json", **headers})

    def _route(
        self, method: str, segments: list[str], body: dict[str, Any], params: dict[str, str]
    ) -> tuple[int, str, dict[str, str]]:
        match method, segments:
            case "POST", ["v1", "queues", queue, "tasks"]:
                return self._enqueue(queue, body)
            case "POST", ["v1", "queues", queue, "lease"]:
                return 200, self._lease(queue, body), {}
            case "GET", ["v1", "queues", queue, "tasks"]:
                return 200, self._list(queue, params), {}
            case "GET", ["v1", "tasks", task_id]:
                with self._lock:
                    return 200, self._task(task_id).to_json(), {}
            case "POST", ["v1", "tasks", task_id, "ack"]:
                with self._lock:
                    return 200, self._ack(task_id, body["lease"], body.get("result")).to_json(), {}
            case "POST", ["v1", "tasks", task_id, "nack"]:
                return 200, self._nack(task_id, body), {}
            case "POST", ["v1", "tasks", task_id, "extend"]:
                return 200, self._extend(task_id, body), {}
        raise ApiError(404, "route_not_found", f"no route for {method} /{'/'.join(segments)}")

    def _new_task(self, queue: str, kind: str, payload: str, max_attempts: int, key: str) -> FakeTask:
        at = now()
        task = FakeTask(
            id=str(uuid.uuid4()),
            queue=queue,
            kind=kind,
            payload=payload,
            max_attempts=max_attempts,
            key=key,
            created_at=at,
            run_at=at,
            updated_at=at,
        )
        self._tasks[task.id] = task
        return task

    def _enqueue(self, queue: str, body: dict[str, Any]) -> tuple[int, str, dict[str, str]]:
        with self._lock:
            key = body.get("idempotency_key") or str(uuid.uuid4())
            for task in self._tasks.values():
                if task.queue == queue and task.key == key:
                    return 200, task.to_json(), {"idempotent-replayed": "true"}
            payload = json.dumps(body.get("payload"))
            task = self._new_task(queue, body["kind"], payload, body.get("max_attempts") or 25, key)
            task.priority = body.get("priority", 0)
            task.group = body.get("group")
            self._lock.notify_all()
            return 201, task.to_json(), {}

    def _lease(self, queue: str, body: dict[str, Any]) -> str:
        deadline = time.monotonic() + body.get("wait_ms", 0) / 1000
        with self._lock:
            acks = [self._ack_item(item) for item in body.get("acks") or ()]
            while True:
                at = now()
                # cherga's order: priority, then run_at, then enqueue order.
                ready = sorted(
                    (t for t in self._tasks.values() if t.queue == queue and t.leasable(at)),
                    key=lambda t: (-t.priority, t.run_at),
                )
                left = deadline - time.monotonic()
                if ready or left <= 0:
                    break
                # Woken by an enqueue; a nacked task's retry time passes unseen,
                # so look again now and then.
                self._lock.wait(min(left, 0.05))
            leased = []
            for task in ready[: body.get("max", 1)]:
                task.attempts += 1
                task.state = "running"
                task.token = uuid.uuid4().hex
                task.leased_at = task.updated_at = at
                task.lease_expires_at = at + timedelta(milliseconds=body.get("lease_ms") or DEFAULT_LEASE_MS)
                task.worker = body.get("worker")
                self._tokens.setdefault(task.id, []).append(task.token)
                leased.append(task.to_json(leased=True))
            answer = '{"tasks":[' + ",".join(leased) + "]"
            if "acks" in body:
                answer += ',"acks":[' + ",".join(acks) + "]"
            return answer + "}"

    def _ack_item(self, item: dict[str, Any]) -> str:
        try:
            task = self._ack(item["id"], item["lease"], item.get("result"))
        except ApiError as error:
            failure = {"status": error.status, "error": {"code": error.code, "message": error.message}}
            return json.dumps(failure)
        return '{"status":200,"task":' + task.to_json() + "}"

    def _task(self, task_id: str) -> FakeTask:
        task = self._tasks.get(task_id)
        if task is None:
            raise ApiError(404, "task_not_found", f"no task {task_id}")
        return task

    def _leased(self, task_id: str, token: str) -> FakeTask:
        task = self._task(task_id)
        if task.state != "running" or task.token != token:
            raise ApiError(409, "lease_lost", f"the lease of task {task_id} is not the one given")
        return task

    def _ack(self, task_id: str, token: str, result: Any) -> FakeTask:
        task = self._task(task_id)
        if task.state == "succeeded" and token in self._tokens.get(task_id, [])[-1:]:
            return task  # the same ack again
        task = self._leased(task_id, token)
        at = now()
        task.end_attempt("succeeded", None, at)
        task.state, task.result, task.finished_at = "succeeded", json.dumps(result), at
        return task

    def _nack(self, task_id: str, body: dict[str, Any]) -> str:
        with self._lock:
            task = self._leased(task_id, body["lease"])
            at = now()
            error = body.get("error")
            task.end_attempt("failed", error, at)
            task.last_error = error
            if body.get("dead") or task.attempts >= task.max_attempts:
                task.state, task.finished_at = "dead", at
            else:
                task.state = "scheduled"
                task.run_at = at + timedelta(milliseconds=body.get("retry_in_ms") or 0)
            self._lock.notify_all()
            return task.to_json()

    def _extend(self, task_id: str, body: dict[str, Any]) -> str:
        with self._lock:
            task = self._leased(task_id, body["lease"])
            task.lease_expires_at = now() + timedelta(milliseconds=body.get("lease_ms") or DEFAULT_LEASE_MS)
            return task.to_json()

    def _list(self, queue: str, params: dict[str, str]) -> str:
        with self._lock:
            tasks = [t for t in self._tasks.values() if t.queue == queue]
            if "state" in params:
                tasks = [t for t in tasks if t.state == params["state"]]
            return '{"tasks":[' + ",".join(t.to_json() for t in tasks) + '],"next":null}'
