"""JSON nested deeper than Python's parser goes (a few thousand levels and
more).

cherga refuses such bodies now (``--max-json-depth``, at most 128 levels), but
the client must still survive a deep document: a task stored by an older
version, or sent by any server that does not limit the depth. Such answers
come from a fake server here (``tests/fake_cherga.py``, checked against the
real one's shapes): a worker or a lease helper nacks the task with an error
that says why, and goes on with the other tasks. Against the real binary, a
too-deep enqueue is refused with ``InvalidJson``, and a worker whose handler
returns a too-deep result nacks that task and keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from cherga import AsyncClient, AsyncWorker, Client, InvalidJson, State, Task, Worker
from cherga._core import _tasks, decode
from tests.fake_cherga import FakeCherga, Request
from tests.harness import Server, unique_queue, wait_until

DEEP = 100_000


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.fixture
def fake() -> FakeCherga:
    return FakeCherga()


@pytest.fixture
def fake_client(fake: FakeCherga) -> Iterator[Client]:
    with Client("http://cherga.test", transport=fake.transport()) as client:
        yield client


def undecodable_nacks(fake: FakeCherga, task_ids: list[str]) -> list[Request]:
    """The nacks the fake received for ``task_ids``, each checked: sent with
    the lease the task was delivered under, saying why it cannot run."""
    nacks = [r for r in fake.requests_to("/nack") if r.path.split("/")[3] in task_ids]
    tokens = fake.lease_tokens()
    for nack in nacks:
        task_id = nack.path.split("/")[3]
        assert nack.body["lease"] == tokens[task_id][-1], nack
        assert nack.body["dead"] is False, nack
        error = nack.body["error"]
        assert error.startswith("the Python client cannot decode this task:"), error
        assert "payload" in error and "nested too deeply" in error, error
    return nacks


def leases_after(fake: FakeCherga, request: Request) -> int:
    """How many lease requests the fake received after ``request``."""
    return len(fake.requests_to("/lease", after=request))


# -- a fake server serves deep documents -------------------------------------


def test_the_client_reads_a_deep_task_and_says_why_its_payload_is_missing(
    fake: FakeCherga, fake_client: Client
) -> None:
    deep_id = fake.store("q", "deep", nested(DEEP))
    task = fake_client.get_task(deep_id)
    assert task.id == deep_id and task.kind == "deep" and task.state == State.READY
    assert task.payload is None
    assert task.decode_error is not None and "payload" in task.decode_error and "nested" in task.decode_error
    # A page that holds it decodes too, and only that task is marked.
    fine = fake_client.enqueue("q", "fine", {"a": [1, {"b": "[[[{{"}]})
    page = fake_client.list_tasks("q")
    assert [t.id for t in page.tasks] == [deep_id, fine.id]
    assert page.tasks[1].payload == {"a": [1, {"b": "[[[{{"}]} and page.tasks[1].decode_error is None
    # A deep result is cut the same way, and the payload kept.
    fake.store_result(fine.id, '{"x": ' + nested(DEEP) + "}")
    done = fake_client.get_task(fine.id)
    assert done.payload == {"a": [1, {"b": "[[[{{"}]} and done.result is None
    assert done.decode_error is not None and "result" in done.decode_error


def test_a_worker_nacks_deep_tasks_and_keeps_polling(fake: FakeCherga, fake_client: Client) -> None:
    client = fake_client
    before = client.enqueue("q", "echo", {"n": 1}, max_attempts=1).id
    deep_ids = [fake.store("q", "echo", nested(depth)) for depth in (5_000, DEEP)]
    after = client.enqueue("q", "echo", {"n": 2}, max_attempts=1).id
    worker = Worker("q", client=client, concurrency=2, prefetch=2, wait_ms=200)
    ran = []

    @worker.task("echo")
    def echo(task: Task) -> object:
        ran.append(task.id)
        return task.payload

    worker.start()
    try:
        wait_until(lambda: len(undecodable_nacks(fake, deep_ids)) == 2, what="a nack of each deep task")
        wait_until(lambda: all(client.get_task(i).finished for i in (before, after)), what="the other tasks")
        # Still polling: lease requests go on after the last nack, and a task
        # that arrives now is run too.
        last_nack = undecodable_nacks(fake, deep_ids)[-1]
        wait_until(lambda: leases_after(fake, last_nack) >= 2, what="lease requests after the nacks")
        late = client.enqueue("q", "echo", {"n": 3}).id
        wait_until(lambda: client.get_task(late).finished, what="the task enqueued after the deep ones")
        assert worker.alive and worker.crashed is None
    finally:
        worker.stop()
        assert worker.join(15)
    assert worker.crashed is None
    assert sorted(ran) == sorted([before, after, late])
    for task_id in deep_ids:
        task = client.get_task(task_id)
        assert task.state == State.DEAD and task.attempts == 1, task
        assert task.last_error is not None and "cannot decode" in task.last_error
    assert client.get_task(after).result == {"n": 2}


def test_an_async_worker_nacks_deep_tasks_and_keeps_polling(fake: FakeCherga) -> None:
    deep_id = fake.store("q", "echo", nested(DEEP))

    async def main() -> Task:
        async with AsyncClient("http://cherga.test", transport=fake.async_transport()) as client:
            worker = AsyncWorker("q", client=client, wait_ms=200)

            @worker.task("echo")
            async def echo(task: Task) -> object:
                return task.payload

            serving = asyncio.create_task(worker.serve())

            async def until(check: Callable[[], Any], what: str) -> None:
                deadline = time.monotonic() + 15
                while not check():
                    assert not serving.done(), f"the worker stopped before {what}"
                    assert time.monotonic() < deadline, f"timed out waiting for {what}"
                    await asyncio.sleep(0.02)

            await until(lambda: undecodable_nacks(fake, [deep_id]), "the nack of the deep task")
            [nack] = undecodable_nacks(fake, [deep_id])
            await until(lambda: leases_after(fake, nack) >= 2, "lease requests after the nack")
            after = await client.enqueue("q", "echo", {"n": 2})
            await until(lambda: fake.state(after.id) == "succeeded", "the task after the deep one")
            worker.stop()
            await asyncio.wait_for(serving, 10)
            return await client.get_task(after.id)

    after = asyncio.run(main())
    assert after.state == State.SUCCEEDED and after.result == {"n": 2}


def test_lease_and_consume_skip_deep_tasks(fake: FakeCherga, fake_client: Client) -> None:
    client = fake_client
    deep_id = fake.store("q", "k", nested(DEEP))
    fine = client.enqueue("q", "k", {"n": 1})
    with client.lease("q", wait_ms=5_000) as task:
        assert task is not None and task.id == fine.id
        task.result = "ok"
    assert len(undecodable_nacks(fake, [deep_id])) == 1
    assert client.get_task(deep_id).state == State.DEAD
    assert client.get_task(fine.id).result == "ok"

    deep_id = fake.store("q", "k", nested(DEEP))
    fine = client.enqueue("q", "k", {"n": 2})
    consumer = client.consume("q", wait_ms=10_000)
    seen = []
    for task in consumer:
        seen.append(task.id)
        consumer.stop()
    assert seen == [fine.id]
    assert len(undecodable_nacks(fake, [deep_id])) == 1
    assert client.get_task(deep_id).state == State.DEAD


# -- the fake answers as cherga does -----------------------------------------


def shape(value: Any) -> Any:
    """The keys of ``value`` all the way down (a list by its first item),
    and the JSON type of everything else."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def conversation(http: httpx.Client, queue: str) -> list[Any]:
    """The answers to one task's life: enqueue, lease, read while running,
    nack, lease again with an ack of another task, read, list."""
    answers = []

    def say(method: str, path: str, body: Any = None) -> Any:
        response = http.request(method, path, json=body)
        assert response.status_code < 300, response.text
        answers.append(response.json())
        return answers[-1]

    first = say("POST", f"/v1/queues/{queue}/tasks", {"kind": "k", "payload": {"n": 1}, "idempotency_key": "a"})
    say("POST", f"/v1/queues/{queue}/tasks", {"kind": "k", "payload": {"n": 2}, "idempotency_key": "b"})
    [leased] = say("POST", f"/v1/queues/{queue}/lease", {"max": 1, "worker": "w-1"})["tasks"]
    say("GET", f"/v1/tasks/{leased['id']}")
    say("POST", f"/v1/tasks/{leased['id']}/extend", {"lease": leased["lease"]["token"], "lease_ms": 10_000})
    say(
        "POST",
        f"/v1/tasks/{leased['id']}/nack",
        {"lease": leased["lease"]["token"], "error": "no", "retry_in_ms": 60_000},
    )
    [second] = say("POST", f"/v1/queues/{queue}/lease", {"max": 1, "worker": "w-2"})["tasks"]
    ack = {"id": second["id"], "lease": second["lease"]["token"], "result": {"r": 1}}
    say("POST", f"/v1/queues/{queue}/lease", {"max": 1, "worker": "w-2", "acks": [ack]})
    say("GET", f"/v1/tasks/{first['id']}")
    say("GET", f"/v1/queues/{queue}/tasks")
    return answers


