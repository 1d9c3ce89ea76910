"""The Django Tasks backend in a real Django project (``tests.settings``) with
the real cherga server: enqueue, results, signals, failures, options, and the
``cherga_worker`` management command."""

from __future__ import annotations

import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.tasks import TaskResult, TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_finished
from django.utils import timezone

from cherga import Client, State
from tests.djapp.models import Note
from tests.djapp.tasks import add, async_double, attempt_info, exit_now, fail, flaky, write_note
from tests.djhelpers import WORKER_ID, SignalLog, django_worker, result_when_finished
from tests.harness import PYTHON, subprocess_env, wait_until


def test_direct_enqueue_runs_and_reports_the_result(client: Client, queue: str) -> None:
    task = add.using(backend="direct", queue_name=queue)
    result = task.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.backend == "direct" and result.args == [2, 3] and result.kwargs == {}
    assert result.enqueued_at is not None and not result.is_finished

    sent = client.get_task(result.id)  # the result id is the cherga task id
    assert sent.kind == "tests.djapp.tasks.add" and sent.queue == queue
    assert sent.payload["args"] == [2, 3] and sent.payload["func"] == "tests.djapp.tasks.add"

    with django_worker("direct", queue):
        done = result_when_finished(task, result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert done.enqueued_at <= done.started_at <= done.finished_at
    assert done.worker_ids == [WORKER_ID] and done.attempts == 1
    assert done.errors == []
    assert done.task.func is add.func and done.task.queue_name == queue

    result.refresh()  # Django's own refresh goes through get_result too
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5


def test_signals_around_each_task(queue: str) -> None:
    adding = add.using(backend="direct", queue_name=queue)
    failing = fail.using(backend="once", queue_name=queue)
    with SignalLog() as log:
        ok = adding.enqueue(1, 1)
        bad = failing.enqueue("declined")
        assert log.of(ok.id) == [("enqueued", "READY")]
        with django_worker("direct", queue), django_worker("once", queue):
            result_when_finished(adding, ok.id)
            result_when_finished(failing, bad.id)
    assert log.of(ok.id) == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "SUCCESSFUL")]
    assert log.of(bad.id) == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "FAILED")]


def test_failure_is_recorded_with_the_exception(client: Client, queue: str) -> None:
    task = fail.using(backend="once", queue_name=queue)
    result = task.enqueue("card declined")
    with django_worker("once", queue):
        failed = result_when_finished(task, result.id)
    assert failed.status == TaskResultStatus.FAILED
    [error] = failed.errors
    assert error.exception_class is ValueError
    assert error.exception_class_path == "builtins.ValueError"
    assert "ValueError: card declined" in error.traceback and "Traceback" in error.traceback
    assert failed.started_at is not None and failed.finished_at is not None
    with pytest.raises(ValueError, match="Task failed"):
        failed.return_value  # noqa: B018
    cherga_task = client.get_task(result.id)
    assert cherga_task.queue == f"once-{queue}"  # QUEUE_PREFIX
    assert cherga_task.state == State.DEAD and cherga_task.attempts == 1


