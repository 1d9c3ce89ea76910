"""The Django Tasks backend in a real Django project (``tests.settings``) with
the real cherga server: enqueue, results, signals, failures, options, and the
``cherga_worker`` management command."""

from __future__ import annotations

import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.utils import timezone

from cherga import Client, State
from tests.djapp.models import Note
from tests.djapp.tasks import add, async_double, attempt_info, fail, write_note
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
    with SignalLog() as log:
        ok = add.using(backend="direct", queue_name=queue).enqueue(1, 1)
        bad = fail.using(backend="once", queue_name=queue).enqueue("declined")
        assert log.of(ok.id) == [("enqueued", "READY")]
        with django_worker("direct", queue), django_worker("once", queue):
            result_when_finished(add, ok.id)
            result_when_finished(fail, bad.id)
    assert log.of(ok.id) == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "SUCCESSFUL")]
    assert log.of(bad.id) == [("enqueued", "READY"), ("started", "RUNNING"), ("finished", "FAILED")]


def test_failure_is_recorded_with_the_exception(client: Client, queue: str) -> None:
    result = fail.using(backend="once", queue_name=queue).enqueue("card declined")
    with django_worker("once", queue):
        failed = result_when_finished(fail, result.id)
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
    result = fail.using(backend="direct", queue_name=queue).enqueue("flaky")
    with django_worker("direct", queue):
        failed = result_when_finished(fail, result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert failed.attempts == 3 and failed.worker_ids[-1] == WORKER_ID
    assert client.get_task(result.id).attempts == 3


def test_context_and_async_tasks(queue: str) -> None:
    with_context = attempt_info.using(backend="direct", queue_name=queue).enqueue("t1")
    doubled = async_double.using(backend="direct", queue_name=queue).enqueue(21)
    with django_worker("direct", queue):
        info = result_when_finished(attempt_info, with_context.id)
        twice = result_when_finished(async_double, doubled.id)
    assert info.return_value == {"tag": "t1", "attempt": 1, "result_id": with_context.id}
    assert twice.return_value == 42


def test_priority_and_run_after_map_to_cherga(client: Client, queue: str) -> None:
    later = timezone.now() + timedelta(hours=1)
    task = add.using(backend="direct", queue_name=queue, priority=7, run_after=later)
    result = task.enqueue(1, 1)
    sent = client.get_task(result.id)
    assert sent.state == State.SCHEDULED and sent.priority == 7
    assert abs((sent.run_at - later).total_seconds()) < 0.01
    read_back = add.get_result(result.id)
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
    results = [write_note.using(backend="direct", queue_name=queue).enqueue(f"note {i}") for i in range(3)]
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
        done = [result_when_finished(write_note, r.id) for r in results]
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
    result = add.using(backend="direct", queue_name=queue).enqueue(5, 5)
    [leased] = client.lease_tasks(queue, worker="someone-else")
    running = add.get_result(result.id)
    assert running.status == TaskResultStatus.RUNNING
    assert running.worker_ids == ["someone-else"] and running.started_at is not None
    client.nack(leased, "lease expired")
    wait_until(lambda: add.get_result(result.id).status == TaskResultStatus.READY)
    again = add.get_result(result.id)
    [error] = again.errors
    assert error.exception_class_path == "cherga.django.backend.RemoteTaskError"
    assert error.traceback == "lease expired"
