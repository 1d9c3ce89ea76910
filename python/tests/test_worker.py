"""Workers, ``client.lease()`` and ``client.consume()`` against the real
server, including worker processes killed with SIGKILL and stopped with
SIGTERM."""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cherga import (
    AsyncClient,
    AsyncWorker,
    Client,
    Dead,
    LeaseLost,
    Retry,
    State,
    Task,
    TooManyRequests,
    Unavailable,
    Worker,
)
from cherga._core import Call
from tests.harness import PYTHON, Server, subprocess_env, wait_until, wait_until_async


def finished(client: Client, task_id: str) -> Task | None:
    task = client.get_task(task_id)
    return task if task.finished else None


def renewed(client: Client, task_id: str, times: int) -> Callable[[], bool]:
    """A check for ``wait_until``: whether the task's lease has been renewed
    ``times`` times since the first call (its expiry seen to move that often)."""
    expiries: set[object] = set()

    def check() -> bool:
        expiries.add(client.get_task(task_id).lease_expires_at)
        return len(expiries) > times

    return check


def run_worker_until(worker: Worker, condition, timeout: float = 15.0) -> None:  # noqa: ANN001
    worker.start()
    try:
        wait_until(condition, timeout=timeout, what="the worker's work")
    finally:
        worker.stop()
        assert worker.join(15), "worker did not stop"


# -- Worker (threads) -----------------------------------------------------------


def test_worker_dispatches_by_kind_and_reports_outcomes(client: Client, queue: str) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 60_000})
    worker = Worker(queue, client=client, concurrency=2, wait_ms=200)

    @worker.task("charge_card")
    def charge_card(task: Task) -> dict:
        return {"charged": task.payload["cents"]}

    @worker.task()  # kind defaults to the function's name
    def explode(task: Task) -> None:
        raise RuntimeError(f"card {task.payload} declined")

    @worker.task("later")
    def later(task: Task) -> None:
        raise Retry("gateway busy", retry_in_ms=30_000)

    @worker.task("give_up")
    def give_up(task: Task) -> None:
        raise Dead("card closed")

    @worker.task("not_json")
    def not_json(task: Task) -> object:
        return object()

    @worker.task("nan")
    def nan(task: Task) -> object:
        return {"x": float("nan")}  # Python's json writes NaN; JSON has none

    @worker.task("too_deep")
    def too_deep(task: Task) -> object:
        result: list = []
        for _ in range(100_000):
            result = [result]
        return result

    ids = {
        kind: client.enqueue(queue, kind, payload).id
        for kind, payload in [
            ("charge_card", {"cents": 1999}),
            ("explode", 42),
            ("later", None),
            ("give_up", None),
            ("not_json", None),
            ("nan", None),
            ("too_deep", None),
            ("unknown_kind", None),
        ]
    }

    def all_reported() -> bool:
        return all(client.get_task(i).state != State.RUNNING and client.get_task(i).attempts == 1 for i in ids.values())

    run_worker_until(worker, all_reported)
    tasks = {kind: client.get_task(i) for kind, i in ids.items()}
    assert tasks["charge_card"].state == State.SUCCEEDED
    assert tasks["charge_card"].result == {"charged": 1999}
    explode_error = tasks["explode"].last_error
    assert tasks["explode"].state == State.SCHEDULED
    assert "Traceback (most recent call last)" in explode_error and "RuntimeError: card 42 declined" in explode_error
    assert tasks["later"].state == State.SCHEDULED and tasks["later"].last_error == "gateway busy"
    assert (tasks["later"].run_at - tasks["later"].updated_at).total_seconds() == pytest.approx(30, abs=1)
    assert tasks["give_up"].state == State.DEAD and tasks["give_up"].last_error == "card closed"
    for kind in ("not_json", "nan", "too_deep"):
        assert tasks[kind].state == State.SCHEDULED and "not JSON" in tasks[kind].last_error, tasks[kind]
    assert tasks["unknown_kind"].state == State.SCHEDULED
    assert "no handler for kind 'unknown_kind'" in tasks["unknown_kind"].last_error


