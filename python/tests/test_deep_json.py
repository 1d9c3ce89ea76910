"""A task whose payload is JSON nested deeper than Python's parser goes (a
few thousand levels and more) does not stop a worker: it is nacked with an
error that says why, and the worker goes on with the other tasks."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from cherga import AsyncClient, AsyncWorker, Client, State, Task, Worker
from cherga._core import _tasks, decode
from tests.harness import Server, cherga_bin, unique_queue, wait_until

DEEP = 100_000


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture(scope="module")
def deep_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that stores deeply nested payloads. Servers that limit the
    depth of request bodies (``--max-json-depth``) are started with a limit
    above the test's depth, to stand for tasks stored before such a limit or
    under a high one."""
    help_text = subprocess.run([str(cherga_bin()), "serve", "--help"], capture_output=True, text=True).stdout
    env_name = None
    if "--max-json-depth" in help_text:
        found = re.search(r"--max-json-depth\b.*?\[env: (\w+)=", help_text, re.S)
        assert found, "`cherga serve --max-json-depth` has no environment variable to set it through"
        env_name = found.group(1)
    with pytest.MonkeyPatch.context() as env:
        if env_name:
            env.setenv(env_name, str(2 * DEEP))
        server = Server(tmp_path_factory.mktemp("deep") / "server").start()
    yield server
    server.stop()


