"""Helpers for the Django tests: an in-process cherga worker running Django
tasks, and a signal recorder."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connections
from django.tasks import task_backends
from django.tasks.signals import task_enqueued, task_finished, task_started

from cherga import Worker
from cherga.django.runner import django_handler
from tests.harness import wait_until

WORKER_ID = "test-worker"


@contextlib.contextmanager
def django_worker(alias: str, queue: str, *, concurrency: int = 2) -> Iterator[Worker]:
    """A running worker for the Django queue ``queue`` of backend ``alias``;
    stopped (gracefully) when the block ends."""
    backend = task_backends[alias]
    worker = Worker(backend.cherga_queue(queue), client=backend.client, concurrency=concurrency, wait_ms=200)
    worker.fallback(django_handler(backend, WORKER_ID))
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
    """Records (signal name, result id, status) for every task signal."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._receivers: list[tuple[Any, Callable[..., None]]] = []

    def __enter__(self) -> SignalLog:
        for name, signal in (("enqueued", task_enqueued), ("started", task_started), ("finished", task_finished)):

            def receiver(sender: Any, task_result: Any, _name: str = name, **kwargs: Any) -> None:
                with self._lock:
                    self.events.append((_name, task_result.id, str(task_result.status)))

            signal.connect(receiver, weak=False)
            self._receivers.append((signal, receiver))
        return self

    def __exit__(self, *exc: object) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)

    def of(self, result_id: str) -> list[tuple[str, str]]:
        with self._lock:
            return [(name, status) for name, rid, status in self.events if rid == result_id]


def close_thread_connections() -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()
