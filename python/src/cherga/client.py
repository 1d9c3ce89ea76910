"""``Client`` and ``AsyncClient``: two faces of one API.

Every operation is written once, in ``_Api``, as "build the ``Call``, hand it to
``self._send``". ``Client._send`` sends it and returns the value;
``AsyncClient._send`` is a coroutine, so the same method returns an awaitable.
What differs between the faces is only what must: the blocking or awaiting
transport, the sleep between retries, and the lease helpers (a thread or an
asyncio task keeps leases alive).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from . import _core
from ._core import Answer, Call, MaybeSent, NotSent, RetryPolicy
from .types import NewTask, Task

if TYPE_CHECKING:
    from .lease import AsyncConsumer, AsyncLeaseContext, Consumer, LeaseContext

DEFAULT_URL = "http://127.0.0.1:7700"
USER_AGENT = "cherga-python/0.1"


def default_url() -> str:
    """``$CHERGA_URL``, or cherga's default address."""
    return os.environ.get("CHERGA_URL") or DEFAULT_URL


class _Api:
    """The API operations, shared by both faces.

    In ``Client`` each method returns its value; in ``AsyncClient`` it returns an
    awaitable of that value. Durations are milliseconds (``*_ms``), as on the wire.
    """

    def _send(self, call: Call[Any]) -> Any:
        raise NotImplementedError

    def enqueue(
        self,
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
    ) -> Any:
        """Enqueue one task; returns the ``Task`` (``task.replayed`` is true when
        ``key`` matched an existing task and nothing was created).

        Without ``key`` a uuid4 key is generated, which makes the client's own
        retries safe; pass a key derived from your operation to make *your*
        retries safe as well. Raises ``IdempotencyKeyReused`` when ``key`` was
        used for a different request.
        """
        new = NewTask(kind, payload, key, priority, run_at, delay_ms, group, max_attempts)
        return self._send(_core.enqueue(queue, new))

    def enqueue_many(self, queue: str, tasks: Iterable[NewTask]) -> Any:
        """Enqueue many tasks in one request; one ``BatchResult`` per item, in order."""
        return self._send(_core.enqueue_many(queue, tasks))

    def lease_tasks(
        self,
        queue: str,
        *,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
        worker: str | None = None,
    ) -> Any:
        """Lease up to ``max`` tasks, waiting up to ``wait_ms`` (at most 60 s) for
        one to arrive. Each returned task carries its ``lease``. Prefer
        ``lease()``, ``consume()`` or a ``Worker``, which also ack and heartbeat."""
        return self._send(_core.lease(queue, max=max, wait_ms=wait_ms, lease_ms=lease_ms, worker=worker))

    def lease_and_ack(
        self,
        queue: str,
        acks: Iterable[tuple[Task, Any]],
        *,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
        worker: str | None = None,
    ) -> Any:
        """``lease_tasks`` that also acks earlier tasks, ``[(task, result), ...]``,
        in the same commit (one round trip): → ``(tasks, [BatchResult per ack])``.
        The acks are stored before the lease waits."""
        return self._send(_core.lease_and_ack(queue, acks, max=max, wait_ms=wait_ms, lease_ms=lease_ms, worker=worker))

    def ack(self, task: Task | str, result: Any = None, *, lease: str | None = None) -> Any:
        """Mark a leased task succeeded with ``result``. Sending the same ack twice
        succeeds twice; a stale lease raises ``LeaseLost``."""
        return self._send(_core.ack(task, result, lease=lease))

    def ack_many(self, items: Iterable[tuple[Task, Any]]) -> Any:
        """Ack many leased tasks: ``[(task, result), ...]`` → one ``BatchResult`` each."""
        return self._send(_core.ack_many(items))

    def nack(
        self,
        task: Task | str,
        error: str | None = None,
        *,
        retry_in_ms: int | None = None,
        dead: bool = False,
        lease: str | None = None,
    ) -> Any:
        """Report a failure: the task is retried after the queue's backoff (or
        ``retry_in_ms``), or becomes dead (``dead=True`` or out of attempts)."""
        return self._send(_core.nack(task, error, retry_in_ms=retry_in_ms, dead=dead, lease=lease))

    def extend(self, task: Task | str, lease_ms: int | None = None, *, lease: str | None = None) -> Any:
        """Heartbeat: the lease now expires ``lease_ms`` (default: the queue's
        lease) from now."""
        return self._send(_core.extend(task, lease_ms, lease=lease))

    def get_task(self, task_id: str) -> Any:
        """The task with its state and result; ``TaskNotFound`` if unknown."""
        return self._send(_core.get_task(task_id))

    def cancel(self, task_id: str) -> Any:
        """Cancel a scheduled or ready task (idempotent)."""
        return self._send(_core.cancel(task_id))

    def retry(self, task_id: str) -> Any:
        """Send a dead task back to ready."""
        return self._send(_core.retry_dead(task_id))

    def list_tasks(
        self, queue: str, *, state: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Any:
        """A ``TaskPage`` of the queue's tasks, oldest first."""
        return self._send(_core.list_tasks(queue, state=state, limit=limit, after=after))

    def get_queue(self, queue: str) -> Any:
        """The queue's settings and counts per state (``QueueNotFound`` if none)."""
        return self._send(_core.get_queue(queue))

    def list_queues(self) -> Any:
        return self._send(_core.list_queues())

    def configure_queue(
        self,
        queue: str,
        *,
        max_attempts: int | None = None,
        lease_ms: int | None = None,
        backoff: dict[str, Any] | None = None,
        concurrency: int | None = _core.UNSET,
        paused: bool | None = None,
        retention_ms: int | None = None,
        dedup_window_ms: int | None = None,
    ) -> Any:
        """Change queue settings (``PUT``, idempotent); settings not given are
        kept. ``concurrency=None`` removes the limit. ``backoff`` is a dict of
        ``initial_ms``, ``max_ms``, ``multiplier``, ``jitter``."""
        return self._send(
            _core.put_queue(
                queue,
                max_attempts=max_attempts,
                lease_ms=lease_ms,
                backoff=backoff,
                concurrency=concurrency,
                paused=paused,
                retention_ms=retention_ms,
                dedup_window_ms=dedup_window_ms,
            )
        )

    def health(self) -> Any:
        """True when the server answers its liveness check."""
        return self._send(_core.health())


def _transport_error(error: httpx.TransportError) -> Exception:
    """Sorts an httpx failure by whether the request may have reached the server."""
    kind = NotSent if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)) else MaybeSent
    sorted_error = kind(f"{type(error).__name__}: {error}")
    sorted_error.__cause__ = error
    return sorted_error