def test_worker_logs_one_line_per_task(client: Client, queue: str, caplog: pytest.LogCaptureFixture) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 60_000})
    worker = Worker(queue, client=client, wait_ms=200)

    @worker.task("ok")
    def ok(task: Task) -> int:
        return 1

    @worker.task("boom")
    def boom(task: Task) -> None:
        raise RuntimeError("declined")

    @worker.task("later")
    def later(task: Task) -> None:
        raise Retry("busy")

    @worker.task("give_up")
    def give_up(task: Task) -> None:
        raise Dead("closed")

    ids = {kind: client.enqueue(queue, kind).id for kind in ("ok", "boom", "later", "give_up")}

    def all_reported() -> bool:
        return all(client.get_task(i).state != State.RUNNING and client.get_task(i).attempts == 1 for i in ids.values())

    with caplog.at_level("DEBUG", logger="cherga.worker"):
        # The worker logs each line after its report, before join() returns.
        run_worker_until(worker, all_reported)
    lines = {r.task_id: r for r in caplog.records if getattr(r, "task_id", None) in ids.values()}
    per_task = collections.Counter(getattr(r, "task_id", None) for r in caplog.records)
    assert all(per_task[i] == 1 for i in ids.values()), per_task
    expected = {"ok": ("succeeded", "DEBUG"), "boom": ("failed", "WARNING"), "later": ("retry", "INFO")}
    expected["give_up"] = ("dead", "INFO")
    for kind, (outcome, level) in expected.items():
        record = lines[ids[kind]]
        assert (record.outcome, record.levelname, record.task_kind, record.attempt) == (outcome, level, kind, 1)
        assert record.duration_ms >= 0
        message = record.getMessage()
        assert f"id={ids[kind]}" in message and f"kind={kind}" in message and f"outcome={outcome}" in message
        assert "attempt=1" in message and "duration_ms=" in message
    assert "RuntimeError('declined')" in lines[ids["boom"]].getMessage()


@pytest.mark.parametrize("interruption", [SystemExit, KeyboardInterrupt])
def test_a_handler_raising_an_interruption_fails_with_backoff(
    client: Client, queue: str, interruption: type[BaseException]
) -> None:
    # Only a failure is retried: never at once, never without its traceback.
    client.configure_queue(queue, backoff={"initial_ms": 60_000, "jitter": 0.0})
    worker = Worker(queue, client=client, wait_ms=200)

    @worker.task("quit")
    def quit_(task: Task) -> None:
        raise interruption("from the handler")

    @worker.task("ok")
    def ok(task: Task) -> str:
        return "still working"

    quitting = client.enqueue(queue, "quit").id
    after = client.enqueue(queue, "ok").id
    run_worker_until(worker, lambda: finished(client, after) and client.get_task(quitting).attempts == 1)
    assert worker.crashed is None
    failed = client.get_task(quitting)
    assert failed.state == State.SCHEDULED, failed
    assert f"{interruption.__name__}: from the handler" in failed.last_error and "Traceback" in failed.last_error
    assert (failed.run_at - failed.updated_at).total_seconds() == pytest.approx(60, abs=1)
    assert client.get_task(after).result == "still working"


def test_async_worker_handler_raising_system_exit_fails_with_backoff(server: Server, queue: str) -> None:
    async def main() -> Task:
        async with AsyncClient(server.url) as client:
            await client.configure_queue(queue, backoff={"initial_ms": 60_000, "jitter": 0.0})
            worker = AsyncWorker(queue, client=client, wait_ms=200)

            @worker.task("quit")
            async def quit_(task: Task) -> None:
                raise SystemExit("from the handler")

            task_id = (await client.enqueue(queue, "quit")).id
            serving = asyncio.create_task(worker.serve())
            deadline = time.monotonic() + 15
            while (task := await client.get_task(task_id)).state == State.READY or task.state == State.RUNNING:
                assert time.monotonic() < deadline and not serving.done()
                await asyncio.sleep(0.05)
            worker.stop()
            await asyncio.wait_for(serving, 10)
            return task

    failed = asyncio.run(main())
    assert failed.state == State.SCHEDULED and "SystemExit: from the handler" in failed.last_error
    assert (failed.run_at - failed.updated_at).total_seconds() == pytest.approx(60, abs=1)


