"""Workers: run a handler per task ``kind`` for the tasks of one queue.

::

    worker = Worker("payments", concurrency=4)

    @worker.task("charge_card")
    def charge_card(task):
        return gateway.charge(task.payload["order"], key=task.id)

    worker.run()      # until SIGTERM/SIGINT, or worker.stop()

A handler receives the leased ``Task``. Its return value (JSON) acks the task as
its result; an exception nacks it with the traceback (retried after the queue's
backoff); ``Retry``/``Dead`` steer the nack. While a handler runs, its lease is
extended in the background, so a handler may take longer than ``lease_ms``; a
worker that dies stops extending, and the task is delivered again once the lease
runs out. Delivery is at-least-once: make handlers idempotent (``task.id`` or the
task's idempotency key make good downstream keys).

``Worker`` runs handlers in ``concurrency`` threads; ``AsyncWorker`` runs them
as asyncio tasks (``async def`` handlers are awaited, plain functions run in a
thread).

Invariants:
- The worker never holds more than ``concurrency + prefetch`` tasks: a lease
  asks for at most the free slots, and every task holds its slot until it is
  reported, or until its ack is handed to the poller.
- A handler that succeeds while the poller waits for a free slot hands its ack
  to the poller, which sends it with the lease request that slot allows (one
  round trip and one commit for both; the server stores acks before a lease
  waits). Otherwise the handler acks at once. An ack whose lease request failed
  is sent again on its own (acks are idempotent).
- Every leased task is reported (ack or nack) with the token it was delivered
  under. ``LeaseLost`` is never retried: the task belongs to someone else now.
- A result that cannot be acked — not JSON, or refused by the server (nested
  deeper than its ``--max-json-depth``, larger than its payload limit) — is
  not sent again: the task is nacked with the reason, at once, and retried
  after the queue's backoff like any failure.
- A task that ran is never handed back for an immediate retry: whatever its
  handler raised (``SystemExit`` and ``KeyboardInterrupt`` included, which only
  the handler's own code can raise in a handler thread) is a failure, retried
  after the queue's backoff with its traceback, unless ``Retry``/``Dead`` say
  otherwise. Only tasks that never started are handed back at once.
- One log line per task (logger ``cherga.worker``): id, kind, attempt, outcome
  and duration, as text and as the record's ``task_id``, ``task_kind``,
  ``attempt``, ``outcome`` and ``duration_ms`` attributes. DEBUG when it
  succeeded or was handed back, INFO for ``Retry``/``Dead``, WARNING for a
  failure.
- Shutdown (``stop()``, SIGTERM, SIGINT) lets running handlers finish and
  reports them, then hands back every task leased but not started (nack, retry
  in 0 ms) — except a task on its last attempt, which would die of being handed
  back, and so is run instead. A second signal is not caught: it kills.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from . import _core
from ._core import AsyncShell, Program, RetryPolicy, SyncShell, exchange
from ._http import encode_body
from ._outcome import Dead, Nack, Retry, failure, hand_back, outcome_name, undecodable
from .client import AsyncClient, Client
from .errors import ChergaError, InvalidJson, PayloadTooLarge, TooManyRequests
from .lease import AsyncHeartbeat, Heartbeat, log_settle_failure, report
from .types import Task

__all__ = ["AsyncWorker", "Dead", "Retry", "Worker", "run_workers"]

log = logging.getLogger("cherga.worker")

Handler = Callable[[Task], Any]
T = TypeVar("T")

DEFAULT_LEASE_MS = 30_000
DEFAULT_WAIT_MS = 5_000
# After a failed lease request, wait this long before the next (doubling, capped).
ERROR_BACKOFF = (0.2, 5.0)
# Most tasks one lease request may ask for (the API's MAX_BATCH).
MAX_LEASE_BATCH = 1000


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class WorkerSettings(TypedDict, total=False):
    """What both workers take besides the queue and the client: ``url``
    (default ``$CHERGA_URL``; used when no client is given), ``concurrency``
    (handlers at once, default 1), ``lease_ms`` (asked for and renewed; a dead
    worker's tasks come back after at most this long), ``wait_ms`` (one long
    poll; it bounds how long shutdown waits for a lease request in flight),
    ``prefetch`` (tasks leased ahead of free handlers) and ``name`` (the name
    tasks are leased under; default ``host:pid``)."""

    url: str | None
    concurrency: int
    lease_ms: int
    wait_ms: int
    prefetch: int
    name: str | None


class _Registry:
    """Handlers by kind, and the settings both workers share."""

    def __init__(self, queue: str, **settings: Unpack[WorkerSettings]) -> None:
        self.queue = queue
        self.url = settings.get("url")
        self.concurrency = max(1, settings.get("concurrency", 1))
        self.lease_ms = settings.get("lease_ms", DEFAULT_LEASE_MS)
        self.wait_ms = settings.get("wait_ms", DEFAULT_WAIT_MS)
        self.prefetch = max(0, settings.get("prefetch", 0))
        self.name = settings.get("name") or default_worker_name()
        self.handlers: dict[str, Handler] = {}
        self.fallback_handler: Handler | None = None

    def task(self, kind: str | None = None) -> Callable[[Handler], Handler]:
        """Decorator: run the function for tasks of ``kind`` (default: the
        function's name). Registering a kind again replaces its handler."""

        def register(func: Handler) -> Handler:
            self.handlers[kind or func.__name__] = func
            return func

        return register

    def fallback(self, func: Handler) -> Handler:
        """Decorator: run the function for tasks whose kind has no handler.
        Without one, such tasks are nacked (another worker may know the kind)."""
        self.fallback_handler = func
        return func

    def handler_for(self, kind: str) -> Handler | None:
        return self.handlers.get(kind, self.fallback_handler)

    @property
    def capacity(self) -> int:
        return self.concurrency + self.prefetch


def _no_handler(task: Task) -> Any:
    raise Retry(f"no handler for kind {task.kind!r} in this worker")


class _Undecodable(Exception):
    """What the handler of a task this client cannot decode raises."""


def _undecodable(task: Task) -> Any:
    raise _Undecodable(task.decode_error)


def _outcome(error: BaseException | None) -> tuple[Nack | None, str]:
    """The nack (``None``: ack) and the log's outcome for a handler that
    raised ``error`` (``None``: returned)."""
    if error is None:
        return None, "succeeded"
    if isinstance(error, _Undecodable):
        return undecodable(str(error)), "undecodable"
    return failure(error), outcome_name(error)


class _Flow:
    """The worker's bookkeeping and the programs of its requests, without
    threads or I/O: ``Worker`` and ``AsyncWorker`` run the same ones.

    Acks ride on the poller's next lease request (``offer``), except while it
    long-polls (and, in the asyncio worker, while any request of it is in
    flight), when a handler finishing meanwhile sends its own. A lease
    request long-polls only when it may wait: when the last one came back
    empty, or no task is held; otherwise it asks with ``wait_ms`` 0.

    ``lock`` guards ``acks``, ``long_polling`` and ``poller_done``: the thread
    worker's lock; nothing for the asyncio worker, whose steps between awaits
    are atomic."""

    def __init__(
        self, registry: _Registry, policy: RetryPolicy, lock: AbstractContextManager[Any], *, ride_in_flight: bool
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.lock = lock
        # Whether an ack waits for the next lease request while one is in
        # flight (the thread worker: sending it from the handler's thread costs
        # more than the wait), or is sent at once then (the asyncio worker:
        # a request of its own runs beside the lease, at no thread's cost).
        self.ride_in_flight = ride_in_flight
        self.in_flight = False
        self.acks: list[tuple[Task, Any]] = []
        self.long_polling = False
        self.poller_done = False
        # Whether the last lease request brought tasks: then the queue likely
        # holds more, and the next request does not wait on the server.
        self.busy = False
        self.error_delay = ERROR_BACKOFF[0]

    def handler(self, task: Task) -> Handler:
        if task.decode_error is not None:
            return _undecodable
        return self.registry.handler_for(task.kind) or _no_handler

    def next_request(self, others_held: bool) -> tuple[list[tuple[Task, Any]], int]:
        """The acks the next lease request carries and its ``wait_ms`` (lock
        held; ``others_held``: tasks are held besides the slots it asks for)."""
        acks, self.acks = self.acks, []
        wait_ms = self.registry.wait_ms if not self.busy or not others_held else 0
        self.long_polling = wait_ms > 0
        self.in_flight = True
        return acks, wait_ms

    def may_lease(self, free: int, capacity: int) -> bool:
        """Whether to send the next lease request with ``free`` slots of
        ``capacity``: at once, unless the last one brought tasks; then once
        half the slots are free, so that one request carries many acks and
        brings many tasks."""
        return free > 0 and (not self.busy or free * 2 >= capacity)

    def offer(self, task: Task, nack: Nack | None, result: Any) -> bool:
        """Hands a finished task's ack to the poller (lock held); false when it
        is to be sent now."""
        if nack is not None or self.long_polling or self.poller_done:
            return False
        if self.in_flight and not self.ride_in_flight:
            return False
        self.acks.append((task, result))
        return True

    def stop_polling(self) -> list[tuple[Task, Any]]:
        """The poller has stopped (lock held): the acks it will not carry."""
        self.long_polling = False
        self.poller_done = True
        acks, self.acks = self.acks, []
        return acks

    def lease(self, free: int, acks: list[tuple[Task, Any]], wait_ms: int) -> Program[list[Task]]:
        """One lease request for ``free`` tasks, carrying ``acks``; after a
        failure it pauses (backing off) and returns no task."""
        registry = self.registry
        options: dict[str, Any] = {
            "max": free,
            "wait_ms": wait_ms,
            "lease_ms": registry.lease_ms,
            "worker": registry.name,
        }
        started = time.monotonic()
        tasks: list[Task] = []
        try:
            if acks:
                tasks, results = yield from exchange(_core.lease_and_ack(registry.queue, acks, **options), self.policy)
                for task, nack in _refused_acks(acks, results):
                    yield from self.send_report(task, nack)
            else:
                tasks = yield from exchange(_core.lease_tasks(registry.queue, **options), self.policy)
            self.error_delay = ERROR_BACKOFF[0]
        except (ChergaError, *NOT_JSON) as error:
            log.warning("lease request to queue %s failed: %s", registry.queue, error)
            with self.lock:
                self.long_polling = self.in_flight = False
            for task, result in acks:
                yield from self.send_report(task, None, result)
            yield _pause(error, self.error_delay) if isinstance(error, ChergaError) else 0.0
            self.error_delay = min(ERROR_BACKOFF[1], self.error_delay * 2)
        with self.lock:
            self.long_polling = self.in_flight = False
            self.busy = bool(tasks)
        if not tasks and wait_ms == registry.wait_ms and time.monotonic() - started < 0.05:
            # Asked as long as it may wait, the server answered at once with
            # nothing (wait_ms 0, or it is shutting down): do not spin.
            yield 0.05
        return tasks

    def send_report(self, task: Task, nack: Nack | None, result: Any = None) -> Program[str | None]:
        """Acks or nacks ``task`` now; returns why a result that could not be
        acked was nacked instead (``None`` otherwise)."""
        try:
            return (yield from self._send_report(task, nack, result))
        except Exception:  # keep the worker alive; the lease expiry brings the task back
            log.exception("could not report task %s", task.id)
            return None

    def _send_report(self, task: Task, nack: Nack | None, result: Any) -> Program[str | None]:
        if nack is not None:
            yield from report(self.policy, task, nack)
            return None
        try:
            yield from exchange(_core.ack(task, result), self.policy)
        except RESULT_REFUSED as error:
            not_json = _why_refused(error)
            yield from report(self.policy, task, Nack(error=not_json))
            return not_json
        except ChergaError as error:
            log_settle_failure(task, error, "ack")
        return None

    def flush(self, acks: list[tuple[Task, Any]]) -> Program[None]:
        """Sends acks the poller will not carry, in one request."""
        if not acks:
            return
        try:
            results = yield from exchange(_core.ack_many(acks), self.policy)
        except ChergaError:
            for task, result in acks:
                yield from self.send_report(task, None, result)
            return
        for task, nack in _refused_acks(acks, results):
            yield from self.send_report(task, nack)


C = TypeVar("C", bound=SyncShell | AsyncShell)


class _Worker(_Registry, Generic[C]):
    """What both workers share besides the flow: their client."""

    def __init__(self, queue: str, client: C | None, **settings: Unpack[WorkerSettings]) -> None:
        super().__init__(queue, **settings)
        self.client = client

    def _started(self, task: Task) -> tuple[Handler, float] | None:
        """The handler to run ``task`` with, and when it started; ``None`` when
        the worker is stopping and hands the task back instead."""
        if self.stopping and not task.last_attempt:
            return None
        return self._flow.handler(task), time.monotonic()

    @property
    def stopping(self) -> bool:
        raise NotImplementedError

    _flow: _Flow


class Worker(_Worker[Client]):
    """A worker running handlers in threads. See the module documentation.

    ``client`` (or ``url``, default ``$CHERGA_URL``) says where cherga is.
    ``lease_ms`` is the lease asked for and renewed (a dead worker's tasks come
    back after at most this long); ``wait_ms`` is one long poll (it bounds how
    long shutdown waits for a lease request in flight); ``prefetch`` leases that
    many tasks ahead of free threads.
    """

    def __init__(self, queue: str = "default", *, client: Client | None = None, **settings: Unpack[WorkerSettings]):
        super().__init__(queue, client, **settings)
        self._own_client = False
        # One lock; handler threads wait on `_work` (one woken per task), the
        # poller on `_room` (woken when a slot frees). Nobody wakes everybody.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._ready: collections.deque[Task] = collections.deque()
        self._held = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._heartbeat: Heartbeat | None = None
        # Set when the worker stopped because of a bug of its own.
        self.crashed: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start polling and the handler threads; returns at once."""
        if self._threads:
            raise RuntimeError("worker already started")
        if self.client is None:
            self.client = Client(self.url)
            self._own_client = True
        self._flow = _Flow(self, self.client.retry_policy, self._lock, ride_in_flight=True)
        self._heartbeat = Heartbeat(self.client, self.lease_ms)
        self._threads = [threading.Thread(target=self._poll_loop, name=f"cherga-poll-{self.queue}", daemon=True)]
        self._threads += [
            threading.Thread(target=self._handler_loop, name=f"cherga-{self.queue}-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()
        log.info("worker %s: queue %s, %d threads", self.name, self.queue, self.concurrency)

    def stop(self) -> None:
        """Begin a graceful shutdown; returns at once (``join()`` waits)."""
        self._stopping.set()
        with self._lock:
            self._room.notify_all()
            self._work.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the shutdown to finish; true when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        done = not self.alive
        if done:
            self._finish()
        return done

    @property
    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def run(self, *, install_signal_handlers: bool = True) -> None:
        """Run until ``stop()`` or SIGTERM/SIGINT, then shut down gracefully."""
        run_workers([self], install_signal_handlers=install_signal_handlers)

    def _finish(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None
            self._own_client = False

    def _run(self, program: Program[T], *, until_stopped: bool = False) -> T:
        """Runs ``program``; its pauses end early on ``stop()`` when
        ``until_stopped`` (the poller's), never for reports (their retries)."""
        assert self.client is not None
        return self.client.run(program, pause=self._stopping.wait if until_stopped else time.sleep)

    # -- threads ------------------------------------------------------------

    def _poll_loop(self) -> None:
        assert self._heartbeat is not None
        try:
            while not self._stopping.is_set():
                with self._lock:
                    while not self._stopping.is_set() and not self._flow.may_lease(
                        self.capacity - self._held, self.capacity
                    ):
                        self._room.wait()
                    if self._stopping.is_set():
                        return
                    free = min(self.capacity - self._held, MAX_LEASE_BATCH)
                    acks, wait_ms = self._flow.next_request(others_held=self._held > 0)
                    # Count the slots now, so a finishing handler cannot make
                    # another lease request see them free again.
                    self._held += free
                tasks = self._run(self._flow.lease(free, acks, wait_ms), until_stopped=True)
                self._heartbeat.add_many(tasks)
                with self._lock:
                    self._held -= free - len(tasks)
                    self._ready.extend(tasks)
                    self._work.notify(len(tasks))
        except BaseException as error:
            # A bug, not a cherga error: stop the worker rather than idle forever.
            log.exception("worker %s: the poller failed; stopping", self.name)
            self.crashed = error
            self.stop()
        finally:
            with self._lock:
                acks = self._flow.stop_polling()
                self._work.notify_all()
            self._run(self._flow.flush(acks))

    def _handler_loop(self) -> None:
        while True:
            with self._lock:
                while not self._ready and not (self._stopping.is_set() and self._flow.poller_done):
                    self._work.wait()
                if not self._ready:
                    return
                task = self._ready.popleft()
            try:
                self._execute(task)
            finally:
                with self._lock:
                    self._held -= 1
                    self._room.notify()

    def _execute(self, task: Task) -> None:
        started = self._started(task)
        if started is None:
            self._report(task, hand_back("the worker is shutting down"))
            _log_task(task, "handed_back", 0.0)
            return
        handler, at = started
        try:
            result = handler(task)
        except BaseException as error:  # noqa: BLE001 - every failure is reported
            nack, outcome = _outcome(error)
            self._report(task, nack)
            _log_task(task, outcome, time.monotonic() - at, error)
        else:
            not_json = self._report(task, None, result)
            _log_task(task, "failed" if not_json else "succeeded", time.monotonic() - at, not_json)

    def _report(self, task: Task, nack: Nack | None, result: Any = None) -> str | None:
        """Acks or nacks ``task``; returns why a result that is not JSON was
        nacked instead of acked (``None`` otherwise)."""
        assert self._heartbeat is not None
        self._heartbeat.discard(task)
        if nack is None and _json_ok(result):
            with self._lock:
                if self._flow.offer(task, nack, result):
                    return None
        return self._run(self._flow.send_report(task, nack, result))


# What encoding a result that is not JSON raises: an object json cannot
# encode, NaN or an infinity (httpx refuses them, as JSON has none), nesting
# deeper than the encoder recurses.
NOT_JSON = (TypeError, ValueError, RecursionError)
# What an ack raises when the server refuses the result itself: nested deeper
# than its --max-json-depth (or JSON it cannot read, such as a lone
# surrogate), or larger than its payload limit. Sending it again cannot help:
# the task is nacked, as for a result that is not JSON, rather than left
# running until its lease expires and run again to the same end.
REFUSED_BY_SERVER = (InvalidJson, PayloadTooLarge)
RESULT_REFUSED = (*NOT_JSON, *REFUSED_BY_SERVER)


def _why_refused(error: BaseException) -> str:
    """The nack's error for a result that could not be acked (``RESULT_REFUSED``)."""
    if isinstance(error, REFUSED_BY_SERVER):
        return f"the server refused the handler's result: {error}"
    return f"the handler's result is not JSON: {error}"


def _json_ok(result: Any) -> bool:
    """Whether ``result`` can be sent as JSON (one that cannot is nacked)."""
    if result is None or type(result) in (bool, int):
        return True
    try:
        encode_body(result)
    except NOT_JSON:
        return False
    return True


_LOG_LEVELS = {"succeeded": logging.DEBUG, "handed_back": logging.DEBUG, "retry": logging.INFO, "dead": logging.INFO}


def _log_task(task: Task, outcome: str, seconds: float, error: BaseException | str | None = None) -> None:
    """The worker's one line about a task it reported."""
    level = _LOG_LEVELS.get(outcome, logging.WARNING)
    if not log.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 1)
    fields = {"task_id": task.id, "task_kind": task.kind, "attempt": task.attempts}
    fields.update(outcome=outcome, duration_ms=duration_ms)
    message = "task id=%s kind=%s attempt=%d outcome=%s duration_ms=%.1f"
    args: tuple[Any, ...] = (task.id, task.kind, task.attempts, outcome, duration_ms)
    if error is not None:
        text = error if isinstance(error, str) else repr(error)
        message += " error=%s"
        # The whole error is the task's last_error; the log line stays a line.
        args += (text if len(text) <= 300 else f"{text[:300]}…",)
    log.log(level, message, *args, extra=fields)


def _pause(error: ChergaError, delay: float) -> float:
    """How long the poller waits after a failed lease request: its backoff,
    or longer when the server said when to come back."""
    if isinstance(error, TooManyRequests) and error.retry_after is not None:
        return max(delay, error.retry_after)
    return delay


def _refused_acks(acks: list[tuple[Task, Any]], results: list[Any]) -> list[tuple[Task, Nack]]:
    """Logs the acks a lease request refused, and returns the nacks to send
    for those refused for their result (``REFUSED_BY_SERVER``)."""
    nacks = []
    for (task, _), outcome in zip(acks, results, strict=False):
        if isinstance(outcome.error, REFUSED_BY_SERVER):
            reason = _why_refused(outcome.error)
            log.warning("task %s: %s; nacking it", task.id, reason)
            nacks.append((task, Nack(error=reason)))
        elif outcome.error is not None:
            log_settle_failure(task, outcome.error, "ack")
    return nacks


def run_workers(workers: Iterable[Worker], *, install_signal_handlers: bool = True) -> None:
    """Run several workers (one per queue, say) until one of them is stopped
    or SIGTERM/SIGINT arrives, then shut all down gracefully. Signal handlers
    are only installed from the main thread."""
    workers = list(workers)
    installed: dict[int, Any] = {}

    def on_signal(signum: int, frame: Any) -> None:
        log.warning("signal %d: stopping; running handlers finish first (send it again to kill)", signum)
        for sig, previous in installed.items():
            signal.signal(sig, previous)
        installed.clear()
        for worker in workers:
            worker.stop()

    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            installed[signum] = signal.signal(signum, on_signal)
    try:
        for worker in workers:
            worker.start()
        while any(w.alive for w in workers):
            if any(w.stopping for w in workers):
                for worker in workers:
                    worker.stop()
            for worker in workers:
                worker.join(0.2)
    finally:
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join()
        for sig, previous in installed.items():
            signal.signal(sig, previous)
    crashed = [w.crashed for w in workers if w.crashed is not None]
    if crashed:
        raise RuntimeError(f"a worker stopped on an internal error: {crashed[0]!r}") from crashed[0]


class AsyncWorker(_Worker[AsyncClient]):
    """A worker running handlers as asyncio tasks, ``concurrency`` at once.

    ``async def`` handlers are awaited; plain functions run in a thread
    (``asyncio.to_thread``). ``await worker.serve()`` runs until ``stop()``;
    ``worker.run()`` does so in a new event loop and stops on SIGTERM/SIGINT.
    """

    def __init__(
        self, queue: str = "default", *, client: AsyncClient | None = None, **settings: Unpack[WorkerSettings]
    ) -> None:
        super().__init__(queue, client, **settings)
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        self._io: _AsyncIO

    def stop(self) -> None:
        """Begin a graceful shutdown. Safe from any thread."""
        self._stop_requested = True
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    @property
    def stopping(self) -> bool:
        return self._stopping is not None and self._stopping.is_set()

    def run(self, *, install_signal_handlers: bool = True) -> None:
        asyncio.run(self.serve(install_signal_handlers=install_signal_handlers))

    async def serve(self, *, install_signal_handlers: bool = False) -> None:
        """Run until ``stop()``, then shut down gracefully."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if self._stop_requested:
            self._stopping.set()
        own_client = self.client is None
        client = self.client if self.client is not None else AsyncClient(self.url)
        self._flow = _Flow(self, client.retry_policy, nullcontext(), ride_in_flight=False)
        self._io = _AsyncIO(
            client, AsyncHeartbeat(client, self.lease_ms), asyncio.Queue(), asyncio.Semaphore(self.capacity)
        )
        signals: list[int] = []
        unsent: list[tuple[Task, Any]] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                signals.append(sig)
        try:
            runners = [asyncio.create_task(self._runner()) for _ in range(self.concurrency)]
            try:
                await self._poller()
            finally:
                unsent = self._flow.stop_polling()
            for _ in runners:
                self._io.ready.put_nowait(None)  # after every leased task: drain, then stop
            await asyncio.gather(*runners)
        finally:
            # Acks handed to a poller that has stopped.
            await self._run(self._flow.flush(unsent + self._flow.stop_polling()))
            for installed in signals:
                self._loop.remove_signal_handler(installed)
            await self._io.heartbeat.stop()
            if own_client:
                await client.aclose()

    def _on_signal(self, signum: int) -> None:
        log.warning("signal %d: stopping; running handlers finish first (send it again to kill)", signum)
        assert self._loop is not None
        for handled in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(handled)
        self.stop()

    async def _run(self, program: Program[T], *, until_stopped: bool = False) -> T:
        """As ``Worker._run``."""
        stopping = self._stopping
        assert stopping is not None
        if not until_stopped:
            return await self._io.client.run(program)
        return await self._io.client.run(program, pause=lambda seconds: _wait(stopping, seconds))

    async def _poller(self) -> None:
        assert self._stopping is not None
        slots = self._io.slots
        while not self._stopping.is_set():
            free = 0
            while free == 0 or not self._flow.may_lease(free, self.capacity):
                # Wait for one free slot (or the stop), then take every free one.
                acquire = asyncio.create_task(slots.acquire())
                stop = asyncio.create_task(self._stopping.wait())
                await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not acquire.done():
                    acquire.cancel()
                free += 1 if acquire.done() and not acquire.cancelled() else 0
                while not slots.locked() and free < MAX_LEASE_BATCH:
                    await slots.acquire()
                    free += 1
                if self._stopping.is_set():
                    for _ in range(free):
                        slots.release()
                    return
            acks, wait_ms = self._flow.next_request(others_held=free < self.capacity)
            tasks = await self._run(self._flow.lease(free, acks, wait_ms), until_stopped=True)
            for _ in range(free - len(tasks)):
                slots.release()
            self._io.heartbeat.add_many(tasks)
            for task in tasks:
                self._io.ready.put_nowait(task)

    async def _runner(self) -> None:
        while True:
            task = await self._io.ready.get()
            if task is None:
                return
            try:
                await self._execute(task)
            finally:
                self._io.slots.release()

    async def _execute(self, task: Task) -> None:
        started = self._started(task)
        if started is None:
            await self._report(task, hand_back("the worker is shutting down"))
            _log_task(task, "handed_back", 0.0)
            return
        handler, at = started
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(task)
            else:
                result = await asyncio.to_thread(handler, task)
        except asyncio.CancelledError as error:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The worker itself is cancelled: the task did not fail.
                await self._report(task, hand_back("the worker was cancelled"))
                _log_task(task, "handed_back", time.monotonic() - at)
                raise
            # The handler's own code raised it: a failure like any other.
            await self._report(task, failure(error))
            _log_task(task, "failed", time.monotonic() - at, error)
        except BaseException as error:  # noqa: BLE001 - every failure is reported
            nack, outcome = _outcome(error)
            await self._report(task, nack)
            _log_task(task, outcome, time.monotonic() - at, error)
        else:
            not_json = await self._report(task, None, result)
            _log_task(task, "failed" if not_json else "succeeded", time.monotonic() - at, not_json)

    async def _report(self, task: Task, nack: Nack | None, result: Any = None) -> str | None:
        """As ``Worker._report``."""
        self._io.heartbeat.discard(task)
        if nack is None and _json_ok(result) and self._flow.offer(task, nack, result):
            return None
        return await self._run(self._flow.send_report(task, nack, result))


@dataclass
class _AsyncIO:
    """What an ``AsyncWorker`` serves with: its client and heartbeat, the
    leased tasks for the runners, and the slots (``capacity`` of them)."""

    client: AsyncClient
    heartbeat: AsyncHeartbeat
    ready: asyncio.Queue[Task | None]
    slots: asyncio.Semaphore


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
