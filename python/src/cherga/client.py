"""``Client`` and ``AsyncClient``: two faces of one API.

Every operation is written once, in ``_core``, as a function that builds its
``Call``; ``_Api`` exposes each through ``_Op``, typed for each face:
``Client.enqueue(...)`` returns a ``Task``, ``AsyncClient.enqueue(...)`` an
awaitable of one. Both faces carry out the same programs (``run``); what
differs is only what must: the blocking or awaiting transport and pause.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, Unpack, overload

import httpx

from . import _core
from ._core import Call, Done, Program, RetryPolicy, advance
from ._http import AsyncHttpxTransport, ConnectionPerThread, HttpxTransport, Transport
from .events import AsyncEventStream, EventStream, Follower
from .lease import AsyncConsumer, AsyncLeaseContext, Consumer, LeaseContext, LeaseOptions

DEFAULT_URL = "http://127.0.0.1:7700"
USER_AGENT = "cherga-python/0.1"


def default_url() -> str:
    """``$CHERGA_URL``, or cherga's default address."""
    return os.environ.get("CHERGA_URL") or DEFAULT_URL


P = ParamSpec("P")
T = TypeVar("T")


class ClientSettings(TypedDict, total=False):
    """What both clients take besides the URL: ``timeout`` (seconds per try,
    default 10, to which lease requests add their ``wait_ms``), ``retries``
    (how many times a failed request is resent, default 5; see ``_core`` for
    which failures qualify) and ``headers`` (sent with every request, e.g.
    ``authorization``)."""

    timeout: float
    retries: int
    headers: dict[str, str] | None


class EventFilters(TypedDict, total=False):
    """Which events ``events()`` follows: of queues matching ``queue`` (``*``
    for any run of characters), of tasks of ``kind``, moving a task into
    ``state``, of one change ``type`` (``acked``, ``nacked``...), of one ``task``."""

    queue: str
    kind: str
    state: str
    type: str
    task: str


