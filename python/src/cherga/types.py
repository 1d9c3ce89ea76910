"""Dataclasses for what the API sends and receives.

They are plain data: parsing from the wire (``from_wire``) and building request
bodies (``to_wire``) live here so both client faces share them. Times are
timezone-aware ``datetime`` objects in UTC; durations are integer milliseconds,
named ``*_ms`` exactly as on the wire.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import _json


class State(enum.StrEnum):
    """Task states. A ``StrEnum``, so ``task.state == "ready"`` works too."""

    SCHEDULED = "scheduled"  # waiting for run_at (first run or retry backoff)
    READY = "ready"  # may be leased now
    RUNNING = "running"  # leased by a worker
    SUCCEEDED = "succeeded"  # acked; result stored
    DEAD = "dead"  # out of attempts, or nacked as dead; retry by hand
    CANCELLED = "cancelled"  # cancelled while scheduled or ready

    @property
    def finished(self) -> bool:
        return self in (State.SUCCEEDED, State.DEAD, State.CANCELLED)


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time from the wire (``2026-11-28T04:35:00.123Z``)."""
    if text is None:
        return None
    return datetime.fromisoformat(text)


def time_to_wire(value: datetime | int) -> int:
    """A time for a request: milliseconds since the epoch. Naive datetimes are
    taken as UTC."""
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _state(text: str) -> State | str:
    try:
        return State(text)
    except ValueError:  # a state added by a newer server
        return text


@dataclass
class Lease:
    """The lease a worker holds: present ``token`` to ack, nack or extend."""

    token: str
    expires_at: datetime

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Lease:
        expires_at = parse_time(data["expires_at"])
        assert expires_at is not None
        return cls(token=data["token"], expires_at=expires_at)


class AttemptOutcome(enum.StrEnum):
    """How one attempt (one delivery) of a task ended."""

    RUNNING = "running"  # leased now
    SUCCEEDED = "succeeded"  # acked
    FAILED = "failed"  # nacked (its error is the nack's)
    EXPIRED = "expired"  # the lease ran out before an ack or a nack


@dataclass
class PayloadEdit:
    """A task's payload replaced by a retry: when, and by whom (the subject of
    the token; ``None`` with auth off)."""

    at: datetime
    by: str | None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> PayloadEdit:
        at = parse_time(data["at"])
        assert at is not None
        return cls(at=at, by=data.get("by"))


@dataclass
class Attempt:
    """One attempt of a task, as ``Task.history`` lists them, oldest first."""

    attempt: int  # 1 for the first delivery
    worker: str | None  # the name the worker leased it with
    started_at: datetime
    finished_at: datetime | None  # None while running
    outcome: AttemptOutcome | str  # a str for an outcome added by a newer server
    error: str | None = None
    # Set when the payload was replaced after this attempt (the attempts after
    # it ran with the new one).
    payload_edit: PayloadEdit | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Attempt:
        started_at = parse_time(data["started_at"])
        assert started_at is not None
        try:
            outcome: AttemptOutcome | str = AttemptOutcome(data["outcome"])
        except ValueError:
            outcome = data["outcome"]
        return cls(
            attempt=data["attempt"],
            worker=data.get("worker"),
            started_at=started_at,
            finished_at=parse_time(data.get("finished_at")),
            outcome=outcome,
            error=data.get("error"),
            payload_edit=PayloadEdit.from_wire(data["payload_edit"]) if data.get("payload_edit") else None,
        )


@dataclass
class Task:
    """A task as the API shows it.

    ``lease`` is set only on tasks handed out by a lease request. ``replayed`` is
    true when an enqueue matched an existing idempotency key and created nothing.
    Inside ``client.lease()``/``client.consume()`` assign ``result`` to ack the
    task with that result.

    ``history`` lists the task's attempts, oldest first, when the server
    sends them (``GET /v1/tasks/{id}`` on a server that keeps them); empty
    otherwise.

    ``decode_error`` is set when the ``payload`` or ``result`` is JSON nested
    too deeply for Python to decode: that field is ``None`` here, and workers
    and the lease helpers nack the task (with this reason) instead of running it.
    """

    id: str
    queue: str
    kind: str
    payload: Any
    priority: int
    run_at: datetime
    idempotency_key: str | None
    group: str | None
    max_attempts: int
    attempts: int
    state: State | str
    result: Any
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    lease_expires_at: datetime | None = None
    worker: str | None = None
    lease: Lease | None = None
    replayed: bool = False
    history: list[Attempt] = field(default_factory=list)
    decode_error: str | None = None

    @classmethod
    def from_wire(cls, data: dict[str, Any], *, replayed: bool = False) -> Task:
        lease = data.get("lease")
        return cls(
            id=data["id"],
            queue=data["queue"],
            kind=data["kind"],
            payload=data.get("payload"),
            priority=data["priority"],
            run_at=parse_time(data["run_at"]),  # type: ignore[arg-type]
            idempotency_key=data.get("idempotency_key"),
            group=data.get("group"),
            max_attempts=data["max_attempts"],
            attempts=data["attempts"],
            state=_state(data["state"]),
            result=data.get("result"),
            last_error=data.get("last_error"),
            created_at=parse_time(data["created_at"]),  # type: ignore[arg-type]
            updated_at=parse_time(data["updated_at"]),  # type: ignore[arg-type]
            finished_at=parse_time(data.get("finished_at")),
            lease_expires_at=parse_time(data.get("lease_expires_at")),
            worker=data.get("worker"),
            lease=Lease.from_wire(lease) if lease else None,
            replayed=replayed,
            history=[Attempt.from_wire(a) for a in data.get("history") or ()],
            decode_error=_json.decode_error(data),
        )

    @property
    def finished(self) -> bool:
        return self.state in (State.SUCCEEDED, State.DEAD, State.CANCELLED)

    @property
    def last_attempt(self) -> bool:
        """True when a failure of this delivery makes the task dead."""
        return self.attempts >= self.max_attempts