def test_a_429_paces_the_poller_by_its_retry_after() -> None:
    from cherga.worker import _pause

    slow_down = TooManyRequests("too many long polls", status=429, retry_after=3.0)
    assert _pause(slow_down, 0.2) == 3.0
    assert _pause(slow_down, 5.0) == 5.0
    assert _pause(TooManyRequests("no header", status=429), 0.4) == 0.4
    assert _pause(Unavailable("busy", status=503), 0.4) == 0.4


def test_worker_runs_concurrency_handlers_at_once(client: Client, queue: str) -> None:
    worker = Worker(queue, client=client, concurrency=4, wait_ms=200)
    running = 0
    most = 0
    lock = threading.Lock()

    @worker.task("work")
    def work(task: Task) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        # Held until four run at once (the most the worker may run), which the
        # test must then see, and never more.
        wait_until(lambda: most >= 4, what="four handlers running at once")
        with lock:
            running -= 1
        return task.payload

    ids = [client.enqueue(queue, "work", i).id for i in range(8)]
    run_worker_until(worker, lambda: all(finished(client, i) for i in ids))
    assert most == 4
    assert [client.get_task(i).result for i in ids] == list(range(8))


def request_kind(call: Call[Any]) -> str:
    """The client method a request stands for (``lease_and_ack``, ``ack``...)."""
    if call.path.endswith("/lease"):
        return "lease_and_ack" if "acks" in call.json else "lease_tasks"
    if call.path == "/v1/tasks/ack":
        return "ack_many"
    return call.path.rsplit("/", 1)[-1]


def count_calls(client: Client | AsyncClient, names: tuple[str, ...]) -> collections.Counter[str]:
    """Counts the requests ``client`` (sync or async) sends from now on, by
    the method they stand for, of these ``names``."""
    calls: collections.Counter[str] = collections.Counter()
    transport = client._http
    send = transport.send

    def count(call: Call[Any]) -> None:
        if (kind := request_kind(call)) in names:
            calls[kind] += 1

    if inspect.iscoroutinefunction(send):

        async def counted_async(call: Call[Any], timeout: float) -> object:
            count(call)
            return await send(call, timeout)

        transport.send = counted_async  # type: ignore[method-assign]
    else:

        def counted(call: Call[Any], timeout: float) -> object:
            count(call)
            return send(call, timeout)

        transport.send = counted  # type: ignore[method-assign]
    return calls


def test_a_busy_worker_acks_each_task_with_its_next_lease(client: Client, queue: str) -> None:
    worker = Worker(queue, client=client, concurrency=1, wait_ms=200)
    calls = count_calls(client, ("ack", "lease_tasks", "lease_and_ack"))

    @worker.task("work")
    def work(task: Task) -> dict:
        return {"n": task.payload}

    ids = [client.enqueue(queue, "work", i).id for i in range(10)]
    run_worker_until(worker, lambda: all(finished(client, i) for i in ids))
    assert [client.get_task(i).result for i in ids] == [{"n": i} for i in range(10)]
    # While the only slot is taken the poller waits, so every ack goes with the
    # lease request its slot allows; none needs a request of its own.
    assert calls["lease_and_ack"] >= 9 and calls["ack"] == 0, calls


# cherga's default --max-payload-bytes is 1 MiB.
TOO_LARGE = "x" * (1024 * 1024 + 1)