def test_failed_task_is_retried_until_its_attempts_run_out(client: Client, queue: str) -> None:
    client.configure_queue(queue, max_attempts=3, backoff={"initial_ms": 10, "jitter": 0.0})
    task = fail.using(backend="direct", queue_name=queue)
    result = task.enqueue("flaky")
    with django_worker("direct", queue):
        failed = result_when_finished(task, result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.attempts == 3 and failed.worker_ids == [WORKER_ID] * 3
    # One error per attempt, each the exception as Django records it.
    assert len(failed.errors) == 3
    for error in failed.errors:
        assert error.exception_class is ValueError and error.exception_class_path == "builtins.ValueError"
        assert error.traceback.startswith("Traceback (most recent call last):")
        assert error.traceback.endswith("ValueError: flaky\n")
    cherga_task = client.get_task(result.id)
    assert cherga_task.attempts == 3 and [a.outcome for a in cherga_task.history] == ["failed"] * 3
    assert failed.started_at == cherga_task.history[0].started_at
    assert failed.last_attempted_at == cherga_task.history[-1].started_at
    assert failed.finished_at == cherga_task.finished_at >= failed.last_attempted_at


def finished_attempts(client: Client, task_id: str) -> int:
    return sum(a.outcome != "running" for a in client.get_task(task_id).history)


def test_each_attempt_is_in_the_result(client: Client, queue: str) -> None:
    """Two failures, then a success, each on another worker: the result has
    both errors, every worker in order, and the server's times."""
    client.configure_queue(queue, max_attempts=5, backoff={"initial_ms": 10, "jitter": 0.0}, paused=True)
    task = flaky.using(backend="direct", queue_name=queue)
    result = task.enqueue(2)

    def pause(sender: object, task_result: TaskResult, **kwargs: object) -> None:
        # Sent before the attempt is reported: the next one waits for the next worker.
        if task_result.id == result.id:
            client.configure_queue(queue, paused=True)

    workers = ["alpha", "beta", "gamma"]
    task_finished.connect(pause, weak=False)
    try:
        with SignalLog() as log:
            for n, name in enumerate(workers, start=1):
                with django_worker("direct", queue, name=name):
                    client.configure_queue(queue, paused=False)
                    wait_until(lambda n=n: finished_attempts(client, result.id) == n, what=f"attempt {n}")
    finally:
        task_finished.disconnect(pause)

    done = task.get_result(result.id)
    cherga_task = client.get_task(result.id)
    history = cherga_task.history
    assert [(a.attempt, a.worker, a.outcome) for a in history] == [
        (1, "alpha", "failed"),
        (2, "beta", "failed"),
        (3, "gamma", "succeeded"),
    ]
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 3
    assert done.worker_ids == workers and done.attempts == 3
    assert len(done.errors) == 2
    for n, error in enumerate(done.errors, start=1):
        assert error.exception_class is ValueError and error.exception_class_path == "builtins.ValueError"
        assert error.traceback.startswith("Traceback (most recent call last):")
        assert error.traceback.endswith(f"ValueError: attempt {n} failed\n")
        assert "in flaky" in error.traceback
    # The server's clock: when each attempt was leased, and when the ack came.
    assert done.enqueued_at == cherga_task.created_at
    assert done.started_at == history[0].started_at
    assert done.last_attempted_at == history[2].started_at
    assert done.finished_at == cherga_task.finished_at == history[2].finished_at
    assert done.enqueued_at <= done.started_at < done.last_attempted_at <= done.finished_at

    # The signals carry the same, as far as each attempt knows it.
    signals = log.results(result.id)
    assert [(name, str(r.status)) for name, r in signals] == [
        ("started", "RUNNING"),
        ("finished", "FAILED"),
        ("started", "RUNNING"),
        ("finished", "FAILED"),
        ("started", "RUNNING"),
        ("finished", "SUCCESSFUL"),
    ]
    for n in (1, 2, 3):
        started, finished = signals[2 * n - 2][1], signals[2 * n - 1][1]
        for seen in (started, finished):
            assert seen.enqueued_at == cherga_task.created_at
            assert seen.started_at == history[0].started_at
            assert seen.last_attempted_at == history[n - 1].started_at
            assert seen.worker_ids == workers[:n]
        assert [e.traceback for e in started.errors] == [e.traceback for e in done.errors[: n - 1]]
        assert started.finished_at is None
        assert finished.finished_at >= finished.last_attempted_at
    assert [e.traceback for e in signals[3][1].errors] == [e.traceback for e in done.errors]
    assert signals[5][1].return_value == 3


def test_context_and_async_tasks(queue: str) -> None:
    context_task = attempt_info.using(backend="direct", queue_name=queue)
    async_task = async_double.using(backend="direct", queue_name=queue)
    with_context = context_task.enqueue("t1")
    doubled = async_task.enqueue(21)
    with django_worker("direct", queue):
        info = result_when_finished(context_task, with_context.id)
        twice = result_when_finished(async_task, doubled.id)
    assert info.return_value == {"tag": "t1", "attempt": 1, "result_id": with_context.id}
    assert twice.return_value == 42


def test_priority_and_run_after_map_to_cherga(client: Client, queue: str) -> None:
    later = timezone.now() + timedelta(hours=1)
    task = add.using(backend="direct", queue_name=queue, priority=7, run_after=later)
    result = task.enqueue(1, 1)
    sent = client.get_task(result.id)
    assert sent.state == State.SCHEDULED and sent.priority == 7
    assert abs((sent.run_at - later).total_seconds()) < 0.01
    read_back = task.get_result(result.id)
    assert read_back.status == TaskResultStatus.READY
    assert read_back.task.priority == 7 and read_back.task.run_after == later


def test_backend_features_and_validation() -> None:
    backend = task_backends["direct"]
    assert backend.supports_defer and backend.supports_priority
    assert backend.supports_get_result and backend.supports_async_task
    with pytest.raises(InvalidTask, match="cherga queue name"):
        add.using(backend="direct", queue_name="no spaces")
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("01890000-0000-7000-8000-000000000000")
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("not-an-id")
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["default"].get_result("outbox-00000000-0000-4000-8000-000000000000")
    with pytest.raises(TypeError):
        add.using(backend="direct").enqueue(object())


def test_get_result_of_a_task_that_is_not_a_django_task(client: Client, queue: str) -> None:
    plain = client.enqueue(queue, "plain", {"x": 1})
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["direct"].get_result(plain.id)


def test_cherga_worker_management_command(queue: str, tmp_path: Path) -> None:
    task = write_note.using(backend="direct", queue_name=queue)
    results = [task.enqueue(f"note {i}") for i in range(3)]
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "django",
            "cherga_worker",
            "--backend",
            "direct",
            "--queue",
            queue,
            "--concurrency",
            "2",
            "--wait-ms",
            "300",
        ],
        env=subprocess_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        done = [result_when_finished(task, r.id) for r in results]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, output.decode()
    assert b"cherga_worker: stopped" in output
    # Django's own handler prints its task lines; the command adds none that repeats them.
    for r in results:
        assert output.decode().count(f"Task id={r.id} path=tests.djapp.tasks.write_note state=SUCCESSFUL") == 1
    assert all(r.status == TaskResultStatus.SUCCESSFUL for r in done)
    note_ids = [r.return_value for r in done]
    assert sorted(Note.objects.filter(pk__in=note_ids).values_list("text", flat=True)) == [
        "note 0",
        "note 1",
        "note 2",
    ]
    assert all(r.worker_ids[-1] not in ("unknown", WORKER_ID) for r in done)


