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
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from . import _core
from ._core import AsyncShell, Program, SyncShell, exchange
from ._outcome import Nack, hand_back, settle, undecodable
from .errors import ChergaError, LeaseLost
from .types import Task

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
        # When the renewing loop wakes next by itself (monotonic); 0 while it works.
        self.sleeps_until = 0.0

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

    def next_due(self) -> float:
        """When the next renewal is due (monotonic); infinity when none is held."""
        return min((due for _, due in self.held.values()), default=float("inf"))

    def next_in(self) -> float:
        if not self.held:
            return 1.0
        return max(0.0, self.next_due() - time.monotonic())

    def wake_needed(self) -> bool:
        """Whether a task was added that is due before the loop wakes."""
        return self.next_due() < self.sleeps_until

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


S = TypeVar("S", bound=SyncShell | AsyncShell)


def _renewals(
    beats: _Beats, policy: _core.RetryPolicy, lock: AbstractContextManager[Any], stopped: Callable[[], bool]
) -> Program[None]:
    """The heartbeat's loop: extends each lease when it is due, and pauses
    until the next one is (a pause its shell cuts short when woken)."""
    while not stopped():
        with lock:
            due = beats.due()
            wait = beats.next_in()
            beats.sleeps_until = 0.0 if due else time.monotonic() + wait
        for task in due:
            if stopped():
                return
            try:
                answer = yield from exchange(_core.extend(task, beats.lease_ms), policy)
            except ChergaError as error:
                with lock:
                    beats.failed(task, error)
            else:
                with lock:
                    beats.renewed(task, answer)
        if not due:
            yield wait


class _Heartbeat(Generic[S]):
    """What both heartbeats share: the tasks held, and the renewing program."""

    def __init__(self, client: S, lease_ms: int | None = None) -> None:
        self._client = client
        self._beats = _Beats(lease_ms)
        self._lock = threading.Lock()
        self._stopping = False

    def add(self, task: Task) -> None:
        self.add_many((task,))

    def add_many(self, tasks: Iterable[Task]) -> None:
        """Starts renewing ``tasks``. The loop is woken only when one of them
        is due before it would wake anyway."""
        with self._lock:
            for task in tasks:
                self._beats.add(task)
            if not self._beats.held:
                return
            wake = self._beats.wake_needed()
        self._start()
        if wake:
            self._wake()

    def discard(self, task: Task) -> bool:
        """Stops renewing ``task``; true when its lease was lost meanwhile."""
        with self._lock:
            return self._beats.discard(task)

    def lost(self, task: Task) -> bool:
        with self._lock:
            return task.id in self._beats.lost

    def _program(self) -> Program[None]:
        return _renewals(self._beats, self._client.retry_policy, self._lock, lambda: self._stopping)

    def _start(self) -> None:
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError


class Heartbeat(_Heartbeat[SyncShell]):
    """Extends the leases of the tasks it holds, each when a third of its lease
    has passed, from one daemon thread (started on the first ``add``)."""

    def __init__(self, client: SyncShell, lease_ms: int | None = None) -> None:
        super().__init__(client, lease_ms)
        self._event = threading.Event()
        self._thread: threading.Thread | None = None

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="cherga-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._client.run(self._program(), pause=self._pause)

    def _pause(self, seconds: float) -> None:
        self._event.wait(seconds)
        self._event.clear()

    def _wake(self) -> None:
        self._event.set()

    def stop(self, *, wait: bool = True) -> None:
        self._stopping = True
        self._event.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)


class AsyncHeartbeat(_Heartbeat[AsyncShell]):
    """``Heartbeat`` for ``AsyncClient``: one asyncio task renews the leases."""

    def __init__(self, client: AsyncShell, lease_ms: int | None = None) -> None:
        super().__init__(client, lease_ms)
        self._event = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def _start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="cherga-heartbeat")

    async def _run(self) -> None:
        await self._client.run(self._program(), pause=self._pause)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._event.wait(), seconds)
        except TimeoutError:
            pass
        self._event.clear()

    def _wake(self) -> None:
        self._event.set()

    async def stop(self) -> None:
        self._stopping = True
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None


def _chunk(deadline: float | None) -> int:
    if deadline is None:
        return POLL_CHUNK_MS
    return max(0, min(POLL_CHUNK_MS, int((deadline - time.monotonic()) * 1000)))