@pytest.mark.parametrize("with_next_lease", [True, False], ids=["acked-with-the-next-lease", "acked-alone"])
def test_a_result_the_server_refuses_nacks_the_task(client: Client, queue: str, with_next_lease: bool) -> None:
    # Sending it again cannot help: the task fails now, with the server's
    # reason, rather than waiting for its lease to run out (30 s) to run again.
    worker = Worker(queue, client=client, concurrency=1 if with_next_lease else 2, wait_ms=200)
    calls = count_calls(client, ("ack", "lease_and_ack", "nack"))

    @worker.task("big")
    def big(task: Task) -> str:
        # With one slot the poller cannot lease while this runs: the ack goes
        # with its next lease. With two it long-polls for the other slot, and
        # a task finishing meanwhile is acked alone.
        if not with_next_lease:
            wait_until(lambda: worker._flow.long_polling, what="the poller to long-poll")
        return TOO_LARGE

    @worker.task("echo")
    def echo(task: Task) -> object:
        return task.payload

    refused = client.enqueue(queue, "big", max_attempts=1).id
    worker.start()
    try:
        dead = wait_until(lambda: finished(client, refused), what="the task whose result was refused")
        # The worker goes on.
        after = client.enqueue(queue, "echo", {"n": 1}).id
        assert wait_until(lambda: finished(client, after), what="the next task").result == {"n": 1}
    finally:
        worker.stop()
        assert worker.join(15), "worker did not stop"
    assert worker.crashed is None
    assert dead.state == State.DEAD and dead.attempts == 1, dead
    assert dead.last_error is not None and dead.last_error.startswith("the server refused the handler's result: ")
    assert "payload_too_large: result is" in dead.last_error, dead.last_error
    assert calls["lease_and_ack" if with_next_lease else "ack"] >= 1 and calls["nack"] == 1, calls


@pytest.mark.parametrize(
    ("result", "why", "with_next_lease"),
    [(TOO_LARGE, "payload_too_large: result is", True), (json.loads("[" * 200 + "]" * 200), "invalid_json: ", False)],
    # Too deep: the whole lease request carrying the ack is refused, when the
    # ack went with one; the ack is then sent alone, and refused again.
    ids=["too-large-acked-with-the-next-lease", "too-deep"],
)
def test_an_async_worker_nacks_a_result_the_server_refuses(
    server: Server, queue: str, result: object, why: str, with_next_lease: bool
) -> None:
    async def main() -> tuple[Task, Task, collections.Counter[str]]:
        async with AsyncClient(server.url) as client:
            worker = AsyncWorker(queue, client=client, concurrency=1 if with_next_lease else 2, wait_ms=200)
            calls = count_calls(client, ("ack", "lease_and_ack", "nack"))

            @worker.task("refused")
            async def refused(task: Task) -> object:
                # As in the thread worker's test above.
                if not with_next_lease:
                    await wait_until_async(lambda: worker._flow.long_polling, what="the poller to long-poll")
                return result

            @worker.task("echo")
            async def echo(task: Task) -> object:
                return task.payload

            async def finished_async(task_id: str) -> Task | None:
                task = await client.get_task(task_id)
                return task if task.finished else None

            refused_id = (await client.enqueue(queue, "refused", max_attempts=1)).id
            serving = asyncio.create_task(worker.serve())
            dead = await wait_until_async(lambda: finished_async(refused_id), what="the refused task")
            after_id = (await client.enqueue(queue, "echo", {"n": 1})).id
            after = await wait_until_async(lambda: finished_async(after_id), what="the next task")
            worker.stop()
            await asyncio.wait_for(serving, 10)
            return dead, after, calls

    dead, after, calls = asyncio.run(main())
    assert dead.state == State.DEAD and dead.attempts == 1, dead
    assert dead.last_error is not None and dead.last_error.startswith(f"the server refused the handler's result: {why}")
    assert calls["lease_and_ack" if with_next_lease else "ack"] >= 1 and calls["nack"] == 1, calls
    assert after.result == {"n": 1}


