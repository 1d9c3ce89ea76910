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
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._outcome import Dead, Nack, Retry, failure, hand_back, outcome_name, undecodable
from .client import AsyncClient, Client
from .errors import ChergaError, InvalidJson, PayloadTooLarge, TooManyRequests
from .lease import AsyncHeartbeat, Heartbeat, log_settle_failure
from .types import Task

__all__ = ["AsyncWorker", "Dead", "Retry", "Worker", "run_workers"]

log = logging.getLogger("cherga.worker")

Handler = Callable[[Task], Any]

DEFAULT_LEASE_MS = 30_000
DEFAULT_WAIT_MS = 5_000
# After a failed lease request, wait this long before the next (doubling, capped).
ERROR_BACKOFF = (0.2, 5.0)
# Most tasks one lease request may ask for (the API's MAX_BATCH).
MAX_LEASE_BATCH = 1000


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Registry:
    """Handlers by kind, and the settings both workers share."""

    def __init__(
        self,
        queue: str,
        *,
        concurrency: int,
        lease_ms: int,
        wait_ms: int,
        prefetch: int,
        name: str | None,
    ) -> None:
        self.queue = queue
        self.concurrency = max(1, concurrency)
        self.lease_ms = lease_ms
        self.wait_ms = wait_ms
        self.prefetch = max(0, prefetch)
        self.name = name or default_worker_name()
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


