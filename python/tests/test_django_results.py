"""How the Django backend turns a cherga task into a ``TaskResult``, checked on
hand-made tasks (no server): times from two clocks, and the attempt history."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.tasks import TaskResult, TaskResultStatus, task_backends

from cherga import Attempt, AttemptOutcome, Task
from cherga.django.backend import RemoteTaskError, summarize_history

REMOTE = f"{RemoteTaskError.__module__}.{RemoteTaskError.__qualname__}"


def cherga_task(**changes: Any) -> Task:
    """A task of ``tests.djapp.tasks.add`` enqueued through the "direct"
    backend, as the server sends it, with ``changes`` applied."""
    wire: dict[str, Any] = {
        "id": "01a2207e-84c1-7bf8-8000-000000000001",
        "queue": "q",
        "kind": "tests.djapp.tasks.add",
        "payload": {
            "django_task": 1,
            "func": "tests.djapp.tasks.add",
            "args": [1, 2],
            "kwargs": {},
            "run_after": None,
            "backend": "direct",
        },
        "priority": 0,
        "run_at": "2026-11-28T04:51:32.100Z",
        "idempotency_key": "x",
        "group": None,
        "max_attempts": 25,
        "attempts": 1,
        "state": "succeeded",
        "result": None,
        "last_error": None,
        "created_at": "2026-11-28T04:51:32.100Z",
        "updated_at": "2026-11-28T04:51:32.123Z",
        "finished_at": "2026-11-28T04:51:32.123Z",
    }
    wire.update(changes)
    return Task.from_wire(wire)


def result_of(task: Task) -> TaskResult:
    return task_backends["direct"]._result_from_task(task, task.id)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def check_in_order(result: TaskResult) -> None:
    times = [result.enqueued_at, result.started_at, result.last_attempted_at, result.finished_at]
    present = [t for t in times if t is not None]
    assert present == sorted(present), times


def test_finished_at_is_never_before_started_at() -> None:
    # The worker started at .123456 (its clock, in µs); the server stored the
    # ack at .123 (its clock, in ms): read naively, it finished before it began.
    report = {
        "return_value": 3,
        "started_at": "2026-11-28T04:51:32.123456+00:00",
        "finished_at": "2026-11-28T04:51:32.123900+00:00",
        "worker_id": "w1",
    }
    done = result_of(cherga_task(result=report))
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 3
    assert done.finished_at >= done.started_at
    assert done.started_at == at(report["started_at"]) and done.finished_at == at(report["finished_at"])
    check_in_order(done)

    # A worker whose clock runs behind the server's: still in order.
    behind = {**report, "started_at": "2026-11-28T04:51:31.000000+00:00", "finished_at": None}
    done = result_of(cherga_task(result=behind))
    check_in_order(done)
    assert done.finished_at is not None and done.finished_at >= done.started_at

    # A failure the worker reported as it died of its last attempt.
    failure = {
        "exception_class_path": "builtins.ValueError",
        "traceback": "Traceback ...\nValueError: no",
        "started_at": "2026-11-28T04:51:32.123700+00:00",
        "finished_at": "2026-11-28T04:51:32.123800+00:00",
        "worker_id": "w1",
    }
    dead = result_of(cherga_task(state="dead", last_error=json.dumps(failure)))
    assert dead.status == TaskResultStatus.FAILED
    assert dead.finished_at >= dead.started_at
    check_in_order(dead)


def attempt(n: int, outcome: str, start: str, end: str | None, error: str | None = None, worker: str | None = "w1"):
    return {"attempt": n, "worker": worker, "started_at": start, "finished_at": end, "outcome": outcome, "error": error}


DJANGO_FAILURE = json.dumps(
    {"exception_class_path": "builtins.ValueError", "traceback": "Traceback ...\nValueError: declined"}
)

HISTORY = [
    attempt(1, "failed", "2026-11-28T04:51:33.000Z", "2026-11-28T04:51:33.500Z", DJANGO_FAILURE),
    attempt(2, "expired", "2026-11-28T04:51:40.000Z", "2026-11-28T04:52:10.000Z", "lease expired", worker=None),
    attempt(3, "failed", "2026-11-28T04:52:20.000Z", "2026-11-28T04:52:20.100Z", None, worker="w2"),
    attempt(4, "succeeded", "2026-11-28T04:53:00.000Z", "2026-11-28T04:53:01.000Z", worker="w3"),
]


def test_summarize_history() -> None:
    summary = summarize_history([Attempt.from_wire(a) for a in reversed(HISTORY)])
    assert [(e.exception_class_path, e.traceback) for e in summary.errors] == [
        ("builtins.ValueError", "Traceback ...\nValueError: declined"),
        (REMOTE, "lease expired"),
        (REMOTE, "attempt 3 failed"),
    ]
    assert summary.worker_ids == ["w1", "unknown", "w2", "w3"]
    assert summary.started_at == at("2026-11-28T04:51:33.000Z")
    assert summary.last_attempted_at == at("2026-11-28T04:53:00.000Z")

    empty = summarize_history([])
    assert (empty.errors, empty.worker_ids, empty.started_at, empty.last_attempted_at) == ([], [], None, None)

    running = summarize_history([Attempt.from_wire(attempt(1, "running", "2026-11-28T04:51:33.000Z", None))])
    assert running.errors == [] and running.worker_ids == ["w1"]
    expired = summarize_history([Attempt.from_wire(attempt(1, "expired", "2026-11-28T04:51:33.000Z", None))])
    assert [e.traceback for e in expired.errors] == ["attempt 1: the lease expired"]


def test_summarize_history_counts_the_attempts_cherga_dropped() -> None:
    # cherga keeps the first attempt and the latest 99: here 2 to 50 are gone.
    kept = [attempt(1, "failed", "2026-11-28T04:51:33.000Z", "2026-11-28T04:51:33.500Z", DJANGO_FAILURE)]
    kept += [
        attempt(n, "expired", "2026-11-28T04:52:00.000Z", "2026-11-28T04:52:30.000Z", "lease expired", worker=f"w{n}")
        for n in range(51, 150)
    ]
    kept.append(attempt(150, "running", "2026-11-28T05:00:00.000Z", None, worker="last"))
    summary = summarize_history([Attempt.from_wire(a) for a in kept])
    assert len(summary.worker_ids) == 150  # Django's attempts: every one, kept or not
    assert summary.worker_ids[:2] == ["w1", "unknown"] and summary.worker_ids[49:52] == ["unknown", "w51", "w52"]
    assert summary.worker_ids[-1] == "last"
    assert [e.traceback for e in summary.errors[:3]] == [
        "Traceback ...\nValueError: declined",
        "attempts 2 to 50 failed or expired; cherga keeps no record of them",
        "lease expired",
    ]
    assert len(summary.errors) == 1 + 1 + 99 and summary.errors[1].exception_class is RemoteTaskError
    assert summary.started_at == at("2026-11-28T04:51:33.000Z")
    assert summary.last_attempted_at == at("2026-11-28T05:00:00.000Z")

    one_gap = summarize_history(
        [
            Attempt.from_wire(attempt(n, "failed", "2026-11-28T04:51:33.000Z", "2026-11-28T04:51:34.000Z"))
            for n in (1, 3)
        ]
    )
    assert one_gap.worker_ids == ["w1", "unknown", "w1"]
    assert [e.traceback for e in one_gap.errors] == [
        "attempt 1 failed",
        "attempt 2 failed or expired; cherga keeps no record of them",
        "attempt 3 failed",
    ]


def test_the_history_fills_the_result_when_the_server_sends_it() -> None:
    report = {"return_value": 3, "started_at": "2026-11-28T04:53:00.000100+00:00", "worker_id": "w3"}
    done = result_of(
        cherga_task(attempts=4, result=report, history=HISTORY, last_error=None, finished_at="2026-11-28T04:53:01.000Z")
    )
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 3
    assert done.attempts == 4 and done.worker_ids == ["w1", "unknown", "w2", "w3"]
    assert [e.exception_class_path for e in done.errors] == ["builtins.ValueError", REMOTE, REMOTE]
    assert done.errors[0].exception_class is ValueError
    assert done.started_at == at("2026-11-28T04:51:33.000Z")
    assert done.last_attempted_at == at("2026-11-28T04:53:00.000Z")
    assert done.finished_at == at("2026-11-28T04:53:01.000Z")
    check_in_order(done)

    # Waiting for a retry: not finished, with every error so far.
    waiting = result_of(cherga_task(state="scheduled", attempts=2, history=HISTORY[:2], finished_at=None))
    assert waiting.status == TaskResultStatus.READY and waiting.finished_at is None
    assert len(waiting.errors) == 2 and waiting.attempts == 2


def test_history_is_optional_on_the_wire() -> None:
    assert cherga_task().history == []
    assert cherga_task(history=None).history == []
    [first, *_] = cherga_task(history=HISTORY).history
    assert first == Attempt(
        attempt=1,
        worker="w1",
        started_at=datetime(2026, 11, 28, 4, 51, 33, tzinfo=UTC),
        finished_at=datetime(2026, 11, 28, 4, 51, 33, 500_000, tzinfo=UTC),
        outcome=AttemptOutcome.FAILED,
        error=DJANGO_FAILURE,
    )
    newer = cherga_task(history=[attempt(1, "paused", "2026-11-28T04:51:33.000Z", None)]).history
    assert newer[0].outcome == "paused"  # an outcome a newer server added