def test_worker_extends_leases_while_a_handler_runs(client: Client, queue: str) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 10, "jitter": 0.0})
    worker = Worker(queue, client=client, lease_ms=600, wait_ms=200)

    @worker.task("slow")
    def slow(task: Task) -> str:
        # Runs until its lease (600 ms, renewed every 200 ms) was renewed four
        # times: past its first lease, which would have expired without them.
        wait_until(renewed(client, task.id, 4), what="four renewals of the lease")
        return "done"

    task_id = client.enqueue(queue, "slow").id
    run_worker_until(worker, lambda: finished(client, task_id))
    done = client.get_task(task_id)
    assert done.state == State.SUCCEEDED and done.result == "done"
    assert done.attempts == 1  # never redelivered: the heartbeat kept the lease


# -- subprocess workers: SIGKILL and SIGTERM --------------------------------------


def worker_command(target: str) -> list[str]:
    script = Path(PYTHON).parent / "cherga-worker"
    if script.exists():
        return [str(script), target, "--log-level", "WARNING"]
    return [PYTHON, "-m", "cherga.cli", target, "--log-level", "WARNING"]


def start_worker(queue: str, marks: Path, *extra: str, lease_ms: int = 1000) -> subprocess.Popen[bytes]:
    env = subprocess_env(TEST_QUEUE=queue, TEST_MARKS=str(marks), TEST_LEASE_MS=str(lease_ms))
    return subprocess.Popen(
        [*worker_command("tests.workers.effects:worker"), *extra],
        env=env,
        cwd=marks,
        stdout=subprocess.DEVNULL,
        stderr=open(marks / f"worker-{time.monotonic_ns()}.log", "wb"),
    )


def effects(marks: Path) -> list[str]:
    log = marks / "effects.log"
    return log.read_text().splitlines() if log.exists() else []


def test_killed_worker_task_is_redelivered_after_lease_expiry_and_done_once(
    client: Client, queue: str, tmp_path: Path
) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 50, "jitter": 0.0})
    task_id = client.enqueue(queue, "charge", {"hold_first_attempt": True}).id

    first = start_worker(queue, tmp_path, lease_ms=1000)
    try:
        wait_until(lambda: (tmp_path / f"started-{task_id}-1").exists(), what="the first attempt to start")
        # Past the first lease (renewed every third of it): only the heartbeat keeps it alive.
        wait_until(renewed(client, task_id, 4), what="four renewals of the lease")
        assert client.get_task(task_id).state == State.RUNNING
        first.send_signal(signal.SIGKILL)
        first.wait(5)
        killed_at = time.monotonic()
        # The dead worker's lease is still valid for a while: nobody else may run it yet.
        assert client.get_task(task_id).state == State.RUNNING
    finally:
        first.kill()

    second = start_worker(queue, tmp_path, lease_ms=1000)
    try:
        done = wait_until(lambda: finished(client, task_id), timeout=15, what="the redelivered task")
        redelivered_after = time.monotonic() - killed_at
        assert (tmp_path / f"started-{task_id}-2").exists()
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        second.kill()
    assert done.state == State.SUCCEEDED and done.attempts == 2 and done.result == {"attempt": 2}
    assert effects(tmp_path) == [f"{task_id} 2"]  # the effect happened exactly once
    assert redelivered_after < 10