def _answer(response: httpx.Response) -> Answer:
    return _core.decode(response.status_code, dict(response.headers), response.content)


class _Settings:
    def __init__(self, url: str | None, timeout: float, retries: int, headers: dict[str, str] | None) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.timeout = timeout
        self.retry_policy = RetryPolicy(attempts=max(1, retries + 1))
        self.headers = {"user-agent": USER_AGENT, **(headers or {})}


class Client(_Api):
    """A blocking client; safe to share between threads.

    ``retries`` is how many times a failed request is resent (see ``_core`` for
    which failures qualify); ``timeout`` is seconds per try, to which lease
    requests add their ``wait_ms``. ``transport`` is passed to ``httpx.Client``
    (tests use ``httpx.MockTransport``).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 5,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(url, timeout, retries, headers)
        self.url = self._settings.url
        self._http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=self._settings.headers, transport=transport
        )

    def _send(self, call: Call[Any]) -> Any:
        steps = _core.exchange(call, self._settings.retry_policy)
        try:
            step = next(steps)
            while True:
                if isinstance(step, float):
                    time.sleep(step)
                    step = next(steps)
                else:  # SEND
                    step = steps.send(self._try(call))
        except StopIteration as done:
            return done.value

    def _try(self, call: Call[Any]) -> Answer | Exception:
        try:
            response = self._http.request(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                timeout=self._settings.timeout + call.extra_timeout,
            )
        except httpx.TransportError as error:
            return _transport_error(error)
        return _answer(response)

    def lease(
        self,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> LeaseContext:
        """``with client.lease(queue) as task:`` — see ``cherga.lease.LeaseContext``."""
        from .lease import LeaseContext

        return LeaseContext(self, queue, wait_ms=wait_ms, lease_ms=lease_ms, worker=worker, heartbeat=heartbeat)

    def consume(
        self,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> Consumer:
        """``for task in client.consume(queue):`` — see ``cherga.lease.Consumer``."""
        from .lease import Consumer

        return Consumer(self, queue, wait_ms=wait_ms, lease_ms=lease_ms, worker=worker, heartbeat=heartbeat)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"


class AsyncClient(_Api):
    """The asyncio face of ``Client``: the same methods, awaited."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 5,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(url, timeout, retries, headers)
        self.url = self._settings.url
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers=self._settings.headers, transport=transport
        )

    async def _send(self, call: Call[Any]) -> Any:
        steps = _core.exchange(call, self._settings.retry_policy)
        try:
            step = next(steps)
            while True:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    step = next(steps)
                else:  # SEND
                    step = steps.send(await self._try(call))
        except StopIteration as done:
            return done.value

    async def _try(self, call: Call[Any]) -> Answer | Exception:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                json=call.json,
                params=call.params,
                timeout=self._settings.timeout + call.extra_timeout,
            )
        except httpx.TransportError as error:
            return _transport_error(error)
        return _answer(response)

    def lease(
        self,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> AsyncLeaseContext:
        """``async with client.lease(queue) as task:`` — see ``cherga.lease``."""
        from .lease import AsyncLeaseContext

        return AsyncLeaseContext(self, queue, wait_ms=wait_ms, lease_ms=lease_ms, worker=worker, heartbeat=heartbeat)

    def consume(
        self,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> AsyncConsumer:
        """``async for task in client.consume(queue):`` — see ``cherga.lease``."""
        from .lease import AsyncConsumer

        return AsyncConsumer(self, queue, wait_ms=wait_ms, lease_ms=lease_ms, worker=worker, heartbeat=heartbeat)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"