def enqueue_raw(server: Server, queue: str, kind: str, payload_json: str) -> str:
    """Enqueues a task whose payload is the JSON text given (the client
    cannot encode such a payload itself)."""
    body = f'{{"kind": "{kind}", "payload": {payload_json}, "max_attempts": 1}}'
    response = httpx.post(
        f"{server.url}/v1/queues/{queue}/tasks",
        content=body.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 201, response.text[:300]
    # The answer echoes the payload: too deep for json.loads too.
    task_id = re.match(r'\{"id":"([^"]+)"', response.text)
    assert task_id, response.text[:300]
    return task_id.group(1)


def test_the_client_reads_a_deep_task_and_says_why_its_payload_is_missing(deep_server: Server) -> None:
    queue = unique_queue("deep-read")
    deep_id = enqueue_raw(deep_server, queue, "deep", nested(DEEP))
    with Client(deep_server.url) as client:
        task = client.get_task(deep_id)
        assert task.id == deep_id and task.kind == "deep" and task.state == State.READY
        assert task.payload is None
        assert task.decode_error is not None and "payload" in task.decode_error and "nested" in task.decode_error
        # A page that holds it decodes too, and only that task is marked.
        fine = client.enqueue(queue, "fine", {"a": [1, {"b": "[[[{{"}]})
        page = client.list_tasks(queue)
        assert [t.id for t in page.tasks] == [deep_id, fine.id]
        assert page.tasks[1].payload == {"a": [1, {"b": "[[[{{"}]} and page.tasks[1].decode_error is None


def test_a_worker_nacks_deep_tasks_and_keeps_polling(deep_server: Server) -> None:
    queue = unique_queue("deep-worker")
    with Client(deep_server.url) as client:
        before = client.enqueue(queue, "echo", {"n": 1}).id
        deep_ids = [enqueue_raw(deep_server, queue, "echo", nested(depth)) for depth in (5_000, DEEP)]
        after = client.enqueue(queue, "echo", {"n": 2}).id
        worker = Worker(queue, client=client, concurrency=2, prefetch=2, wait_ms=200)
        ran = []

        @worker.task("echo")
        def echo(task: Task) -> object:
            ran.append(task.id)
            return task.payload

        worker.start()
        try:
            wait_until(
                lambda: all(client.get_task(i).finished for i in [before, *deep_ids, after]),
                timeout=30,
                what="every task reported",
            )
            # Still polling: a task enqueued now is run too.
            late = client.enqueue(queue, "echo", {"n": 3}).id
            wait_until(lambda: client.get_task(late).finished, what="the task enqueued after the deep ones")
            assert worker.alive and worker.crashed is None
        finally:
            worker.stop()
            assert worker.join(15)
        assert worker.crashed is None
        assert sorted(ran) == sorted([before, after, late])
        for task_id in deep_ids:
            task = client.get_task(task_id)
            assert task.state == State.DEAD, task
            assert "cannot decode" in task.last_error and "nested" in task.last_error
        assert client.get_task(after).result == {"n": 2}


def test_an_async_worker_nacks_deep_tasks_and_keeps_polling(deep_server: Server) -> None:
    queue = unique_queue("deep-async")
    deep_id = enqueue_raw(deep_server, queue, "echo", nested(DEEP))

    async def main() -> tuple[Task, Task]:
        async with AsyncClient(deep_server.url) as client:
            worker = AsyncWorker(queue, client=client, wait_ms=200)

            @worker.task("echo")
            async def echo(task: Task) -> object:
                return task.payload

            serving = asyncio.create_task(worker.serve())
            after = await client.enqueue(queue, "echo", {"n": 2})
            deadline = time.monotonic() + 20
            while not ((await client.get_task(deep_id)).finished and (await client.get_task(after.id)).finished):
                assert time.monotonic() < deadline and not serving.done()
                await asyncio.sleep(0.05)
            worker.stop()
            await asyncio.wait_for(serving, 10)
            return await client.get_task(deep_id), await client.get_task(after.id)

    deep, after = asyncio.run(main())
    assert deep.state == State.DEAD and "cannot decode" in deep.last_error
    assert after.state == State.SUCCEEDED and after.result == {"n": 2}


def test_lease_and_consume_skip_deep_tasks(deep_server: Server) -> None:
    queue = unique_queue("deep-lease")
    with Client(deep_server.url) as client:
        deep_id = enqueue_raw(deep_server, queue, "k", nested(DEEP))
        fine = client.enqueue(queue, "k", {"n": 1})
        with client.lease(queue, wait_ms=5_000) as task:
            assert task is not None and task.id == fine.id
            task.result = "ok"
        assert client.get_task(deep_id).state == State.DEAD
        assert client.get_task(fine.id).result == "ok"

        deep_id = enqueue_raw(deep_server, queue, "k", nested(DEEP))
        fine = client.enqueue(queue, "k", {"n": 2})
        consumer = client.consume(queue, wait_ms=10_000)
        seen = []
        for task in consumer:
            seen.append(task.id)
            consumer.stop()
        assert seen == [fine.id]
        assert client.get_task(deep_id).state == State.DEAD


# -- the decoder, without a server ----------------------------------------------


def task_json(task_id: str, payload: str, result: str = "null") -> str:
    return (
        f'{{"id": "{task_id}", "queue": "q", "kind": "k", "payload": {payload}, "priority": 0,'
        f' "run_at": "2026-11-28T04:51:32.161Z", "idempotency_key": null, "group": null,'
        f' "max_attempts": 25, "attempts": 1, "state": "succeeded", "result": {result},'
        f' "last_error": null, "created_at": "2026-11-28T04:51:32.161Z",'
        f' "updated_at": "2026-11-28T04:51:32.161Z"}}'
    )


def test_the_decoder_cuts_only_what_is_too_deep() -> None:
    # Deep, but not too deep for the parser: kept whole.
    tricky = json.dumps({"s": '"]]]\\"[[[{', "deep_enough": json.loads(nested(400))})
    body = (
        '{"tasks": ['
        + task_json("a", nested(DEEP))
        + ", "
        + task_json("b", tricky, result='{"x": ' + nested(3_000) + "}")
        + ", "
        + task_json("c", tricky)
        + "]}"
    )
    a, b, c = _tasks(decode(200, {}, body.encode()))
    assert a.payload is None and "payload" in (a.decode_error or "")
    assert b.payload == json.loads(tricky) and b.result is None and "result" in (b.decode_error or "")
    assert c.payload == json.loads(tricky) and c.decode_error is None


def test_the_decoder_leaves_brackets_in_strings_alone() -> None:
    deep = task_json("a", nested(DEEP))
    text = '{"tasks": [' + task_json("b", json.dumps(nested(DEEP))) + ", " + deep + "]}"
    b, a = _tasks(decode(200, {}, text.encode()))
    assert b.payload == nested(DEEP) and b.decode_error is None
    assert a.payload is None and a.decode_error is not None
