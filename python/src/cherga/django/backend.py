"""``ChergaBackend``: Django 6 Tasks on cherga.

Configuration (``settings.TASKS``)::

    TASKS = {
        "default": {
            "BACKEND": "cherga.django.ChergaBackend",
            "QUEUES": ["default", "emails"],   # Django queue names; [] allows any
            "OPTIONS": {
                "URL": "http://127.0.0.1:7700",  # default: $CHERGA_URL
                "OUTBOX": True,        # enqueue through the transactional outbox
                "DATABASE": "default", # the outbox's database
                "QUEUE_PREFIX": "",    # cherga queue = prefix + Django queue name
                "MAX_ATTEMPTS": None,  # per task; None: the cherga queue's setting
                "TIMEOUT": 10.0, "RETRIES": 5,
            },
        }
    }

A Django task becomes a cherga task of kind ``<module>.<function>`` whose
payload holds the arguments; ``priority`` and ``run_after`` map to cherga's
priority and ``run_at``. Results come back from cherga: ``get_result`` reads
the task's state, its stored result and its last error.

States: cherga ``scheduled``/``ready`` → READY (a failed task waiting for its
retry is READY again, as Django's docs put it: "ready to be executed again"),
``running`` → RUNNING, ``succeeded`` → SUCCESSFUL, ``dead``/``cancelled`` →
FAILED. A failing task is retried by cherga until its attempts run out; set
``MAX_ATTEMPTS: 1`` for Django's run-once behaviour.

Result ids are cherga task ids, except for tasks enqueued through the outbox:
those get ``outbox-<uuid>`` at once (the cherga task does not exist until the
transaction commits), and ``get_result`` follows the outbox row to the task.
A result belongs to the backend alias that enqueued it (the payload and the
outbox row name it): ``get_result`` through another alias, or of an id that
is no task at all, raises ``TaskResultDoesNotExist``.

Attempts: on a server that keeps each task's attempt history, ``errors`` has
one entry per failed or expired attempt, ``worker_ids`` one per attempt,
``started_at`` is the first attempt's start and ``last_attempted_at`` the
last one's, all of the server's clock (``summarize_history``; the signals
see the same, ``runner``). Without it, the last attempt's error, worker and
times are all there is, the times from the Django worker's clock. Either way
the times are in order: ``enqueued_at <= started_at <= last_attempted_at <=
finished_at``.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DEFAULT_DB_ALIAS, transaction
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from .. import types as cherga_types
from ..client import Client, default_url
from ..errors import InvalidRequest, NotFound

QUEUE_NAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9_.-]{1,128}$")
OUTBOX_PREFIX = "outbox-"

_STATUS: dict[str, TaskResultStatus] = {
    cherga_types.State.SCHEDULED: TaskResultStatus.READY,
    cherga_types.State.READY: TaskResultStatus.READY,
    cherga_types.State.RUNNING: TaskResultStatus.RUNNING,
    cherga_types.State.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    cherga_types.State.DEAD: TaskResultStatus.FAILED,
    cherga_types.State.CANCELLED: TaskResultStatus.FAILED,
}


class RemoteTaskError(Exception):
    """The exception class of an error cherga recorded that carries no Python
    exception: an expired lease ("lease expired"), a worker in another
    language, a task nacked by hand."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_iso(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def error_report(error: str | None) -> dict[str, Any] | None:
    """The structured failure a Django worker stored as ``last_error``, or a
    stand-in for a plain-text error."""
    if not error:
        return None
    try:
        report = json.loads(error)
    except (ValueError, RecursionError):  # plain text, or nested too deeply to be a report
        report = None
    if isinstance(report, dict) and isinstance(report.get("exception_class_path"), str):
        return report
    return {
        "exception_class_path": f"{RemoteTaskError.__module__}.{RemoteTaskError.__qualname__}",
        "traceback": error,
    }


