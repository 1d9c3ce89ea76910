"""The event stream (``client.events()``) against the real binary, and the
server-sent events parsing on its own."""

from __future__ import annotations

import asyncio
import threading
import time

from cherga import AsyncClient, Client, Event
from cherga.events import Follower
from tests.harness import Server, wait_until


def test_the_stream_gives_each_transition_and_resumes_after_the_last_id(client: Client, queue: str) -> None:
    stream = client.events(queue=queue, after="0")
    seen: list[Event] = []
    task = client.enqueue(queue, "k", {"n": 1})
    leased = client.lease_tasks(queue)
    client.ack(leased[0], {"ok": True})

    def follow() -> None:
        for event in stream:
            seen.append(event)
            if len(seen) == 3:
                stream.close()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    reader.join(15)
    assert not reader.is_alive(), seen
    assert [e.change for e in seen] == ["enqueued", "leased", "acked"]
    assert {e.task_id for e in seen} == {task.id} and {e.queue for e in seen} == {queue}
    assert seen[-1].type == "dev.cherga.task.acked" and seen[-1].to_state == "succeeded"
    assert seen[-1].cloudevent["specversion"] == "1.0"
    assert stream.last_id == seen[-1].id

    # A new stream after the last id gives only what came later.
    later = client.events(queue=queue, after=stream.last_id)
    client.cancel(client.enqueue(queue, "k", {"n": 2}).id)
    got: list[str] = []
    for event in later:
        got.append(event.change)
        if len(got) == 2:
            break
    assert got == ["enqueued", "cancelled"]


def test_the_async_stream_follows_the_filters(server: Server, queue: str) -> None:
    async def main() -> list[Event]:
        async with AsyncClient(server.url) as client:
            await client.enqueue(queue, "skip")
            wanted = await client.enqueue(queue, "want")
            events: list[Event] = []
            async for event in client.events(queue=queue, kind="want", after="0"):
                events.append(event)
                break
            assert events[0].task_id == wanted.id
            return events

    events = asyncio.run(asyncio.wait_for(main(), 15))
    assert [e.kind for e in events] == ["want"]


def test_the_stream_resumes_with_last_event_id_after_the_server_restarts(own_server: Server) -> None:
    queue = "restarted"
    with Client(own_server.url) as client:
        stream = client.events(queue=queue, after="0")
        stream._sleep = lambda seconds: time.sleep(0.05)  # reconnect soon
        first = client.enqueue(queue, "k", key="one").id
        changes: list[tuple[str, str]] = []
        iterator = iter(stream)
        event = next(iterator)
        changes.append((event.task_id, event.change))
        own_server.stop()
        own_server.start()
        wait_until(lambda: client.health(), what="the server back")
        second = client.enqueue(queue, "k", key="two").id
        event = next(iterator)
        changes.append((event.task_id, event.change))
    assert changes == [(first, "enqueued"), (second, "enqueued")]


def test_the_parser_reads_frames_comments_and_error_frames() -> None:
    follower = Follower({}, None)
    lines = [
        ": keep-alive",
        "",
        "event: error",
        'data: {"error": {"code": "events_expired", "message": "gone"}}',
        "",
        "id: 7",
        "event: acked",
        'data: {"specversion": "1.0", "id": "7", "type": "dev.cherga.task.acked", "time": "2026-01-01T00:00:00Z",',
        'data:  "data": {"task_id": "t", "queue": "q", "kind": "k", "change": "acked", "from": "running",'
        ' "to": "succeeded", "attempt": 1}}',
        "",
    ]
    events = [e for e in map(follower.line, lines) if e is not None]
    assert [(e.id, e.change, e.from_state, e.to_state) for e in events] == [("7", "acked", "running", "succeeded")]
    assert follower.last_id == "7"
    path, headers = follower.request()
    assert path == "/v1/events" and headers["last-event-id"] == "7"