class _Op(Generic[P, T]):
    """One API operation on both faces: ``Client.enqueue(...)`` sends
    ``_core.enqueue(...)`` and returns its value, ``AsyncClient.enqueue(...)``
    returns an awaitable of it. Written once, typed for each face."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self._build = build
        self.__doc__ = build.__doc__
        self.__name__ = build.__name__

    @overload
    def __get__(self, client: None, owner: type[Any]) -> _Op[P, T]: ...
    @overload
    def __get__(self, client: Client, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncClient, owner: type[Any]) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, client: _Api | None, owner: type[Any]) -> Any:
        if client is None:
            return self
        build, send = self._build, client._send

        def operation(*args: P.args, **kwargs: P.kwargs) -> Any:
            return send(build(*args, **kwargs))

        operation.__doc__ = self.__doc__
        operation.__name__ = self.__name__
        return operation


class _Api:
    """The API operations, shared by both faces.

    In ``Client`` each method returns its value; in ``AsyncClient`` it returns an
    awaitable of that value. Durations are milliseconds (``*_ms``), as on the wire.
    """

    def __init__(self, url: str | None = None, **settings: Unpack[ClientSettings]) -> None:
        self._settings = _Settings(
            url, settings.get("timeout", 10.0), settings.get("retries", 5), settings.get("headers")
        )
        self.url = self._settings.url
        self.retry_policy = self._settings.retry_policy
        self._timeout = self._settings.timeout_of

    def _send(self, call: Call[Any]) -> Any:
        raise NotImplementedError

    enqueue = _Op(_core.enqueue)
    enqueue_many = _Op(_core.enqueue_many)
    lease_tasks = _Op(_core.lease_tasks)
    lease_and_ack = _Op(_core.lease_and_ack)
    ack = _Op(_core.ack)
    ack_many = _Op(_core.ack_many)
    nack = _Op(_core.nack)
    extend = _Op(_core.extend)
    get_task = _Op(_core.get_task)
    cancel = _Op(_core.cancel)
    retry = _Op(_core.retry)
    list_tasks = _Op(_core.list_tasks)
    get_queue = _Op(_core.get_queue)
    list_queues = _Op(_core.list_queues)
    configure_queue = _Op(_core.configure_queue)
    set_schema = _Op(_core.set_schema)
    get_schema = _Op(_core.get_schema)
    delete_schema = _Op(_core.delete_schema)
    health = _Op(_core.health)


class _Settings:
    def __init__(self, url: str | None, timeout: float, retries: int, headers: dict[str, str] | None) -> None:
        self.url = (url or default_url()).rstrip("/")
        self.timeout = timeout
        self.retry_policy = RetryPolicy(attempts=max(1, retries + 1))
        self.headers = {"user-agent": USER_AGENT, **(headers or {})}

    def timeout_of(self, call: Call[Any]) -> float:
        """Seconds one try of ``call`` may take."""
        return self.timeout + call.extra_timeout


class Client(_Api):
    """A blocking client; safe to share between threads.

    See ``ClientSettings`` for ``timeout``, ``retries`` and ``headers``.
    Requests go over one keep-alive
    connection per thread (``cherga._http``); with an httpx ``transport``
    (tests use ``httpx.MockTransport``) they go through ``httpx.Client``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        **settings: Unpack[ClientSettings],
    ) -> None:
        super().__init__(url, **settings)
        self._http: Transport = (
            ConnectionPerThread(self.url, self._settings.headers)
            if transport is None
            else HttpxTransport(self.url, self._settings.headers, self._settings.timeout, transport)
        )

    def _send(self, call: Call[T]) -> T:
        return self.run(_core.exchange(call, self.retry_policy))

    def run(self, program: Program[T], pause: Callable[[float], object] = time.sleep) -> T:
        """Carries out ``program`` (see ``_core``): sends its calls, pauses
        with ``pause``, and returns its value."""
        step = advance(program, None)
        while not isinstance(step, Done):
            outcome = pause(step) if isinstance(step, float) else self._http.send(step, self._timeout(step))
            step = advance(program, outcome)
        return step.value

    def lease(self, queue: str, **options: Unpack[LeaseOptions]) -> LeaseContext:
        """``with client.lease(queue) as task:`` — see ``cherga.lease.LeaseContext``."""
        return LeaseContext(self, queue, **options)

    def consume(self, queue: str, **options: Unpack[LeaseOptions]) -> Consumer:
        """``for task in client.consume(queue):`` — see ``cherga.lease.Consumer``."""
        return Consumer(self, queue, **options)

    def events(self, *, after: str | None = None, **filters: Unpack[EventFilters]) -> EventStream:
        """``for event in client.events(queue="payments"):`` — the task event
        stream, resuming after a dropped connection; see ``cherga.events``."""
        return EventStream(self._http, Follower({k: str(v) for k, v in filters.items()}, after), time.sleep)

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
        transport: httpx.AsyncBaseTransport | None = None,
        **settings: Unpack[ClientSettings],
    ) -> None:
        super().__init__(url, **settings)
        self._http = AsyncHttpxTransport(self.url, self._settings.headers, self._settings.timeout, transport)

    async def _send(self, call: Call[T]) -> T:
        return await self.run(_core.exchange(call, self.retry_policy))

    async def run(self, program: Program[T], pause: Callable[[float], Awaitable[object]] = asyncio.sleep) -> T:
        """``Client.run``, awaiting each step."""
        step = advance(program, None)
        while not isinstance(step, Done):
            if isinstance(step, float):
                step = advance(program, await pause(step))
                continue
            step = advance(program, await self._http.send(step, self._timeout(step)))
        return step.value

    def lease(self, queue: str, **options: Unpack[LeaseOptions]) -> AsyncLeaseContext:
        """``async with client.lease(queue) as task:`` — see ``cherga.lease``."""
        return AsyncLeaseContext(self, queue, **options)

    def consume(self, queue: str, **options: Unpack[LeaseOptions]) -> AsyncConsumer:
        """``async for task in client.consume(queue):`` — see ``cherga.lease``."""
        return AsyncConsumer(self, queue, **options)

    def events(self, *, after: str | None = None, **filters: Unpack[EventFilters]) -> AsyncEventStream:
        """``async for event in client.events():`` — see ``Client.events``."""
        return AsyncEventStream(self._http, Follower({k: str(v) for k, v in filters.items()}, after), asyncio.sleep)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"