class ChergaBackend(BaseTaskBackend):
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = self.options
        self.url: str = options.get("URL") or default_url()
        self.outbox: bool = bool(options.get("OUTBOX", False))
        self.database: str = options.get("DATABASE", DEFAULT_DB_ALIAS)
        self.queue_prefix: str = options.get("QUEUE_PREFIX", "")
        self.max_attempts: int | None = options.get("MAX_ATTEMPTS")
        self.timeout = float(options.get("TIMEOUT", 10.0))
        self.retries = int(options.get("RETRIES", 5))
        self._client: Client | None = None
        self._client_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The cherga client, shared by the threads of this process."""
        with self._client_lock:
            if self._client is None:
                self._client = Client(self.url, timeout=self.timeout, retries=self.retries)
            return self._client

    def cherga_queue(self, queue_name: str) -> str:
        return f"{self.queue_prefix}{queue_name}"

    def django_queue(self, queue: str) -> str:
        return queue[len(self.queue_prefix) :] if queue.startswith(self.queue_prefix) else queue

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if not QUEUE_NAME.match(self.cherga_queue(task.queue_name)):
            raise InvalidTask(f"queue {task.queue_name!r} is not a valid cherga queue name ([A-Za-z0-9_.-]{{1,128}})")

    def check(self, **kwargs: Any) -> list[Any]:
        from django.apps import apps
        from django.core import checks

        errors = list(super().check(**kwargs))
        if self.outbox and not apps.is_installed("cherga.django"):
            errors.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] uses the outbox, but 'cherga.django' is not in INSTALLED_APPS.",
                    id="cherga.E001",
                )
            )
        return errors

    # -- enqueue ----------------------------------------------------------------

    def enqueue(
        self,
        task: Task,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        *,
        key: str | None = None,
        group: str | None = None,
    ) -> TaskResult:
        """Enqueue ``task``. ``key`` (an idempotency key) and ``group`` (run
        one task of the group at a time, in order) are cherga's own; reach them
        through ``cherga.django.enqueue``."""
        self.validate_task(task)
        payload = {
            "django_task": 1,
            "func": task.module_path,
            "args": normalize_json(list(args)),
            "kwargs": normalize_json(dict(kwargs)),
            "run_after": _iso(task.run_after),
            # Whose result it is: get_result through another alias finds none.
            "backend": self.alias,
        }
        if self.outbox:
            return self._enqueue_outbox(task, payload, key, group)
        cherga_task = self.client.enqueue(
            self.cherga_queue(task.queue_name),
            task.module_path,
            payload,
            key=key,
            priority=task.priority,
            run_at=task.run_after,
            group=group,
            max_attempts=self.max_attempts,
        )
        result = self._result_from_task(cherga_task, cherga_task.id, task=task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def _enqueue_outbox(self, task: Task, payload: dict[str, Any], key: str | None, group: str | None) -> TaskResult:
        from .models import OutboxTask
        from .outbox import relay

        row_id = uuid.uuid4()
        payload["result_id"] = f"{OUTBOX_PREFIX}{row_id}"
        row = OutboxTask.objects.using(self.database).create(
            id=row_id,
            backend=self.alias,
            queue=self.cherga_queue(task.queue_name),
            kind=task.module_path,
            payload=payload,
            priority=task.priority,
            run_at=task.run_after,
            idempotency_key=key or f"{OUTBOX_PREFIX}{row_id}",
            group=group,
            max_attempts=self.max_attempts,
        )
        result = self._make_result(
            task, row.result_id, status=TaskResultStatus.READY, args=payload["args"], kwargs=payload["kwargs"]
        )

        def after_commit() -> None:
            object.__setattr__(result, "enqueued_at", row.created_at)
            task_enqueued.send(type(self), task_result=result)
            # Opportunistic: relay this row now. If the process dies first, or
            # cherga is unreachable, `cherga_relay` sends it later.
            relay(using=self.database, ids=[row.pk])

        # Runs at once outside a transaction; after the commit inside one; never
        # on rollback. robust: a failed relay must not fail the committed request.
        transaction.on_commit(after_commit, using=self.database, robust=True)
        return result

    # -- results --------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        if result_id.startswith(OUTBOX_PREFIX):
            return self._outbox_result(result_id)
        try:
            cherga_task = self.client.get_task(result_id)
        except (NotFound, InvalidRequest):
            # No such task, or not a task id at all ("", "..", "a/b").
            raise TaskResultDoesNotExist(result_id) from None
        return self._result_from_task(cherga_task, result_id)

    def _outbox_result(self, result_id: str) -> TaskResult:
        from django.core.exceptions import ValidationError

        from .models import OutboxTask

        rows = OutboxTask.objects.using(self.database).filter(backend=self.alias)
        try:
            row = rows.get(pk=result_id[len(OUTBOX_PREFIX) :])
        except (OutboxTask.DoesNotExist, ValidationError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        if row.task_id:
            try:
                return self._result_from_task(self.client.get_task(row.task_id), result_id)
            except (NotFound, InvalidRequest):
                raise TaskResultDoesNotExist(result_id) from None
        try:
            task = self._load_task(row.payload, priority=row.priority, queue=row.queue)
        except (ValueError, ImportError, InvalidTask):
            raise TaskResultDoesNotExist(result_id) from None
        return self._make_result(
            task,
            result_id,
            status=TaskResultStatus.READY,
            args=row.payload.get("args", []),
            kwargs=row.payload.get("kwargs", {}),
            enqueued_at=row.created_at,
        )

    def _load_task(self, payload: Any, *, priority: int, queue: str) -> Task:
        """The Django ``Task`` a cherga payload names, with this task's options."""
        if not isinstance(payload, dict) or not payload.get("django_task"):
            raise ValueError("not a Django task")
        task = import_string(payload["func"])
        if not isinstance(task, Task):
            raise ValueError(f"{payload['func']!r} is not a Django Task")
        changes: dict[str, Any] = {
            "priority": max(-100, min(100, priority)),
            "queue_name": self.django_queue(queue),
            "backend": self.alias,
        }
        run_after = _parse_iso(payload.get("run_after"))
        if run_after is not None:
            changes["run_after"] = run_after
        return task.using(**changes)

    def load_task(self, cherga_task: cherga_types.Task) -> Task:
        return self._load_task(cherga_task.payload, priority=cherga_task.priority, queue=cherga_task.queue)

    def _make_result(
        self,
        task: Task,
        result_id: str,
        *,
        status: TaskResultStatus,
        args: Any,
        kwargs: Any,
        enqueued_at: datetime | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        errors: list[TaskError] | None = None,
        worker_ids: list[str] | None = None,
        return_value: Any = None,
        last_attempted_at: datetime | None = None,
    ) -> TaskResult:
        result = TaskResult(
            task=task,
            id=result_id,
            status=status,
            enqueued_at=enqueued_at,
            started_at=started_at,
            last_attempted_at=last_attempted_at or started_at,
            finished_at=finished_at,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=errors or [],
            worker_ids=worker_ids or [],
        )
        if status == TaskResultStatus.SUCCESSFUL:
            object.__setattr__(result, "_return_value", return_value)
        return result

    def owns(self, cherga_task: cherga_types.Task) -> bool:
        """Whether ``cherga_task`` is a Django task enqueued through this
        backend (its payload names the alias; a payload from before it did
        must at least be on a queue this backend serves)."""
        payload = cherga_task.payload
        if not isinstance(payload, dict) or not payload.get("django_task"):
            return False
        if "backend" in payload:
            return bool(payload["backend"] == self.alias)
        return cherga_task.queue.startswith(self.queue_prefix)

    def _result_from_task(
        self, cherga_task: cherga_types.Task, result_id: str, *, task: Task | None = None
    ) -> TaskResult:
        payload = cherga_task.payload
        if task is None:
            if not self.owns(cherga_task):
                raise TaskResultDoesNotExist(result_id)
            try:
                task = self.load_task(cherga_task)
            except (ValueError, ImportError, InvalidTask):
                # Its function is gone, or its queue is not one this backend serves.
                raise TaskResultDoesNotExist(result_id) from None
        status = _STATUS.get(str(cherga_task.state), TaskResultStatus.READY)
        finished = status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)
        report = cherga_task.result if isinstance(cherga_task.result, dict) else {}
        if cherga_task.history:
            attempts = summarize_history(cherga_task.history)
            # All of the server's clock, as finished_at is.
            finished_at = cherga_task.finished_at if finished else None
        else:
            attempts, finished_at = _last_attempt(cherga_task, report, finished)
        enqueued_at, started_at, last_attempted_at, finished_at = _in_order(
            cherga_task.created_at, attempts.started_at, attempts.last_attempted_at, finished_at
        )
        return self._make_result(
            task,
            result_id,
            status=status,
            args=payload.get("args", []),
            kwargs=payload.get("kwargs", {}),
            enqueued_at=enqueued_at,
            started_at=started_at,
            last_attempted_at=last_attempted_at,
            finished_at=finished_at,
            errors=attempts.errors,
            worker_ids=attempts.worker_ids,
            return_value=report.get("return_value"),
        )