def test_the_fake_answers_in_the_shapes_cherga_does(server: Server, fake: FakeCherga) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as real:
        expected = conversation(real, unique_queue("shapes"))
    with httpx.Client(base_url="http://cherga.test", transport=fake.transport()) as faked:
        answers = conversation(faked, "q")
    assert len(answers) == len(expected)
    for n, (got, want) in enumerate(zip(answers, expected, strict=True)):
        assert shape(got) == shape(want), f"answer {n}: {json.dumps(got)} vs cherga's {json.dumps(want)}"


# -- the real server refuses deep documents ----------------------------------


def test_a_too_deep_document_is_refused_and_the_worker_keeps_serving(client: Client, queue: str) -> None:
    # Deeper than any server allows (--max-json-depth is at most 128), and
    # well within what Python encodes.
    deep = json.loads(nested(200))
    worker = Worker(queue, client=client, wait_ms=200)

    @worker.task("echo")
    def echo(task: Task) -> object:
        return task.payload

    @worker.task("deep_result")
    def deep_result(task: Task) -> object:
        return deep

    worker.start()
    try:
        first = client.enqueue(queue, "echo", {"n": 1})
        with pytest.raises(InvalidJson) as refused:
            client.enqueue(queue, "echo", deep)
        assert refused.value.status == 400 and "nested deeper than" in refused.value.message
        assert [t.id for t in client.list_tasks(queue).tasks] == [first.id], "the refused task was stored"

        # A result too deep for the server: the task is nacked with the
        # server's reason at once, not left running until its lease expires.
        too_deep = client.enqueue(queue, "deep_result", max_attempts=1)
        failed = wait_until(lambda: (t := client.get_task(too_deep.id)).finished and t, what="the deep result's task")
        assert failed.state == State.DEAD and failed.attempts == 1, failed
        assert failed.last_error is not None, failed
        assert "the server refused the handler's result" in failed.last_error, failed.last_error
        assert "nested deeper than" in failed.last_error, failed.last_error

        late = client.enqueue(queue, "echo", {"n": 2})
        done = wait_until(lambda: (t := client.get_task(late.id)).finished and t, what="the task after them")
        assert done.state == State.SUCCEEDED and done.result == {"n": 2}
        assert client.get_task(first.id).result == {"n": 1}
        assert worker.alive and worker.crashed is None
    finally:
        worker.stop()
        assert worker.join(15)


# -- the decoder, without a server ---------------------------------------------


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