def test_worker_command_refuses_other_backends() -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "django", "cherga_worker", "--backend", "nope"],
        env=subprocess_env(),
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode != 0


def test_running_state_and_plain_text_errors(client: Client, queue: str) -> None:
    task = add.using(backend="direct", queue_name=queue)
    result = task.enqueue(5, 5)
    [leased] = client.lease_tasks(queue, worker="someone-else")
    running = task.get_result(result.id)
    assert running.status == TaskResultStatus.RUNNING
    assert running.worker_ids == ["someone-else"] and running.started_at is not None
    client.nack(leased, "lease expired")
    wait_until(lambda: task.get_result(result.id).status == TaskResultStatus.READY)
    again = task.get_result(result.id)
    [error] = again.errors
    assert error.exception_class_path == "cherga.django.backend.RemoteTaskError"
    assert error.traceback == "lease expired"


def test_system_exit_in_a_task_fails_it_like_any_exception(client: Client, queue: str) -> None:
    # As Django's ImmediateBackend: every BaseException but KeyboardInterrupt
    # is the task's failure, with its traceback and the task_finished signal.
    task = exit_now.using(backend="once", queue_name=queue)
    with SignalLog() as log:
        result = task.enqueue(3)
        with django_worker("once", queue):
            failed = result_when_finished(task, result.id)
    assert failed.status == TaskResultStatus.FAILED
    [error] = failed.errors
    assert error.exception_class is SystemExit and "SystemExit: 3" in error.traceback
    assert failed.started_at is not None and failed.finished_at >= failed.started_at
    assert failed.worker_ids == [WORKER_ID]
    assert log.of(result.id) == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "FAILED")]
    assert client.get_task(result.id).attempts == 1


def test_system_exit_is_retried_after_the_backoff(client: Client, queue: str) -> None:
    client.configure_queue(queue, max_attempts=3, backoff={"initial_ms": 60_000, "jitter": 0.0})
    task = exit_now.using(backend="direct", queue_name=queue)
    result = task.enqueue(0)
    with django_worker("direct", queue):
        wait_until(lambda: client.get_task(result.id).state == State.SCHEDULED, what="the first failure")
    cherga_task = client.get_task(result.id)
    assert cherga_task.attempts == 1
    assert (cherga_task.run_at - cherga_task.updated_at).total_seconds() == pytest.approx(60, abs=1)
    waiting = task.get_result(result.id)
    assert waiting.status == TaskResultStatus.READY
    assert [e.exception_class_path for e in waiting.errors] == ["builtins.SystemExit"]


@pytest.mark.parametrize("result_id", ["", ".", "..", "a/b", "../queues", "?x=1", "outbox-", "outbox-..", "outbox-x/y"])
def test_get_result_of_an_id_that_is_no_task(result_id: str) -> None:
    for alias in ("direct", "default"):
        with pytest.raises(TaskResultDoesNotExist):
            task_backends[alias].get_result(result_id)


def test_results_belong_to_the_backend_that_enqueued_them(queue: str) -> None:
    direct = add.using(backend="direct", queue_name=queue).enqueue(1, 2)
    assert task_backends["direct"].get_result(direct.id).id == direct.id
    for other in ("default", "once", "emails"):  # same cherga queue, another prefix, another QUEUES
        with pytest.raises(TaskResultDoesNotExist):
            task_backends[other].get_result(direct.id)
    with pytest.raises(TaskResultDoesNotExist):  # Django's Task.get_result goes to the task's backend
        add.get_result(direct.id)

    emails = add.using(backend="emails", queue_name="emails").enqueue(3, 4)
    assert add.using(backend="emails", queue_name="emails").get_result(emails.id).args == [3, 4]
    with pytest.raises(TaskResultDoesNotExist):
        task_backends["direct"].get_result(emails.id)

    outbox = add.using(queue_name=queue).enqueue(5, 6)  # "default": through the outbox
    assert outbox.id.startswith("outbox-") and add.get_result(outbox.id).args == [5, 6]
    for other in ("direct", "once"):
        with pytest.raises(TaskResultDoesNotExist):
            task_backends[other].get_result(outbox.id)
