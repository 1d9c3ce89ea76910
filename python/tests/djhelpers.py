"""Helpers for the Django tests: an in-process cherga worker running Django
tasks, and a signal recorder."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connections
from django.tasks import TaskResult, task_backends
from django.tasks.signals import task_enqueued, task_finished, task_started

from cherga import Worker
from cherga.django.runner import django_handler
from tests.harness import wait_until

WORKER_ID = "test-worker"


@contextlib.contextmanager
def django_worker(alias: str, queue: str, *, concurrency: int = 2, name: str = WORKER_ID) -> Iterator[Worker]:
    """A running worker named ``name`` for the Django queue ``queue`` of
    backend ``alias``, as ``cherga_worker`` makes one; stopped (gracefully)
    when the block ends."""
    backend = task_backends[alias]
    worker = Worker(backend.cherga_queue(queue), client=backend.client, concurrency=concurrency, wait_ms=200, name=name)
    worker.fallback(django_handler(backend, name))
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
        assert worker.join(15), "the Django worker did not stop"


def result_when_finished(task: Any, result_id: str, timeout: float = 15.0) -> Any:
    def check() -> Any:
        result = task.get_result(result_id)
        return result if result.is_finished else None

    return wait_until(check, timeout=timeout, what=f"task result {result_id}")


class SignalLog:
    """Records (signal name, result id, status) for every task signal, and a
    copy of the ``TaskResult`` each one carried (``results``)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.snapshots: list[tuple[str, TaskResult]] = []
        self._lock = threading.Lock()
        self._receivers: list[tuple[Any, Callable[..., None]]] = []

    def __enter__(self) -> SignalLog:
        for name, signal in (("enqueued", task_enqueued), ("started", task_started), ("finished", task_finished)):

            def receiver(sender: Any, task_result: Any, _name: str = name, **kwargs: Any) -> None:
                # A copy: the worker goes on changing the one it sent.
                copy = dataclasses.replace(
                    task_result, errors=list(task_result.errors), worker_ids=list(task_result.worker_ids)
                )
                object.__setattr__(copy, "_return_value", task_result._return_value)
                with self._lock:
                    self.events.append((_name, task_result.id, str(task_result.status)))
                    self.snapshots.append((_name, copy))

            signal.connect(receiver, weak=False)
            self._receivers.append((signal, receiver))
        return self

    def __exit__(self, *exc: object) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)

    def of(self, result_id: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(name, status) for name, rid, status in self.events if rid == result_id]

    def results(self, result_id: str) -> list[tuple[str, TaskResult]]:
        """(signal name, the ``TaskResult`` it carried) for ``result_id``."""
        with self._lock:
            return [(name, result) for name, result in self.snapshots if result.id == result_id]


def close_thread_connections() -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()