def test_sigterm_finishes_running_tasks_and_hands_back_unstarted_ones(
    client: Client, queue: str, tmp_path: Path
) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 60_000})
    ids = [client.enqueue(queue, "charge", {"hold_first_attempt": True}).id for _ in range(3)]
    proc = start_worker(queue, tmp_path, "--concurrency", "1", "--prefetch", "2", lease_ms=5000)
    try:
        # One task running, two leased ahead and waiting for the thread.
        wait_until(lambda: client.get_queue(queue).counts.running == 3, what="three leased tasks")
        started = wait_until(
            lambda: [i for i in ids if (tmp_path / f"started-{i}-1").exists()], what="one started task"
        )
        assert len(started) == 1
        # The running task finishes only once the worker was told to stop.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    [running_one] = started
    assert client.get_task(running_one).state == State.SUCCEEDED
    assert effects(tmp_path) == [f"{running_one} 1"]
    for task_id in set(ids) - {running_one}:
        task = client.get_task(task_id)
        # Handed back for an immediate retry, not left to its lease or its backoff.
        assert task.state in (State.READY, State.SCHEDULED), task
        assert task.last_error == "handed back: the worker is shutting down"
        assert task.run_at <= task.updated_at
        assert not (tmp_path / f"started-{task_id}-1").exists()
    assert client.get_queue(queue).counts.running == 0


def test_cherga_worker_names_a_target_it_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "broken_module.py").write_text("import math\n\nmath.nope()\n")
    (tmp_path / "plain_module.py").write_text("worker = 42\n\ndef factory(x):\n    pass\n")
    (tmp_path / "bad_syntax.py").write_text("def f(:\n")
    for target, says in [
        ("tests.nope:worker", "cannot import tests.nope: No module named 'tests.nope'"),
        ("tests.workers.effects:nope", "tests.workers.effects has no attribute 'nope'"),
        ("plain_module:worker", "plain_module:worker is not a cherga Worker or AsyncWorker (it is an int)"),
        ("broken_module", "cannot import broken_module: AttributeError: module 'math' has no attribute 'nope'"),
        (":worker", "expected module:attr"),
        ("bad_syntax", "cannot import bad_syntax: SyntaxError: invalid syntax ("),
        ("plain_module:factory", "plain_module:factory is not a Worker, and calling it failed: TypeError: factory()"),
    ]:
        proc = subprocess.run(
            worker_command(target), env=subprocess_env(), cwd=tmp_path, capture_output=True, timeout=30, text=True
        )
        assert proc.returncode == 2, (target, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("cherga-worker: ") and says in proc.stderr, proc.stderr
    assert (
        "broken_module.py:3"
        in subprocess.run(
            worker_command("broken_module"), env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True
        ).stderr
    )


# -- client.lease() ------------------------------------------------------------


def test_lease_context_acks_with_the_result(client: Client, queue: str) -> None:
    task_id = client.enqueue(queue, "k", {"n": 2}).id
    with client.lease(queue, wait_ms=2_000) as task:
        assert task is not None and task.id == task_id and task.state == State.RUNNING
        task.result = task.payload["n"] * 21
    done = client.get_task(task_id)
    assert done.state == State.SUCCEEDED and done.result == 42


def test_lease_context_nacks_with_the_traceback_and_reraises(client: Client, queue: str) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 60_000})
    task_id = client.enqueue(queue, "k").id
    with pytest.raises(ZeroDivisionError):
        with client.lease(queue, wait_ms=2_000):
            1 / 0  # noqa: B018
    failed = client.get_task(task_id)
    assert failed.state == State.SCHEDULED
    assert "Traceback" in failed.last_error and "ZeroDivisionError" in failed.last_error
    assert "1 / 0" in failed.last_error


def test_lease_context_retry_is_swallowed(client: Client, queue: str) -> None:
    task_id = client.enqueue(queue, "k").id
    with client.lease(queue, wait_ms=2_000):
        raise Retry("not yet", retry_in_ms=0)
    again = wait_until(lambda: client.lease_tasks(queue, wait_ms=500), what="the retried task")
    assert again[0].id == task_id and again[0].attempts == 2 and again[0].last_error == "not yet"


def test_lease_context_yields_none_when_nothing_arrives(client: Client, queue: str) -> None:
    started = time.monotonic()
    with client.lease(queue, wait_ms=300) as task:
        assert task is None
    assert 0.25 < time.monotonic() - started < 3


