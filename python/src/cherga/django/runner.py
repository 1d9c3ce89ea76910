"""Running Django tasks delivered by cherga, inside a cherga ``Worker``.

``django_handler(backend)`` is a worker handler for every task a
``ChergaBackend`` enqueued. For each delivery it sends ``task_started``, calls
the task (with a ``TaskContext`` when it ``takes_context``; ``async def`` tasks
run through ``async_to_sync``), sends ``task_finished`` with the outcome, and
turns that outcome into the ack or nack:

- success: ack with ``{"return_value", "started_at", "finished_at",
  "worker_id"}``, which ``get_result`` reads back;
- an exception (any ``BaseException`` but ``KeyboardInterrupt``, as in
  Django's ``ImmediateBackend``; ``SystemExit`` too): nack (retried after the
  queue's backoff, dead when out of attempts) with a JSON error,
  ``{"exception_class_path", "traceback", "started_at", "finished_at",
  "worker_id"}``, which cherga keeps as the task's ``last_error`` and as the
  error of this attempt in its history, and ``get_result`` turns into a
  ``TaskError``. The traceback's middle is cut to keep the JSON within
  cherga's 64 KiB of error text.

The ``TaskResult`` the signals and a ``TaskContext`` see is the one
``get_result`` shows, from the attempt history the lease brought: the errors
of earlier attempts, one worker id per attempt, ``started_at`` when the first
attempt started and ``last_attempted_at`` when this one did, by the server's
clock. Only ``finished_at`` (set before ``task_finished``) is this worker's
clock, as the server records its own end of the attempt at the ack or nack
that follows; it is never before ``last_attempted_at``. From a server that
keeps no history, the earlier attempts' errors are missing and the times are
this worker's.

Database connections are treated as in a request: stale ones are closed before
and after each task.
"""

from __future__ import annotations

import json
from datetime import datetime
from traceback import format_exception
from typing import Any

from django.db import close_old_connections
from django.tasks import TaskContext, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from .. import types as cherga_types
from .._outcome import Dead, Retry
from .backend import Attempts, ChergaBackend, _in_order, summarize_history


def django_handler(backend: ChergaBackend, worker_id: str) -> Any:
    """A ``Worker`` handler that runs the Django task a cherga task carries."""

    def handle(task: cherga_types.Task) -> Any:
        close_old_connections()
        try:
            return run(backend, task, worker_id)
        finally:
            close_old_connections()

    return handle


def run(backend: ChergaBackend, delivery: cherga_types.Task, worker_id: str) -> Any:
    payload = delivery.payload
    try:
        task = backend.load_task(delivery)
    except (ValueError, ImportError, AttributeError) as error:
        # A task this deployment cannot load will not load on a retry either.
        raise Dead(f"cannot load the Django task: {error}") from error
    result_id = payload.get("result_id") or delivery.id
    # The TaskResult as the signals and the task's context see it, with what
    # cherga knows of the task's attempts: their errors, workers and times
    # (the server's clock), this one included, as get_result shows them.
    if delivery.history:
        attempts = summarize_history(delivery.history)
    else:  # a server that keeps no history: this attempt's start, by this worker's clock
        now = timezone.now()
        workers = ["unknown"] * max(0, delivery.attempts - 1) + [worker_id]
        attempts = Attempts(errors=[], worker_ids=workers, started_at=now, last_attempted_at=now)
    enqueued_at, first_started_at, started_at = _in_order(
        delivery.created_at, attempts.started_at, attempts.last_attempted_at
    )
    if started_at is None:  # a history without this attempt: it starts now
        started_at = timezone.now()
    result = backend._make_result(
        task,
        result_id,
        status=TaskResultStatus.RUNNING,
        args=payload.get("args", []),
        kwargs=payload.get("kwargs", {}),
        enqueued_at=enqueued_at,
        started_at=first_started_at,
        last_attempted_at=started_at,
        errors=attempts.errors,
        worker_ids=attempts.worker_ids,
    )
    task_started.send(sender=type(backend), task_result=result)
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
        else:
            value = task.call(*result.args, **result.kwargs)
        value = normalize_json(value)
    except KeyboardInterrupt:
        # As Django's ImmediateBackend: only this one is let through (the
        # worker then records it as a plain failure, after the queue's backoff).
        raise
    except BaseException as error:  # noqa: BLE001 - every failure is recorded, SystemExit too
        finished_at = _finished_at(started_at)
        error_type = type(error)
        task_error = TaskError(
            exception_class_path=f"{error_type.__module__}.{error_type.__qualname__}",
            traceback="".join(format_exception(error)),
        )
        result.errors.append(task_error)
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        object.__setattr__(result, "finished_at", finished_at)
        # Sent inside the handler so receivers can see sys.exc_info().
        task_finished.send(sender=type(backend), task_result=result)
        report = {
            "exception_class_path": task_error.exception_class_path,
            "traceback": task_error.traceback,
            "started_at": started_at.isoformat(),
            "finished_at": finished_at.isoformat(),
            "worker_id": worker_id,
        }
        raise Retry(_fit(report)) from error
    finished_at = _finished_at(started_at)
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "finished_at", finished_at)
    object.__setattr__(result, "_return_value", value)
    task_finished.send(sender=type(backend), task_result=result)
    return {
        "return_value": value,
        "started_at": started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "worker_id": worker_id,
    }


def _finished_at(started_at: datetime) -> datetime:
    """Now, by this worker's clock (cherga's own end of the attempt is set
    by the ack or nack, after the signal), but never before the attempt's
    start by the server's clock."""
    now: datetime = timezone.now()
    return max(now, started_at)


# cherga keeps at most 64 KiB of error text; keep the JSON whole by cutting the
# traceback's middle rather than letting the server cut the end.
_MAX_ERROR = 60_000


def _fit(report: dict[str, Any]) -> str:
    text = json.dumps(report)
    if len(text.encode()) <= _MAX_ERROR:
        return text
    tb = report["traceback"]
    keep = _MAX_ERROR // 3
    report = {**report, "traceback": tb[:keep] + "\n[... cut ...]\n" + tb[-keep:]}
    return json.dumps(report)