class LeaseOptions(TypedDict, total=False):
    """How ``client.lease()`` and ``client.consume()`` lease: ``wait_ms`` (how
    long to wait for a task; ``None``, the default, waits until one arrives),
    ``lease_ms`` (asked for and renewed; default: the queue's), ``worker``
    (the name the lease is taken under) and ``heartbeat`` (extend the lease in
    the background while the task runs; default true)."""

    wait_ms: int | None
    lease_ms: int | None
    worker: str | None
    heartbeat: bool


def lease_one(
    policy: _core.RetryPolicy,
    queue: str,
    *,
    wait_ms: int | None,
    lease_ms: int | None,
    worker: str | None,
    stopped: Callable[[], bool] = lambda: False,
) -> Program[Task | None]:
    """One leased task, long-polling until one arrives, ``wait_ms`` passes
    (``None``: no limit) or ``stopped()``. A task this client cannot decode
    (``Task.decode_error``) is nacked on the spot, and the wait goes on."""
    deadline = None if wait_ms is None else time.monotonic() + wait_ms / 1000
    while True:
        call = _core.lease_tasks(queue, max=1, wait_ms=_chunk(deadline), lease_ms=lease_ms, worker=worker)
        tasks = yield from exchange(call, policy)
        for task in tasks:
            if task.decode_error is None:
                return task
            log.warning("task %s (%s) cannot be decoded, nacking it: %s", task.id, task.kind, task.decode_error)
            yield from report(policy, task, undecodable(task.decode_error))
        if stopped() or (deadline is not None and time.monotonic() >= deadline):
            return None


def report(policy: _core.RetryPolicy, task: Task, nack: Nack | None, result: Any = None) -> Program[None]:
    """Acks ``task`` with ``result`` (``nack`` ``None``) or nacks it; a failure
    is logged, not raised: the task comes back when its lease expires."""
    try:
        if nack is None:
            yield from exchange(_core.ack(task, result), policy)
        else:
            yield from exchange(_core.nack(task, **nack.kwargs()), policy)
    except ChergaError as error:
        log_settle_failure(task, error, "ack" if nack is None else "nack")


def log_settle_failure(task: Task, error: ChergaError, what: str) -> None:
    if isinstance(error, LeaseLost):
        log.warning("could not %s task %s: its lease was lost; another worker has it", what, task.id)
    else:
        log.error("could not %s task %s: %s; it comes back when its lease expires", what, task.id, error)


H = TypeVar("H", bound="Heartbeat | AsyncHeartbeat")


class _Holder(Generic[S, H]):
    """What the lease helpers share: where and how they lease, and the
    programs of their steps; the sync and async classes only run them."""

    def __init__(self, client: S, queue: str, **options: Unpack[LeaseOptions]) -> None:
        self._client = client
        self._policy = client.retry_policy
        self._queue = queue
        self._wait_ms: int | None = options.get("wait_ms")
        self._lease_ms: int | None = options.get("lease_ms")
        self._worker: str | None = options.get("worker")
        self._heartbeat: H | None = self._new_heartbeat(client) if options.get("heartbeat", True) else None

    def _new_heartbeat(self, client: S) -> H:
        raise NotImplementedError

    def _lease(self, stopped: Callable[[], bool] = lambda: False) -> Program[Task | None]:
        task = yield from lease_one(
            self._policy,
            self._queue,
            wait_ms=self._wait_ms,
            lease_ms=self._lease_ms,
            worker=self._worker,
            stopped=stopped,
        )
        if task is not None and self._heartbeat is not None:
            self._heartbeat.add(task)
        return task

    def _release(self, task: Task | None) -> None:
        if task is not None and self._heartbeat is not None:
            self._heartbeat.discard(task)


class _LeaseContext(_Holder[S, H]):
    def __init__(self, client: S, queue: str, **options: Unpack[LeaseOptions]) -> None:
        super().__init__(client, queue, **options)
        self.task: Task | None = None

    def _enter(self) -> Program[Task | None]:
        self.task = yield from self._lease()
        return self.task

    def _exit(self, error: BaseException | None) -> Program[bool]:
        task = self.task
        if task is None:
            return False
        plan = settle(error)
        if plan.nack is None:
            yield from exchange(_core.ack(task, task.result), self._policy)  # LeaseLost propagates on purpose
            return False
        yield from report(self._policy, task, plan.nack)
        return plan.swallow


class LeaseContext(_LeaseContext[SyncShell, Heartbeat]):
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

    def _new_heartbeat(self, client: SyncShell) -> Heartbeat:
        return Heartbeat(client, self._lease_ms)

    def __enter__(self) -> Task | None:
        return self._client.run(self._enter())

    def __exit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        self._release(self.task)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        return self._client.run(self._exit(error))