def test_lease_context_heartbeats_and_reports_a_lost_lease(client: Client, queue: str) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 60_000})
    task_id = client.enqueue(queue, "k").id
    with client.lease(queue, wait_ms=2_000, lease_ms=400) as task:
        # Past the first lease (renewed every third of it): the heartbeat keeps it.
        wait_until(renewed(client, task_id, 4), what="four renewals of the lease")
    assert client.get_task(task_id).attempts == 1 and client.get_task(task_id).state == State.SUCCEEDED

    lost_id = client.enqueue(queue, "k").id
    with pytest.raises(LeaseLost):
        with client.lease(queue, wait_ms=2_000, lease_ms=300, heartbeat=False) as task:
            assert task is not None and task.id == lost_id
            wait_until(lambda: client.get_task(lost_id).state == State.SCHEDULED, what="the lease to expire")
    assert client.get_task(lost_id).state == State.SCHEDULED


# -- client.consume() ----------------------------------------------------------


def test_consume_acks_each_task_when_the_loop_comes_back(client: Client, queue: str) -> None:
    ids = [client.enqueue(queue, "k", i).id for i in range(3)]
    seen = []
    for task in client.consume(queue, wait_ms=300):
        # The previous task was acked when the loop came back for this one.
        if seen:
            assert client.get_task(seen[-1]).state == State.SUCCEEDED
        assert client.get_task(task.id).state == State.RUNNING
        seen.append(task.id)
        task.result = {"square": task.payload**2}
    assert seen == ids
    assert [client.get_task(i).result for i in ids] == [{"square": 0}, {"square": 1}, {"square": 4}]


def test_consume_break_hands_the_task_back(client: Client, queue: str) -> None:
    first, second = (client.enqueue(queue, "k", i).id for i in range(2))
    for task in client.consume(queue, wait_ms=300):
        assert task.id == first
        break
    # The consumer's finalizer hands it back from a thread (no I/O in a finalizer).
    back = wait_until(
        lambda: (t := client.get_task(first)).state in (State.READY, State.SCHEDULED) and t,
        what="the task handed back",
    )
    assert back.result is None
    assert back.last_error is not None and back.last_error.startswith("handed back: the consumer loop was left")
    assert client.get_task(second).attempts == 0  # never leased


def test_consume_exception_hands_back_and_with_form_records_traceback(client: Client, queue: str) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 60_000})
    first = client.enqueue(queue, "k").id
    with pytest.raises(ValueError):
        for _task in client.consume(queue, wait_ms=300):
            raise ValueError("plain for loop")
    wait_until(lambda: (client.get_task(first).last_error or "").startswith("handed back"), what="the hand-back")
    assert client.get_task(first).attempts == 1

    second = client.enqueue(queue, "k", key="second").id
    with pytest.raises(ValueError):
        with client.consume(queue, wait_ms=300) as tasks:
            for task in tasks:
                if task.id == second:
                    raise ValueError("with form")
                task.result = "first done"
    failed = client.get_task(second)
    assert failed.state == State.SCHEDULED and "ValueError: with form" in failed.last_error
    assert client.get_task(first).state == State.SUCCEEDED


def test_consume_stop_acks_the_current_task_and_ends(client: Client, queue: str) -> None:
    ids = [client.enqueue(queue, "k", i).id for i in range(3)]
    consumer = client.consume(queue)  # waits forever: only stop() ends it
    seen = []
    for task in consumer:
        seen.append(task.id)
        if len(seen) == 2:
            consumer.stop()
    assert seen == ids[:2]
    assert [client.get_task(i).state for i in ids] == [State.SUCCEEDED, State.SUCCEEDED, State.READY]


# -- AsyncWorker -----------------------------------------------------------------


