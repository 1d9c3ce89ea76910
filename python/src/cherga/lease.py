"""Holding leased tasks: heartbeats, ``client.lease()`` and ``client.consume()``.

``with client.lease(queue) as task:`` leases one task and settles it when the
block is left (see ``LeaseContext``). ``for task in client.consume(queue):``
leases one task per loop iteration (see ``Consumer`` for what ends an
iteration well or badly). Both keep the task's lease alive from a background
thread (``Heartbeat``) while your code runs; the asyncio faces do the same from
an asyncio task.

Invariants:
- A task is settled at most once by these helpers, with the token of the lease
  it was delivered under; ``LeaseLost`` is never retried.
- A task is never acked unless the code that ran it finished without an
  exception. When that cannot be known (a ``for`` loop left by ``break`` or an
  exception), the task is handed back (nack, retry in 0 ms), never acked.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ._outcome import Nack, hand_back, settle, undecodable
from .errors import ChergaError, LeaseLost
from .types import Task

if TYPE_CHECKING:
    from .client import AsyncClient, Client

log = logging.getLogger("cherga")

# One long poll waits at most this long, so a stop request is noticed in time.
POLL_CHUNK_MS = 5_000
# A lease is renewed when a third of it has passed.
RENEW_FRACTION = 1 / 3
FALLBACK_LEASE_S = 30.0


def lease_seconds(task: Task, lease_ms: int | None) -> float:
    """How long ``task``'s lease runs, from the request or from the server's
    own timestamps (so client and server clocks need not agree)."""
    if lease_ms is not None:
        return lease_ms / 1000
    expires = task.lease.expires_at if task.lease else task.lease_expires_at
    if expires is None:
        return FALLBACK_LEASE_S
    return max(0.05, (expires - task.updated_at).total_seconds())


class _Beats:
    """Bookkeeping shared by both heartbeats: which tasks are held, when each
    is due for renewal, and which ones were lost."""

    def __init__(self, lease_ms: int | None) -> None:
        self.lease_ms = lease_ms
        self.held: dict[str, tuple[Task, float]] = {}  # task id -> (task, due at, monotonic)
        self.lost: set[str] = set()

    def add(self, task: Task) -> None:
        self.held[task.id] = (task, time.monotonic() + lease_seconds(task, self.lease_ms) * RENEW_FRACTION)

    def discard(self, task: Task) -> bool:
        """Stops renewing ``task``; true when its lease was found lost."""
        self.held.pop(task.id, None)
        lost = task.id in self.lost
        self.lost.discard(task.id)
        return lost

    def due(self) -> list[Task]:
        now = time.monotonic()
        return [task for task, due_at in self.held.values() if due_at <= now]

    def next_in(self) -> float:
        if not self.held:
            return 1.0
        return max(0.0, min(due for _, due in self.held.values()) - time.monotonic())

    def renewed(self, task: Task, answer: Task) -> None:
        if task.id in self.held:
            if answer.lease_expires_at and task.lease:
                task.lease.expires_at = answer.lease_expires_at
            self.held[task.id] = (task, time.monotonic() + lease_seconds(answer, self.lease_ms) * RENEW_FRACTION)

    def failed(self, task: Task, error: ChergaError) -> None:
        if isinstance(error, LeaseLost):
            if self.held.pop(task.id, None) is not None:
                self.lost.add(task.id)
                log.warning("lease of task %s lost: another worker may run it now", task.id)
        else:
            log.warning("could not extend the lease of task %s: %s", task.id, error)
            if task.id in self.held:  # try again soon
                self.held[task.id] = (task, time.monotonic() + 0.5)


class Heartbeat:
    """Extends the leases of the tasks it holds, each when a third of its lease
    has passed, from one daemon thread (started on the first ``add``)."""

    def __init__(self, client: Client, lease_ms: int | None = None) -> None:
        self._client = client
        self._beats = _Beats(lease_ms)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, task: Task) -> None:
        with self._lock:
            self._beats.add(task)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cherga-heartbeat", daemon=True)
                self._thread.start()
        self._wake.set()

    def discard(self, task: Task) -> bool:
        """Stops renewing ``task``; true when its lease was lost meanwhile."""
        with self._lock:
            return self._beats.discard(task)

    def lost(self, task: Task) -> bool:
        with self._lock:
            return task.id in self._beats.lost

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                due = self._beats.due()
                wait = self._beats.next_in()
            for task in due:
                if self._stopping:
                    return
                try:
                    answer = self._client.extend(task, self._beats.lease_ms)
                except ChergaError as error:
                    with self._lock:
                        self._beats.failed(task, error)
                else:
                    with self._lock:
                        self._beats.renewed(task, answer)
            if not due:
                self._wake.wait(wait)
                self._wake.clear()


class AsyncHeartbeat:
    """``Heartbeat`` for ``AsyncClient``: one asyncio task renews the leases."""

    def __init__(self, client: AsyncClient, lease_ms: int | None = None) -> None:
        self._client = client
        self._beats = _Beats(lease_ms)
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def add(self, task: Task) -> None:
        self._beats.add(task)
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="cherga-heartbeat")
        self._wake.set()

    def discard(self, task: Task) -> bool:
        return self._beats.discard(task)

    def lost(self, task: Task) -> bool:
        return task.id in self._beats.lost

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None

    async def _run(self) -> None:
        while True:
            due = self._beats.due()
            for task in due:
                try:
                    answer = await self._client.extend(task, self._beats.lease_ms)
                except ChergaError as error:
                    self._beats.failed(task, error)
                else:
                    self._beats.renewed(task, answer)
            if not due:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._beats.next_in())
                except TimeoutError:
                    pass
                self._wake.clear()


def _chunk(deadline: float | None) -> int:
    if deadline is None:
        return POLL_CHUNK_MS
    return max(0, min(POLL_CHUNK_MS, int((deadline - time.monotonic()) * 1000)))


def lease_one(
    client: Client,
    queue: str,
    *,
    wait_ms: int | None,
    lease_ms: int | None,
    worker: str | None,
    stop: threading.Event | None = None,
) -> Task | None:
    """One leased task, long-polling until one arrives, ``wait_ms`` passes
    (``None``: no limit) or ``stop`` is set. A task this client cannot decode
    (``Task.decode_error``) is nacked on the spot, and the wait goes on."""
    deadline = None if wait_ms is None else time.monotonic() + wait_ms / 1000
    while True:
        tasks = client.lease_tasks(queue, max=1, wait_ms=_chunk(deadline), lease_ms=lease_ms, worker=worker)
        for task in tasks:
            if task.decode_error is None:
                return task
            _nack_undecodable(task)
            try:
                client.nack(task, **undecodable(task.decode_error).kwargs())
            except ChergaError as error:
                log_settle_failure(task, error, "nack")
        if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            return None


async def alease_one(
    client: AsyncClient,
    queue: str,
    *,
    wait_ms: int | None,
    lease_ms: int | None,
    worker: str | None,
    stop: asyncio.Event | None = None,
) -> Task | None:
    """``lease_one`` for ``AsyncClient``."""
    deadline = None if wait_ms is None else time.monotonic() + wait_ms / 1000
    while True:
        tasks = await client.lease_tasks(queue, max=1, wait_ms=_chunk(deadline), lease_ms=lease_ms, worker=worker)
        for task in tasks:
            if task.decode_error is None:
                return task
            _nack_undecodable(task)
            try:
                await client.nack(task, **undecodable(task.decode_error).kwargs())
            except ChergaError as error:
                log_settle_failure(task, error, "nack")
        if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() >= deadline):
            return None


def _nack_undecodable(task: Task) -> None:
    log.warning("task %s (%s) cannot be decoded, nacking it: %s", task.id, task.kind, task.decode_error)


def log_settle_failure(task: Task, error: ChergaError, what: str) -> None:
    if isinstance(error, LeaseLost):
        log.warning("could not %s task %s: its lease was lost; another worker has it", what, task.id)
    else:
        log.error("could not %s task %s: %s; it comes back when its lease expires", what, task.id, error)


class LeaseContext:
    """``with client.lease(queue) as task:`` — lease one task and settle it
    when the block is left.

    - ``task`` is a leased ``Task``, or ``None`` when none arrived within
      ``wait_ms`` (``None``, the default, waits until one arrives).
    - While the block runs, a background thread extends the lease.
    - Left normally: the task is acked, with ``task.result`` as its result
      (assign it in the block). If the lease was lost meanwhile the ack raises
      ``LeaseLost``: another worker has the task, and your work may run twice.
    - ``raise Retry(...)`` or ``raise Dead(...)``: nacked as asked; the
      exception is swallowed.
    - Any other exception: nacked with its traceback (retried after the
      queue's backoff) and re-raised. ``KeyboardInterrupt`` and other
      interruptions hand the task back to run again at once.
    """

    def __init__(
        self,
        client: Client,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> None:
        self._client = client
        self._queue = queue
        self._wait_ms = wait_ms
        self._lease_ms = lease_ms
        self._worker = worker
        self._heartbeat = Heartbeat(client, lease_ms) if heartbeat else None
        self.task: Task | None = None

    def __enter__(self) -> Task | None:
        self.task = lease_one(
            self._client, self._queue, wait_ms=self._wait_ms, lease_ms=self._lease_ms, worker=self._worker
        )
        if self.task is not None and self._heartbeat is not None:
            self._heartbeat.add(self.task)
        return self.task

    def __exit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        task = self.task
        if task is None:
            return False
        if self._heartbeat is not None:
            self._heartbeat.discard(task)
            self._heartbeat.stop()
        plan = settle(error)
        if plan.nack is None:
            self._client.ack(task, task.result)  # LeaseLost propagates on purpose
            return False
        try:
            self._client.nack(task, **plan.nack.kwargs())
        except ChergaError as nack_error:
            log_settle_failure(task, nack_error, "nack")
        return plan.swallow


class AsyncLeaseContext:
    """``async with client.lease(queue) as task:`` — ``LeaseContext`` for
    ``AsyncClient``, with the same rules."""

    def __init__(
        self,
        client: AsyncClient,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> None:
        self._client = client
        self._queue = queue
        self._wait_ms = wait_ms
        self._lease_ms = lease_ms
        self._worker = worker
        self._heartbeat = AsyncHeartbeat(client, lease_ms) if heartbeat else None
        self.task: Task | None = None

    async def __aenter__(self) -> Task | None:
        self.task = await alease_one(
            self._client, self._queue, wait_ms=self._wait_ms, lease_ms=self._lease_ms, worker=self._worker
        )
        if self.task is not None and self._heartbeat is not None:
            self._heartbeat.add(self.task)
        return self.task

    async def __aexit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        task = self.task
        if task is None:
            return False
        if self._heartbeat is not None:
            self._heartbeat.discard(task)
            await self._heartbeat.stop()
        plan = settle(error)
        if plan.nack is None:
            await self._client.ack(task, task.result)
            return False
        try:
            await self._client.nack(task, **plan.nack.kwargs())
        except ChergaError as nack_error:
            log_settle_failure(task, nack_error, "nack")
        return plan.swallow


LEFT_LOOP = "the consumer loop was left (break, return or exception) before the task finished"


class Consumer:
    """``for task in client.consume(queue):`` — one leased task per iteration.

    The semantics, precisely:

    - Each iteration leases one task (long-polling; ``wait_ms=None`` waits
      forever, otherwise iteration ends when no task arrived in time). Its lease
      is extended in the background while the loop body runs.
    - A task is **acked when the loop comes back for the next one**, i.e. when
      the body finished without an exception (reaching its end or
      ``continue``), with ``task.result`` as the result.
    - A loop left early — by ``break``, ``return`` or an exception — leaves a
      task whose fate a ``for`` loop cannot tell apart. It is never acked: it is
      **handed back** (nack, retry in 0 ms) when the consumer is closed, which
      CPython does at once when the loop is left.
    - To stop after the current task *and* ack it, call ``stop()`` (from the
      body, another thread, or a signal handler): the loop ends when it comes
      back for the next task, after acking the current one.
    - For the traceback of a failing body to reach the task's ``last_error``,
      use the consumer as a context manager::

          with client.consume("emails") as tasks:
              for task in tasks:
                  send(task.payload)

      An exception leaving the ``with`` nacks the current task with its
      traceback (``Retry``/``Dead`` nack as they ask and are swallowed, ending
      the loop); ``break`` hands it back as above.
    """

    def __init__(
        self,
        client: Client,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> None:
        self._client = client
        self._queue = queue
        self._wait_ms = wait_ms
        self._lease_ms = lease_ms
        self._worker = worker
        self._heartbeat = Heartbeat(client, lease_ms) if heartbeat else None
        self._stop = threading.Event()
        self._closed = False
        self.current: Task | None = None

    def stop(self) -> None:
        """End the loop when it next comes back for a task (acking the current
        one). Safe to call from any thread or a signal handler."""
        self._stop.set()

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> Task:
        if self.current is not None:
            done, self.current = self.current, None
            self._settle(done, None)
        if self._closed or self._stop.is_set():
            self.close()
            raise StopIteration
        task = lease_one(
            self._client,
            self._queue,
            wait_ms=self._wait_ms,
            lease_ms=self._lease_ms,
            worker=self._worker,
            stop=self._stop,
        )
        if task is None:
            self.close()
            raise StopIteration
        if self._stop.is_set():
            # Stopped while the lease was in flight: this task was never started.
            self._settle(task, hand_back("the consumer was stopped"))
            self.close()
            raise StopIteration
        if self._heartbeat is not None:
            self._heartbeat.add(task)
        self.current = task
        return task

    def _settle(self, task: Task, nack: Nack | None) -> None:
        if self._heartbeat is not None:
            self._heartbeat.discard(task)
        try:
            if nack is None:
                self._client.ack(task, task.result)
            else:
                self._client.nack(task, **nack.kwargs())
        except ChergaError as error:
            log_settle_failure(task, error, "ack" if nack is None else "nack")

    def close(self, nack: Nack | None = None) -> None:
        """Hand back the current task (if any) and stop the heartbeat."""
        if self.current is not None:
            task, self.current = self.current, None
            self._settle(task, nack or hand_back(LEFT_LOOP))
        if not self._closed:
            self._closed = True
            if self._heartbeat is not None:
                self._heartbeat.stop()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        plan = settle(error)
        self.close(plan.nack)
        return plan.swallow

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # never raise from a finalizer
            pass


class AsyncConsumer:
    """``async for task in client.consume(queue):`` — ``Consumer`` for
    ``AsyncClient``, with the same rules. Python finalizes an abandoned async
    iterator late, so use ``async with client.consume(queue) as tasks:`` to
    have a task left by ``break`` or an exception handed back at once; without
    it such a task comes back when its lease expires."""

    def __init__(
        self,
        client: AsyncClient,
        queue: str,
        *,
        wait_ms: int | None = None,
        lease_ms: int | None = None,
        worker: str | None = None,
        heartbeat: bool = True,
    ) -> None:
        self._client = client
        self._queue = queue
        self._wait_ms = wait_ms
        self._lease_ms = lease_ms
        self._worker = worker
        self._heartbeat = AsyncHeartbeat(client, lease_ms) if heartbeat else None
        self._stop = asyncio.Event()
        self._closed = False
        self.current: Task | None = None

    def stop(self) -> None:
        """End the loop when it next comes back for a task (acking the current one)."""
        self._stop.set()

    def __aiter__(self) -> AsyncConsumer:
        return self

    async def __anext__(self) -> Task:
        if self.current is not None:
            done, self.current = self.current, None
            await self._settle(done, None)
        if self._closed or self._stop.is_set():
            await self.aclose()
            raise StopAsyncIteration
        task = await alease_one(
            self._client,
            self._queue,
            wait_ms=self._wait_ms,
            lease_ms=self._lease_ms,
            worker=self._worker,
            stop=self._stop,
        )
        if task is None:
            await self.aclose()
            raise StopAsyncIteration
        if self._stop.is_set():
            await self._settle(task, hand_back("the consumer was stopped"))
            await self.aclose()
            raise StopAsyncIteration
        if self._heartbeat is not None:
            self._heartbeat.add(task)
        self.current = task
        return task

    async def _settle(self, task: Task, nack: Nack | None) -> None:
        if self._heartbeat is not None:
            self._heartbeat.discard(task)
        try:
            if nack is None:
                await self._client.ack(task, task.result)
            else:
                await self._client.nack(task, **nack.kwargs())
        except ChergaError as error:
            log_settle_failure(task, error, "ack" if nack is None else "nack")

    async def aclose(self, nack: Nack | None = None) -> None:
        if self.current is not None:
            task, self.current = self.current, None
            await self._settle(task, nack or hand_back(LEFT_LOOP))
        if not self._closed:
            self._closed = True
            if self._heartbeat is not None:
                await self._heartbeat.stop()

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        plan = settle(error)
        await self.aclose(plan.nack)
        return plan.swallow
