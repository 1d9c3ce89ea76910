"""The task event stream, ``GET /v1/events``: one CloudEvent per task transition.

``for event in client.events(queue="payments"):`` follows the stream for good:
when the connection drops (the server restarts, a proxy cuts it), it connects
again with ``Last-Event-ID`` set to the last event it gave, so no event is
skipped or repeated — unless the server deleted events meanwhile (its
``--event-retention``), which it says in an ``error`` frame: that is logged and
the stream goes on from the oldest event kept. ``after`` starts after a known
event id (``"0"``: from the oldest kept); without it, with the next event.

The parsing and the bookkeeping (``Follower``) do no I/O; ``EventStream`` and
``AsyncEventStream`` only read lines and sleep.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import urlencode

from .types import parse_time

log = logging.getLogger("cherga.events")

# After a dropped connection: wait this long before the next (doubling, capped).
RECONNECT = (0.2, 5.0)


@dataclass(frozen=True)
class Event:
    """One task transition (a CloudEvent 1.0; ``cloudevent`` is all of it).

    ``type`` is ``dev.cherga.task.`` and the ``change``: ``enqueued``,
    ``promoted``, ``leased``, ``acked``, ``nacked``, ``expired``,
    ``cancelled``, ``retried``, ``purged``. ``from_state``/``to_state`` are the
    task's states before and after (``None`` before an enqueue, after a purge).
    """

    id: str
    type: str
    time: datetime
    task_id: str
    queue: str
    kind: str
    change: str
    from_state: str | None
    to_state: str | None
    attempt: int
    cloudevent: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Event:
        body = data["data"]
        time = parse_time(data["time"])
        assert time is not None
        return cls(
            id=data["id"],
            type=data["type"],
            time=time,
            task_id=body["task_id"],
            queue=body["queue"],
            kind=body["kind"],
            change=body["change"],
            from_state=body.get("from"),
            to_state=body.get("to"),
            attempt=body["attempt"],
            cloudevent=data,
        )


class Follower:
    """A stream's state without I/O: what to ask for (``request``), what each
    line of the answer means (``line``), and how long to wait before asking
    again after the connection dropped (``dropped``)."""

    def __init__(self, filters: dict[str, str], after: str | None) -> None:
        self.filters = filters
        self.last_id = after
        self._delay = RECONNECT[0]
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []

    def request(self) -> tuple[str, dict[str, str]]:
        """The path and headers of the next connection."""
        path = "/v1/events"
        if self.filters:
            path += "?" + urlencode(self.filters)
        headers = {"accept": "text/event-stream", "cache-control": "no-cache"}
        if self.last_id is not None:
            headers["last-event-id"] = self.last_id
        return path, headers

    def connected(self) -> None:
        """A new connection: a frame the last one cut off is dropped."""
        self._id, self._event, self._data = None, "message", []

    def dropped(self, why: object) -> float:
        """Seconds to wait before connecting again."""
        log.info("event stream dropped (%s); resuming after event %s", why, self.last_id)
        delay, self._delay = self._delay, min(RECONNECT[1], self._delay * 2)
        return delay

    def line(self, line: str) -> Event | None:
        """Feeds one line (without its end); the event it completes, if any
        (the server-sent events format: fields until a blank line)."""
        self._delay = RECONNECT[0]  # the connection works
        if line:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "id":
                self._id = value
            elif name == "event":
                self._event = value
            return None  # a comment (":" first, the server's keep-alive) or a field
        frame_id, kind, data = self._id, self._event, "\n".join(self._data)
        self._id, self._event, self._data = None, "message", []
        if not data:
            return None
        if kind == "error":
            error = json.loads(data).get("error", {})
            log.warning("event stream: %s: %s", error.get("code"), error.get("message"))
            return None
        event = Event.from_wire(json.loads(data))
        self.last_id = frame_id or event.id
        return event


class Lines(Protocol):
    """How a shell opens a stream: the lines of ``path``'s answer, or
    ``ChergaError`` for an answer that is an API error."""

    def stream(self, path: str, headers: dict[str, str]) -> Iterator[str]: ...


class AsyncLines(Protocol):
    def stream(self, path: str, headers: dict[str, str]) -> AsyncIterator[str]: ...


L = TypeVar("L", bound="Lines | AsyncLines")


class _Stream(Generic[L]):
    def __init__(self, source: L, follower: Follower, sleep: Any) -> None:
        self._source = source
        self._follower = follower
        self._sleep = sleep
        self._closed = False

    @property
    def last_id(self) -> str | None:
        """The id of the last event given: where a new stream would resume."""
        return self._follower.last_id

    def close(self) -> None:
        """Ends the loop at the next event (safe from another thread)."""
        self._closed = True


class EventStream(_Stream[Lines]):
    """``for event in client.events():`` — see the module documentation."""

    def __iter__(self) -> Iterator[Event]:
        follower = self._follower
        while not self._closed:
            try:
                lines = self._source.stream(*follower.request())
                follower.connected()
                for line in lines:
                    event = follower.line(line)
                    if event is not None:
                        yield event
                        if self._closed:
                            return
                why: object = "the server closed it"
            except OSError as error:
                why = error
            self._sleep(follower.dropped(why))


class AsyncEventStream(_Stream[AsyncLines]):
    """``async for event in client.events():`` — ``EventStream`` for ``AsyncClient``."""

    async def __aiter__(self) -> AsyncIterator[Event]:
        follower = self._follower
        while not self._closed:
            why: object = "the server closed it"
            try:
                lines = self._source.stream(*follower.request())
                follower.connected()
                async for line in lines:
                    if (event := follower.line(line)) is None:
                        continue
                    yield event
                    if self._closed:
                        return
            except OSError as error:
                why = error
            await self._sleep(follower.dropped(why))