@dataclass(frozen=True)
class Attempts:
    """What a Django ``TaskResult`` says about a task's attempts."""

    errors: list[TaskError]
    worker_ids: list[str]  # one per attempt: Django's ``attempts`` is its length
    started_at: datetime | None  # the first attempt's start
    last_attempted_at: datetime | None  # the last attempt's start


def summarize_history(history: Sequence[cherga_types.Attempt]) -> Attempts:
    """The attempts from cherga's history of them (``Task.history``): one
    ``TaskError`` per attempt that failed or expired (the exception a Django
    worker recorded, else ``RemoteTaskError`` with cherga's text), one worker
    id per attempt, the first attempt's start and the last one's.

    cherga keeps the first attempt and the latest 99: the attempts it dropped
    in between (their numbers are missing) each count as a worker id
    ``"unknown"``, so that ``attempts`` stays the number of attempts, and
    together as one ``RemoteTaskError`` that names them. Every attempt but the
    last failed or expired: an ack ends the task."""
    attempts = sorted(history, key=lambda attempt: attempt.attempt)
    errors = []
    worker_ids = []
    previous = 0
    for attempt in attempts:
        if attempt.attempt > previous + 1:
            dropped = range(previous + 1, attempt.attempt)
            worker_ids += ["unknown"] * len(dropped)
            which = f"attempt {dropped[0]}" if len(dropped) == 1 else f"attempts {dropped[0]} to {dropped[-1]}"
            errors.append(_task_error(error_report(f"{which} failed or expired; cherga keeps no record of them")))
        previous = attempt.attempt
        worker_ids.append(attempt.worker or "unknown")
        if attempt.outcome == cherga_types.AttemptOutcome.FAILED:
            failure = error_report(attempt.error or f"attempt {attempt.attempt} failed")
        elif attempt.outcome == cherga_types.AttemptOutcome.EXPIRED:
            failure = error_report(attempt.error or f"attempt {attempt.attempt}: the lease expired")
        else:
            continue
        errors.append(_task_error(failure))
    return Attempts(
        errors=errors,
        worker_ids=worker_ids,
        started_at=attempts[0].started_at if attempts else None,
        last_attempted_at=attempts[-1].started_at if attempts else None,
    )


