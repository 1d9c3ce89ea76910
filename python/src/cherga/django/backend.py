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
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Sequence
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
from ..errors import InvalidTaskId, TaskNotFound

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
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
    except ValueError:
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
        except (TaskNotFound, InvalidTaskId):
            raise TaskResultDoesNotExist(result_id) from None
        return self._result_from_task(cherga_task, result_id)

    def _outbox_result(self, result_id: str) -> TaskResult:
        from django.core.exceptions import ValidationError

        from .models import OutboxTask

        try:
            row = OutboxTask.objects.using(self.database).get(pk=result_id[len(OUTBOX_PREFIX) :])
        except (OutboxTask.DoesNotExist, ValidationError, ValueError):
            raise TaskResultDoesNotExist(result_id) from None
        if row.task_id:
            try:
                return self._result_from_task(self.client.get_task(row.task_id), result_id)
            except TaskNotFound:
                raise TaskResultDoesNotExist(result_id) from None
        task = self._load_task(row.payload, priority=row.priority, queue=row.queue)
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
    ) -> TaskResult:
        result = TaskResult(
            task=task,
            id=result_id,
            status=status,
            enqueued_at=enqueued_at,
            started_at=started_at,
            last_attempted_at=started_at,
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

    def _result_from_task(
        self, cherga_task: cherga_types.Task, result_id: str, *, task: Task | None = None
    ) -> TaskResult:
        payload = cherga_task.payload
        try:
            task = task or self.load_task(cherga_task)
        except ValueError:
            raise TaskResultDoesNotExist(result_id) from None
        state = cherga_task.state
        status = _STATUS.get(str(state), TaskResultStatus.READY)
        report = cherga_task.result if isinstance(cherga_task.result, dict) else {}
        failure = error_report(cherga_task.last_error)
        errors = []
        if failure is not None:
            errors.append(
                TaskError(exception_class_path=failure["exception_class_path"], traceback=failure.get("traceback", ""))
            )
        if state == cherga_types.State.SUCCEEDED:
            started_at = _parse_iso(report.get("started_at"))
            last_worker = report.get("worker_id")
        elif state == cherga_types.State.RUNNING:
            started_at = cherga_task.updated_at
            last_worker = cherga_task.worker
        else:
            started_at = _parse_iso((failure or {}).get("started_at"))
            last_worker = (failure or {}).get("worker_id")
        attempts = cherga_task.attempts
        # cherga keeps who held the task last; earlier holders are not recorded.
        worker_ids = ["unknown"] * max(0, attempts - 1) + [last_worker or "unknown"] if attempts else []
        finished_at = (
            cherga_task.finished_at if status in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED) else None
        )
        return self._make_result(
            task,
            result_id,
            status=status,
            args=payload.get("args", []),
            kwargs=payload.get("kwargs", {}),
            enqueued_at=cherga_task.created_at,
            started_at=started_at,
            finished_at=finished_at,
            errors=errors,
            worker_ids=worker_ids,
            return_value=report.get("return_value"),
        )


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