class AsyncLeaseContext(_LeaseContext[AsyncShell, AsyncHeartbeat]):
    """``async with client.lease(queue) as task:`` — ``LeaseContext`` for
    ``AsyncClient``, with the same rules."""

    def _new_heartbeat(self, client: AsyncShell) -> AsyncHeartbeat:
        return AsyncHeartbeat(client, self._lease_ms)

    async def __aenter__(self) -> Task | None:
        return await self._client.run(self._enter())

    async def __aexit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        self._release(self.task)
        if self._heartbeat is not None:
            await self._heartbeat.stop()
        return await self._client.run(self._exit(error))


LEFT_LOOP = "the consumer loop was left (break, return or exception) before the task finished"


class _Consumer(_Holder[S, H]):
    def __init__(self, client: S, queue: str, **options: Unpack[LeaseOptions]) -> None:
        super().__init__(client, queue, **options)
        self._stop = threading.Event()
        self._closed = False
        self.current: Task | None = None

    def stop(self) -> None:
        """End the loop when it next comes back for a task (acking the current
        one). Safe to call from any thread or a signal handler."""
        self._stop.set()

    def _next(self) -> Program[Task | None]:
        """The next task, after acking the current one; ``None`` ends the loop."""
        if self.current is not None:
            done, self.current = self.current, None
            self._release(done)
            yield from report(self._policy, done, None, done.result)
        if self._closed or self._stop.is_set():
            return None
        task = yield from self._lease(self._stop.is_set)
        if task is not None and self._stop.is_set():
            # Stopped while the lease was in flight: this task was never started.
            self._release(task)
            yield from report(self._policy, task, hand_back("the consumer was stopped"))
            return None
        self.current = task
        return task

    def _close(self, nack: Nack | None) -> Program[bool]:
        """Hands back the current task (if any); true the first time, when the
        heartbeat is to be stopped."""
        if self.current is not None:
            task, self.current = self.current, None
            self._release(task)
            yield from report(self._policy, task, nack or hand_back(LEFT_LOOP))
        first, self._closed = not self._closed, True
        return first


class Consumer(_Consumer[SyncShell, Heartbeat]):
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
      **handed back** (nack, retry in 0 ms) when the consumer is closed: at
      once in the ``with`` form below; in a bare loop when CPython finalizes
      the consumer, from a short-lived thread, since a finalizer does no
      network I/O.
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

    def _new_heartbeat(self, client: SyncShell) -> Heartbeat:
        return Heartbeat(client, self._lease_ms)

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> Task:
        task = self._client.run(self._next())
        if task is None:
            self.close()
            raise StopIteration
        return task

    def close(self, nack: Nack | None = None) -> None:
        """Hand back the current task (if any) and stop the heartbeat."""
        if self._client.run(self._close(nack)) and self._heartbeat is not None:
            self._heartbeat.stop()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        plan = settle(error)
        self.close(plan.nack)
        return plan.swallow

    def __del__(self) -> None:
        # A finalizer must not wait on the network: a thread hands the task
        # back (it keeps this consumer alive until it has).
        try:
            if self.current is not None:
                threading.Thread(target=self.close, name="cherga-consumer-close", daemon=True).start()
            elif self._heartbeat is not None:
                self._heartbeat.stop(wait=False)
        except Exception:  # never raise from a finalizer (interpreter shutdown)
            pass


class AsyncConsumer(_Consumer[AsyncShell, AsyncHeartbeat]):
    """``async for task in client.consume(queue):`` — ``Consumer`` for
    ``AsyncClient``, with the same rules. Python finalizes an abandoned async
    iterator late, so use ``async with client.consume(queue) as tasks:`` to
    have a task left by ``break`` or an exception handed back at once; without
    it such a task comes back when its lease expires."""

    def _new_heartbeat(self, client: AsyncShell) -> AsyncHeartbeat:
        return AsyncHeartbeat(client, self._lease_ms)

    def __aiter__(self) -> AsyncConsumer:
        return self

    async def __anext__(self) -> Task:
        task = await self._client.run(self._next())
        if task is None:
            await self.aclose()
            raise StopAsyncIteration
        return task

    async def aclose(self, nack: Nack | None = None) -> None:
        if await self._client.run(self._close(nack)) and self._heartbeat is not None:
            await self._heartbeat.stop()

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> bool:
        plan = settle(error)
        await self.aclose(plan.nack)
        return plan.swallow