def _last_attempt(
    cherga_task: cherga_types.Task, report: dict[str, Any], finished: bool
) -> tuple[Attempts, datetime | None]:
    """The attempts and ``finished_at`` from what a server without attempt
    history keeps: the last attempt's error, worker and times. A Django
    worker's start and end are taken as a pair from the worker's clock, so
    that ``finished_at`` is not before ``started_at``; the server's time stands
    in for what the worker did not record."""
    failure = error_report(cherga_task.last_error)
    errors = [_task_error(failure)] if failure is not None else []
    finished_at = None
    if cherga_task.state == cherga_types.State.SUCCEEDED:
        started_at = _parse_iso(report.get("started_at"))
        finished_at = _parse_iso(report.get("finished_at"))
        last_worker = report.get("worker_id")
    elif cherga_task.state == cherga_types.State.RUNNING:
        started_at = cherga_task.updated_at
        last_worker = cherga_task.worker
    else:
        started_at = _parse_iso((failure or {}).get("started_at"))
        finished_at = _parse_iso((failure or {}).get("finished_at"))
        last_worker = (failure or {}).get("worker_id")
    if not finished:
        finished_at = None
    elif finished_at is None or started_at is None:
        finished_at = cherga_task.finished_at
    n_attempts = cherga_task.attempts
    # Without history cherga keeps who held the task last only.
    worker_ids = ["unknown"] * max(0, n_attempts - 1) + [last_worker or "unknown"] if n_attempts else []
    return Attempts(errors, worker_ids, started_at, started_at), finished_at


def _task_error(failure: dict[str, Any] | None) -> TaskError:
    assert failure is not None
    return TaskError(exception_class_path=failure["exception_class_path"], traceback=failure.get("traceback", ""))


def _in_order(*times: datetime | None) -> list[datetime | None]:
    """``times`` with each one raised to at least the one before it (``None``
    left out). Times from two clocks (the server's, in milliseconds, and a
    worker's) can disagree by a little; Django expects ``enqueued_at <=
    started_at <= last_attempted_at <= finished_at``."""
    ordered: list[datetime | None] = []
    floor: datetime | None = None
    for time in times:
        if time is not None and floor is not None and time < floor:
            time = floor
        if time is not None:
            floor = time
        ordered.append(time)
    return ordered


def enqueue(
    task: Task,
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    key: str | None = None,
    group: str | None = None,
) -> TaskResult:
    """``task.enqueue(*args, **kwargs)`` with cherga's own options:

    - ``key``: the idempotency key. Derive it from the operation
      (``f"order-{order.pk}-pay"``) and a repeated request — a second click, a
      client retry after a timeout — finds the task the first one created
      instead of making another (within the queue's dedup window, 24 h by
      default).
    - ``group``: tasks of one group run one at a time, in enqueue order.
    """
    backend = task.get_backend()
    if not isinstance(backend, ChergaBackend):
        raise TypeError(f"task {task.module_path} uses backend {task.backend!r}, which is not a ChergaBackend")
    return backend.enqueue(task, args, kwargs or {}, key=key, group=group)