@dataclass
class NewTask:
    """One task to enqueue (an item of ``enqueue_many``).

    ``key`` is the idempotency key. When it is ``None`` the client generates a
    uuid4 key, so that its own retries of this request cannot create the task
    twice; pass your own key (derived from the business operation, e.g.
    ``f"order-{order.id}-pay"``) to deduplicate *your* retries too.
    """

    kind: str
    payload: Any = None
    key: str | None = None
    priority: int = 0
    run_at: datetime | int | None = None
    delay_ms: int | None = None
    group: str | None = None
    max_attempts: int | None = None

    def to_wire(self) -> dict[str, Any]:
        """The request body. Generates the idempotency key when none is set, so
        call it once per logical request and resend the same body on retry."""
        body: dict[str, Any] = {
            "kind": self.kind,
            "payload": self.payload,
            "idempotency_key": self.key if self.key is not None else str(uuid.uuid4()),
        }
        if self.priority:
            body["priority"] = self.priority
        if self.run_at is not None:
            body["run_at"] = time_to_wire(self.run_at)
        if self.delay_ms is not None:
            body["delay_ms"] = self.delay_ms
        if self.group is not None:
            body["group"] = self.group
        if self.max_attempts is not None:
            body["max_attempts"] = self.max_attempts
        return body


@dataclass
class TaskPage:
    """A page of ``list_tasks``; pass ``next`` as ``after`` for the next page
    (``None`` on the last page)."""

    tasks: list[Task]
    next: str | None


@dataclass
class BatchResult:
    """One item of a batch answer: the task, or the error for that item."""

    status: int
    task: Task | None = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Backoff:
    initial_ms: int
    max_ms: int
    multiplier: float
    jitter: float


@dataclass
class QueueSettings:
    max_attempts: int
    lease_ms: int
    backoff: Backoff
    concurrency: int | None
    paused: bool
    retention_ms: int
    dedup_window_ms: int

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> QueueSettings:
        return cls(
            max_attempts=data["max_attempts"],
            lease_ms=data["lease_ms"],
            backoff=Backoff(**data["backoff"]),
            concurrency=data.get("concurrency"),
            paused=data["paused"],
            retention_ms=data["retention_ms"],
            dedup_window_ms=data["dedup_window_ms"],
        )


@dataclass
class Counts:
    scheduled: int = 0
    ready: int = 0
    running: int = 0
    succeeded: int = 0
    dead: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.scheduled + self.ready + self.running + self.succeeded + self.dead + self.cancelled


@dataclass
class Queue:
    name: str
    settings: QueueSettings
    counts: Counts = field(default_factory=Counts)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Queue:
        known = {k: v for k, v in data.get("counts", {}).items() if k in Counts.__dataclass_fields__}
        return cls(
            name=data["name"],
            settings=QueueSettings.from_wire(data["settings"]),
            counts=Counts(**known),
        )


@dataclass
class SchemaVersion:
    """One version of a queue's payload schemas: ``schema`` for ``kind`` (``None``:
    every kind without its own), or ``schema=None`` where a version removed one."""

    version: int
    kind: str | None
    schema: Any
    subject: str | None
    created_at: datetime

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> SchemaVersion:
        created_at = parse_time(data["created_at"])
        assert created_at is not None
        return cls(
            version=data["version"],
            kind=data.get("kind"),
            schema=data.get("schema"),
            subject=data.get("subject"),
            created_at=created_at,
        )


@dataclass
class QueueSchemas:
    """A queue's payload schemas: those in force and every version, oldest first
    (``version`` 0: the queue never had one)."""

    queue: str
    version: int
    current: list[SchemaVersion]
    history: list[SchemaVersion]

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> QueueSchemas:
        return cls(
            queue=data["queue"],
            version=data["version"],
            current=[SchemaVersion.from_wire(v) for v in data.get("current", [])],
            history=[SchemaVersion.from_wire(v) for v in data.get("history", [])],
        )
