"""The asyncio face against the real server, and the shared retry core driven
through both faces with a scripted transport (503s, resets)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from cherga import (
    AsyncClient,
    Client,
    Dead,
    IdempotencyKeyReused,
    InternalError,
    LeaseLost,
    Retry,
    State,
    TaskNotFound,
    Unavailable,
)
from tests.harness import Server


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_async_client_round_trip(server: Server, queue: str) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            tasks = await asyncio.gather(*(client.enqueue(queue, "k", {"i": i % 3}, key=f"k{i % 3}") for i in range(9)))
            assert len({t.id for t in tasks}) == 3
            with pytest.raises(IdempotencyKeyReused):
                await client.enqueue(queue, "k", {"i": 99}, key="k0")
            leased = await client.lease_tasks(queue, max=10, lease_ms=5_000)
            assert len(leased) == 3
            await client.extend(leased[0])
            await client.nack(leased[1], "again", retry_in_ms=0)
            with pytest.raises(LeaseLost):
                await client.ack(leased[1])
            done = await client.ack(leased[0], {"ok": 1})
            assert done.state == State.SUCCEEDED and done.result == {"ok": 1}
            with pytest.raises(TaskNotFound):
                await client.get_task("01890000-0000-7000-8000-000000000000")
            q = await client.get_queue(queue)
            assert q.counts.succeeded == 1 and q.counts.running == 1

    run(main())


def test_async_lease_context_acks_and_nacks(server: Server, queue: str) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            await client.configure_queue(queue, backoff={"initial_ms": 60_000})
            ok = await client.enqueue(queue, "ok")
            async with client.lease(queue, wait_ms=2_000) as task:
                assert task is not None and task.id == ok.id
                task.result = {"done": True}
            assert (await client.get_task(ok.id)).result == {"done": True}

            bad = await client.enqueue(queue, "bad")
            with pytest.raises(KeyError):
                async with client.lease(queue, wait_ms=2_000) as task:
                    raise KeyError("missing")
            failed = await client.get_task(bad.id)
            assert failed.state == State.SCHEDULED and "KeyError: 'missing'" in failed.last_error

            gone = await client.enqueue(queue, "gone")
            async with client.lease(queue, wait_ms=2_000) as task:
                assert task is not None and task.id == gone.id
                raise Dead("card closed")  # swallowed: it says what to do
            dead = await client.get_task(gone.id)
            assert dead.state == State.DEAD and dead.last_error == "card closed"

            async with client.lease(queue, wait_ms=100) as nothing:
                assert nothing is None

    run(main())


def test_async_consume(server: Server, queue: str) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            ids = [(await client.enqueue(queue, "k", i)).id for i in range(3)]
            seen = []
            async with client.consume(queue, wait_ms=300) as tasks:
                async for task in tasks:
                    seen.append(task.id)
                    task.result = task.payload * 10
            assert seen == ids
            results = [(await client.get_task(i)).result for i in ids]
            assert results == [0, 10, 20]

            left = await client.enqueue(queue, "left")
            async with client.consume(queue, wait_ms=300) as tasks:
                async for _task in tasks:
                    break
            back = await client.get_task(left.id)
            assert back.state in (State.SCHEDULED, State.READY) and back.last_error.startswith("handed back")

    run(main())


# -- the shared retry core, through both faces ---------------------------------

TASK = {
    "id": "01a2207e-84c1-7bf8-8000-000000000001",
    "queue": "q",
    "kind": "k",
    "payload": None,
    "priority": 0,
    "run_at": "2026-11-28T04:51:32.161Z",
    "idempotency_key": "x",
    "group": None,
    "max_attempts": 25,
    "attempts": 0,
    "state": "ready",
    "result": None,
    "last_error": None,
    "created_at": "2026-11-28T04:51:32.161Z",
    "updated_at": "2026-11-28T04:51:32.161Z",
    "finished_at": None,
}


class Script:
    """Answers requests from a list of steps: an int status (with an API error
    body), "reset" (a dropped connection) or "ok" (201 with a task)."""

    def __init__(self, *steps: object) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if step == "reset":
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        if step == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if step == "ok":
            return httpx.Response(201, json=TASK)
        code = {503: "unavailable", 500: "internal", 409: "lease_lost"}[step]
        return httpx.Response(step, json={"error": {"code": code, "message": "scripted"}})

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


def both_faces(script: Script, call):  # noqa: ANN001, ANN201
    """Runs ``call(client)`` through Client and AsyncClient with the same
    script; returns both outcomes (value or exception)."""
    outcomes = []
    for face in ("sync", "async"):
        steps = list(script.steps)
        script.requests.clear()
        try:
            if face == "sync":
                with Client("http://cherga.test", transport=httpx.MockTransport(script), retries=3) as client:
                    client._settings.retry_policy.initial_delay = 0.001
                    outcomes.append(call(client))
            else:

                async def main():  # noqa: ANN202
                    async with AsyncClient("http://cherga.test", transport=httpx.MockTransport(script), retries=3) as c:
                        c._settings.retry_policy.initial_delay = 0.001
                        return await call(c)

                outcomes.append(asyncio.run(main()))
        except Exception as error:  # noqa: BLE001
            outcomes.append(error)
        outcomes.append(len(script.requests))
        script.steps = steps
    return outcomes


def test_503_and_resets_are_retried_with_the_same_key() -> None:
    script = Script(503, "reset", "refused", "ok")
    sync_task, sync_tries, async_task, async_tries = both_faces(script, lambda c: c.enqueue("q", "k"))
    assert sync_tries == async_tries == 4
    assert sync_task.id == async_task.id == TASK["id"]
    keys = {b["idempotency_key"] for b in script.bodies()}
    assert len(keys) == 1  # every try of one call carries the same generated key


def test_retries_are_bounded() -> None:
    script = Script(503, 503, 503, 503, 503)
    sync_error, sync_tries, async_error, async_tries = both_faces(script, lambda c: c.enqueue("q", "k"))
    assert sync_tries == async_tries == 4  # the first try and 3 retries
    for error in (sync_error, async_error):
        assert isinstance(error, Unavailable) and error.status == 503 and error.message == "scripted"


def test_errors_that_are_answers_are_not_retried() -> None:
    for status, cls in ((500, InternalError), (409, LeaseLost)):
        script = Script(status, "ok")
        sync_error, sync_tries, async_error, async_tries = both_faces(script, lambda c: c.ack("t", lease="l"))
        assert sync_tries == async_tries == 1
        assert isinstance(sync_error, cls) and isinstance(async_error, cls)


def test_reset_is_not_resent_for_retry_of_dead_but_refused_is() -> None:
    script = Script("reset", "ok")
    sync_error, sync_tries, _, async_tries = both_faces(script, lambda c: c.retry("t"))
    assert sync_tries == async_tries == 1 and isinstance(sync_error, Unavailable)
    script = Script("refused", "ok")
    sync_task, sync_tries, _, async_tries = both_faces(script, lambda c: c.retry("t"))
    assert sync_tries == async_tries == 2 and sync_task.id == TASK["id"]


def test_retry_and_dead_are_exported() -> None:
    assert Retry("x", retry_in_ms=5).retry_in_ms == 5
    assert Dead("y").message == "y"