def test_async_worker_runs_async_and_sync_handlers(server: Server, queue: str) -> None:
    async def main() -> dict[str, Task]:
        async with AsyncClient(server.url) as client:
            await client.configure_queue(queue, backoff={"initial_ms": 60_000})
            worker = AsyncWorker(queue, client=client, concurrency=3, wait_ms=200, lease_ms=600)
            active = 0
            most = 0

            @worker.task("nap")
            async def nap(task: Task) -> int:
                nonlocal active, most
                active += 1
                most = max(most, active)
                # Held until three run at once (the most the worker may run).
                await wait_until_async(lambda: most >= 3, what="three handlers running at once")
                active -= 1
                return task.payload

            @worker.task("blocking")
            def blocking(task: Task) -> str:
                # In a thread, until its lease (600 ms) was renewed four times.
                with Client(server.url) as own:
                    wait_until(renewed(own, task.id, 4), what="four renewals of the lease")
                return threading.current_thread().name

            @worker.task("broken")
            async def broken(task: Task) -> None:
                raise LookupError("nope")

            @worker.task("nan")
            async def nan(task: Task) -> object:
                return [float("nan")]

            ids = [(await client.enqueue(queue, "nap", i)).id for i in range(6)]
            ids.append((await client.enqueue(queue, "blocking")).id)
            ids.append((await client.enqueue(queue, "broken")).id)
            ids.append((await client.enqueue(queue, "nan")).id)
            serving = asyncio.create_task(worker.serve())

            async def all_done() -> list[Task] | None:
                tasks = [await client.get_task(i) for i in ids]
                return tasks if all(t.state != State.RUNNING and t.attempts == 1 for t in tasks) else None

            tasks = await wait_until_async(all_done, timeout=15, what="every task run once")
            worker.stop()
            await asyncio.wait_for(serving, 10)
            assert most == 3
            return {"nap": tasks[0], "blocking": tasks[6], "broken": tasks[7], "nan": tasks[8], "naps": tasks[:6]}

    out = asyncio.run(main())
    assert [t.result for t in out["naps"]] == list(range(6))
    assert out["blocking"].state == State.SUCCEEDED and out["blocking"].attempts == 1
    assert out["blocking"].result != "MainThread"
    assert out["broken"].state == State.SCHEDULED and "LookupError: nope" in out["broken"].last_error
    assert out["nan"].state == State.SCHEDULED and "not JSON" in out["nan"].last_error


def test_a_busy_async_worker_acks_each_task_with_its_next_lease(server: Server, queue: str) -> None:
    async def main() -> tuple[list[Task], collections.Counter[str]]:
        async with AsyncClient(server.url) as client:
            worker = AsyncWorker(queue, client=client, concurrency=1, wait_ms=200)
            calls = count_calls(client, ("ack", "lease_tasks", "lease_and_ack"))

            @worker.task("work")
            async def work(task: Task) -> dict:
                return {"n": task.payload}

            async def all_finished() -> bool:
                return all([(await client.get_task(i)).finished for i in ids])

            ids = [(await client.enqueue(queue, "work", i)).id for i in range(10)]
            serving = asyncio.create_task(worker.serve())
            await wait_until_async(all_finished, timeout=15, what="every task finished")
            worker.stop()
            await asyncio.wait_for(serving, 10)
            return [await client.get_task(i) for i in ids], calls

    tasks, calls = asyncio.run(main())
    assert [t.result for t in tasks] == [{"n": i} for i in range(10)]
    assert calls["lease_and_ack"] >= 9 and calls["ack"] == 0, calls


def test_worker_module_docstring_example_shape() -> None:
    # The decorator returns the function unchanged, so handlers stay testable.
    worker = Worker("q")

    @worker.task("charge_card")
    def charge_card(task: Task) -> str:
        return "ok"

    assert charge_card(None) == "ok"  # type: ignore[arg-type]
    assert worker.handler_for("charge_card") is charge_card
    assert worker.handler_for("other") is None
    assert os.getpid() and worker.name.endswith(f":{os.getpid()}")