class Worker(_Registry):
    """A worker running handlers in threads. See the module documentation.

    ``client`` (or ``url``, default ``$CHERGA_URL``) says where cherga is.
    ``lease_ms`` is the lease asked for and renewed (a dead worker's tasks come
    back after at most this long); ``wait_ms`` is one long poll (it bounds how
    long shutdown waits for a lease request in flight); ``prefetch`` leases that
    many tasks ahead of free threads.
    """

    def __init__(
        self,
        queue: str = "default",
        *,
        client: Client | None = None,
        url: str | None = None,
        concurrency: int = 1,
        lease_ms: int = DEFAULT_LEASE_MS,
        wait_ms: int = DEFAULT_WAIT_MS,
        prefetch: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(
            queue, concurrency=concurrency, lease_ms=lease_ms, wait_ms=wait_ms, prefetch=prefetch, name=name
        )
        self.url = url
        self.client = client
        self._own_client = False
        self._cond = threading.Condition()
        self._ready: collections.deque[Task] = collections.deque()
        self._held = 0
        # Acks handed to the poller, for its next lease request; only while it
        # waits for a free slot (`_poller_waiting`).
        self._acks: list[tuple[Task, Any]] = []
        self._poller_waiting = False
        self._stopping = threading.Event()
        self._poller_done = False
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
        with self._cond:
            self._cond.notify_all()

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

    # -- threads ------------------------------------------------------------

    def _poll_loop(self) -> None:
        assert self.client is not None and self._heartbeat is not None
        error_delay = ERROR_BACKOFF[0]
        try:
            while not self._stopping.is_set():
                with self._cond:
                    self._poller_waiting = True
                    while self._held >= self.capacity and not self._stopping.is_set():
                        self._cond.wait()
                    self._poller_waiting = False
                    if self._stopping.is_set():
                        return
                    free = min(self.capacity - self._held, MAX_LEASE_BATCH)
                    # Count the slots now, so a finishing handler cannot make
                    # another lease request see them free again.
                    self._held += free
                    acks, self._acks = self._acks, []
                started = time.monotonic()
                tasks: list[Task] = []
                try:
                    if acks:
                        tasks, results = self.client.lease_and_ack(
                            self.queue, acks, max=free, wait_ms=self.wait_ms, lease_ms=self.lease_ms, worker=self.name
                        )
                        for task, nack in _refused_acks(acks, results):
                            self._send_report(task, nack)
                    else:
                        tasks = self.client.lease_tasks(
                            self.queue, max=free, wait_ms=self.wait_ms, lease_ms=self.lease_ms, worker=self.name
                        )
                    error_delay = ERROR_BACKOFF[0]
                except ChergaError as error:
                    log.warning("lease request to queue %s failed: %s", self.queue, error)
                    for task, result in acks:
                        self._send_report(task, None, result)
                    self._stopping.wait(_pause(error, error_delay))
                    error_delay = min(ERROR_BACKOFF[1], error_delay * 2)
                for task in tasks:
                    self._heartbeat.add(task)
                with self._cond:
                    self._held -= free - len(tasks)
                    self._ready.extend(tasks)
                    self._cond.notify_all()
                if not tasks and time.monotonic() - started < 0.05:
                    # The server answered at once with nothing (wait_ms 0, or it is
                    # shutting down): do not spin.
                    self._stopping.wait(0.05)
        except BaseException as error:
            # A bug, not a cherga error: stop the worker rather than idle forever.
            log.exception("worker %s: the poller failed; stopping", self.name)
            self.crashed = error
            self.stop()
        finally:
            with self._cond:
                self._poller_waiting = False
                self._poller_done = True
                acks, self._acks = self._acks, []
                self._cond.notify_all()
            for task, result in acks:
                self._send_report(task, None, result)

    def _handler_loop(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not (self._stopping.is_set() and self._poller_done):
                    self._cond.wait()
                if not self._ready:
                    return
                task = self._ready.popleft()
            try:
                if self._stopping.is_set() and not task.last_attempt:
                    self._report(task, hand_back("the worker is shutting down"))
                    _log_task(task, "handed_back", 0.0)
                else:
                    self._execute(task)
            finally:
                with self._cond:
                    self._held -= 1
                    self._cond.notify_all()

    def _execute(self, task: Task) -> None:
        if task.decode_error is not None:
            self._report(task, undecodable(task.decode_error))
            _log_task(task, "undecodable", 0.0, task.decode_error)
            return
        handler = self.handler_for(task.kind) or _no_handler
        started = time.monotonic()
        try:
            result = handler(task)
        except BaseException as error:  # noqa: BLE001 - every failure is reported
            elapsed = time.monotonic() - started
            self._report(task, failure(error))
            _log_task(task, outcome_name(error), elapsed, error)
        else:
            elapsed = time.monotonic() - started
            not_json = self._report(task, None, result)
            _log_task(task, "failed" if not_json else "succeeded", elapsed, not_json)

    def _report(self, task: Task, nack: Nack | None, result: Any = None) -> str | None:
        """Acks or nacks ``task``; returns why a result that is not JSON was
        nacked instead of acked (``None`` otherwise)."""
        assert self._heartbeat is not None
        self._heartbeat.discard(task)
        # A first look without the lock spares the JSON check when the poller is busy.
        if nack is None and self._poller_waiting and _json_ok(result):
            with self._cond:
                if self._poller_waiting:
                    # The slot this task frees wakes the poller, which acks it.
                    self._acks.append((task, result))
                    return None
        return self._send_report(task, nack, result)

    def _send_report(self, task: Task, nack: Nack | None, result: Any = None) -> str | None:
        assert self.client is not None
        not_json = None
        try:
            if nack is None:
                try:
                    self.client.ack(task, result)
                except RESULT_REFUSED as error:
                    not_json = _why_refused(error)
                    self.client.nack(task, error=not_json)
            else:
                self.client.nack(task, **nack.kwargs())
        except ChergaError as error:
            log_settle_failure(task, error, "ack" if nack is None else "nack")
        except Exception:  # keep the thread alive; the lease expiry brings the task back
            log.exception("could not report task %s", task.id)
        return not_json


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
    try:
        json.dumps(result, allow_nan=False)
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


class AsyncWorker(_Registry):
    """A worker running handlers as asyncio tasks, ``concurrency`` at once.

    ``async def`` handlers are awaited; plain functions run in a thread
    (``asyncio.to_thread``). ``await worker.serve()`` runs until ``stop()``;
    ``worker.run()`` does so in a new event loop and stops on SIGTERM/SIGINT.
    """

    def __init__(
        self,
        queue: str = "default",
        *,
        client: AsyncClient | None = None,
        url: str | None = None,
        concurrency: int = 1,
        lease_ms: int = DEFAULT_LEASE_MS,
        wait_ms: int = DEFAULT_WAIT_MS,
        prefetch: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(
            queue, concurrency=concurrency, lease_ms=lease_ms, wait_ms=wait_ms, prefetch=prefetch, name=name
        )
        self.url = url
        self.client = client
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = False
        # As in ``Worker``: acks for the poller's next lease request, handed over
        # only while it waits for a free slot.
        self._acks: list[tuple[Task, Any]] = []
        self._poller_waiting = False

    def stop(self) -> None:
        """Begin a graceful shutdown. Safe from any thread."""
        self._stop_requested = True
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

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
        heartbeat = AsyncHeartbeat(client, self.lease_ms)
        ready: asyncio.Queue[Task | None] = asyncio.Queue()
        slots = asyncio.Semaphore(self.capacity)
        signals: list[int] = []
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                signals.append(sig)
        try:
            runners = [
                asyncio.create_task(self._runner(client, heartbeat, ready, slots)) for _ in range(self.concurrency)
            ]
            try:
                await self._poller(client, heartbeat, ready, slots)
            finally:
                self._poller_waiting = False
            for _ in runners:
                ready.put_nowait(None)  # after every leased task: drain, then stop
            await asyncio.gather(*runners)
        finally:
            # Acks handed to a poller that has stopped.
            acks, self._acks = self._acks, []
            for task, result in acks:
                await self._send_report(client, task, None, result)
            for installed in signals:
                self._loop.remove_signal_handler(installed)
            await heartbeat.stop()
            if own_client:
                await client.aclose()

    def _on_signal(self, signum: int) -> None:
        log.warning("signal %d: stopping; running handlers finish first (send it again to kill)", signum)
        assert self._loop is not None
        for handled in (signal.SIGTERM, signal.SIGINT):
            self._loop.remove_signal_handler(handled)
        self.stop()

    async def _poller(
        self,
        client: AsyncClient,
        heartbeat: AsyncHeartbeat,
        ready: asyncio.Queue[Task | None],
        slots: asyncio.Semaphore,
    ) -> None:
        assert self._stopping is not None
        error_delay = ERROR_BACKOFF[0]
        while not self._stopping.is_set():
            # Wait for one free slot (or the stop), then take every free one.
            acquire = asyncio.create_task(slots.acquire())
            stop = asyncio.create_task(self._stopping.wait())
            self._poller_waiting = True
            await asyncio.wait({acquire, stop}, return_when=asyncio.FIRST_COMPLETED)
            self._poller_waiting = False
            stop.cancel()
            if not acquire.done():
                acquire.cancel()
                return
            free = 1
            while not slots.locked() and free < MAX_LEASE_BATCH:
                await slots.acquire()
                free += 1
            if self._stopping.is_set():
                for _ in range(free):
                    slots.release()
                return
            started = time.monotonic()
            tasks: list[Task] = []
            acks, self._acks = self._acks, []
            try:
                if acks:
                    tasks, results = await client.lease_and_ack(
                        self.queue, acks, max=free, wait_ms=self.wait_ms, lease_ms=self.lease_ms, worker=self.name
                    )
                    for task, nack in _refused_acks(acks, results):
                        await self._send_report(client, task, nack)
                else:
                    tasks = await client.lease_tasks(
                        self.queue, max=free, wait_ms=self.wait_ms, lease_ms=self.lease_ms, worker=self.name
                    )
                error_delay = ERROR_BACKOFF[0]
            except ChergaError as error:
                log.warning("lease request to queue %s failed: %s", self.queue, error)
                for task, result in acks:
                    await self._send_report(client, task, None, result)
                await _wait(self._stopping, _pause(error, error_delay))
                error_delay = min(ERROR_BACKOFF[1], error_delay * 2)
            for _ in range(free - len(tasks)):
                slots.release()
            for task in tasks:
                heartbeat.add(task)
                ready.put_nowait(task)
            if not tasks and time.monotonic() - started < 0.05:
                await _wait(self._stopping, 0.05)

    async def _runner(
        self,
        client: AsyncClient,
        heartbeat: AsyncHeartbeat,
        ready: asyncio.Queue[Task | None],
        slots: asyncio.Semaphore,
    ) -> None:
        assert self._stopping is not None
        while True:
            task = await ready.get()
            if task is None:
                return
            try:
                if self._stopping.is_set() and not task.last_attempt:
                    await self._report(client, heartbeat, task, hand_back("the worker is shutting down"))
                    _log_task(task, "handed_back", 0.0)
                else:
                    await self._execute(client, heartbeat, task)
            finally:
                slots.release()

    async def _execute(self, client: AsyncClient, heartbeat: AsyncHeartbeat, task: Task) -> None:
        if task.decode_error is not None:
            await self._report(client, heartbeat, task, undecodable(task.decode_error))
            _log_task(task, "undecodable", 0.0, task.decode_error)
            return
        handler = self.handler_for(task.kind) or _no_handler
        started = time.monotonic()
        try:
            if inspect.iscoroutinefunction(handler):
                result = await handler(task)
            else:
                result = await asyncio.to_thread(handler, task)
        except asyncio.CancelledError as error:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The worker itself is cancelled: the task did not fail.
                await self._report(client, heartbeat, task, hand_back("the worker was cancelled"))
                _log_task(task, "handed_back", time.monotonic() - started)
                raise
            # The handler's own code raised it: a failure like any other.
            await self._report(client, heartbeat, task, failure(error))
            _log_task(task, "failed", time.monotonic() - started, error)
        except BaseException as error:  # noqa: BLE001 - every failure is reported
            elapsed = time.monotonic() - started
            await self._report(client, heartbeat, task, failure(error))
            _log_task(task, outcome_name(error), elapsed, error)
        else:
            elapsed = time.monotonic() - started
            not_json = await self._report(client, heartbeat, task, None, result)
            _log_task(task, "failed" if not_json else "succeeded", elapsed, not_json)

    async def _report(
        self, client: AsyncClient, heartbeat: AsyncHeartbeat, task: Task, nack: Nack | None, result: Any = None
    ) -> str | None:
        """As ``Worker._report``."""
        heartbeat.discard(task)
        if nack is None and self._poller_waiting and _json_ok(result):
            # The slot this task frees wakes the poller, which acks it.
            self._acks.append((task, result))
            return None
        return await self._send_report(client, task, nack, result)

    async def _send_report(self, client: AsyncClient, task: Task, nack: Nack | None, result: Any = None) -> str | None:
        not_json = None
        try:
            if nack is None:
                try:
                    await client.ack(task, result)
                except RESULT_REFUSED as error:
                    not_json = _why_refused(error)
                    await client.nack(task, error=not_json)
            else:
                await client.nack(task, **nack.kwargs())
        except ChergaError as error:
            log_settle_failure(task, error, "ack" if nack is None else "nack")
        except Exception:  # keep the runner alive; the lease expiry brings the task back
            log.exception("could not report task %s", task.id)
        return not_json


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass
