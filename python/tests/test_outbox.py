"""The transactional outbox: a rolled-back transaction sends nothing, a
committed one sends exactly one task — even when the process dies right after
the commit, or cherga is down at commit time, or a relay runs twice."""

from __future__ import annotations

import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.utils import timezone

from cherga import Client, QueueNotFound
from cherga.django.models import OutboxTask
from cherga.django.outbox import relay
from tests.djapp.models import Note
from tests.djapp.tasks import write_note
from tests.djhelpers import SignalLog, django_worker, result_when_finished
from tests.harness import PYTHON, subprocess_env


class Boom(Exception):
    pass


def cherga_tasks(client: Client, queue: str) -> list:
    try:
        return client.list_tasks(queue).tasks
    except QueueNotFound:
        return []


def test_rolled_back_transaction_sends_no_task(client: Client, queue: str) -> None:
    with SignalLog() as log:
        with pytest.raises(Boom):
            with transaction.atomic():
                Note.objects.create(text="rolled back")
                result = write_note.using(queue_name=queue).enqueue("never")
                assert result.id.startswith("outbox-")
                raise Boom
    assert not OutboxTask.objects.filter(queue=queue).exists()
    assert cherga_tasks(client, queue) == []
    assert log.of(result.id) == []  # no task_enqueued for a task that never was
    assert relay() >= 0 and cherga_tasks(client, queue) == []


def test_committed_transaction_sends_one_task_after_commit(client: Client, queue: str) -> None:
    with SignalLog() as log:
        with transaction.atomic():
            result = write_note.using(queue_name=queue).enqueue("committed")
            # Nothing leaves the process before the commit.
            assert cherga_tasks(client, queue) == []
            assert log.of(result.id) == []
        assert log.of(result.id) == [("enqueued", "READY")]
    row = OutboxTask.objects.get(queue=queue)
    assert row.relayed_at is not None and row.idempotency_key == f"outbox-{row.pk}"
    [sent] = cherga_tasks(client, queue)
    assert row.task_id == sent.id and sent.idempotency_key == row.idempotency_key
    assert sent.payload["result_id"] == result.id

    assert write_note.get_result(result.id).status == TaskResultStatus.READY
    with django_worker("default", queue):
        done = result_when_finished(write_note, result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.id == result.id
    assert Note.objects.get(pk=done.return_value).text == "committed"


def test_crash_after_commit_then_relay_sends_exactly_one_task(client: Client, queue: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "tests.crash_after_commit", queue],
        env=subprocess_env(),
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert b"not reached" not in proc.stdout
    result_id = proc.stdout.decode().split()[0]

    # The commit happened; the relay did not.
    row = OutboxTask.objects.get(queue=queue)
    assert row.result_id == result_id and row.relayed_at is None
    assert cherga_tasks(client, queue) == []
    assert write_note.get_result(result_id).status == TaskResultStatus.READY

    relay_command = [PYTHON, "-m", "django", "cherga_relay"]
    first = subprocess.run(relay_command, env=subprocess_env(), cwd=tmp_path, capture_output=True, timeout=30)
    assert first.returncode == 0, first.stderr.decode()
    assert b"relayed " in first.stdout
    [sent] = cherga_tasks(client, queue)
    row.refresh_from_db()
    assert row.relayed_at is not None and row.task_id == sent.id

    # The relay dies after cherga answered but before marking the row: the
    # next relay sends the row again, and cherga hands back the same task.
    OutboxTask.objects.filter(pk=row.pk).update(relayed_at=None, task_id=None)
    assert relay(ids=[row.pk]) == 1
    assert [t.id for t in cherga_tasks(client, queue)] == [sent.id]
    row.refresh_from_db()
    assert row.task_id == sent.id

    with django_worker("default", queue):
        done = result_when_finished(write_note, result_id)
    assert Note.objects.filter(pk=done.return_value, text="written just before the crash").count() == 1


def test_cherga_down_at_commit_keeps_the_row_for_the_relay(client: Client, queue: str) -> None:
    backend = task_backends["default"]
    real_client = backend.client
    down = Client("http://127.0.0.1:9", retries=0, timeout=1)  # the discard port: refused
    backend._client = down
    try:
        with transaction.atomic():
            result = write_note.using(queue_name=queue).enqueue("cherga was down")
        # The request that committed did not fail; the row waits.
        row = OutboxTask.objects.get(queue=queue)
        assert row.relayed_at is None and row.relay_attempts == 1 and "connection_failed" in row.last_error
    finally:
        backend._client = real_client
        down.close()
    assert cherga_tasks(client, queue) == []
    assert relay() >= 1
    [sent] = cherga_tasks(client, queue)
    row.refresh_from_db()
    assert row.task_id == sent.id and row.last_error == ""
    assert write_note.get_result(result.id).status == TaskResultStatus.READY


def test_outside_a_transaction_the_outbox_relays_at_once(client: Client, queue: str) -> None:
    result = write_note.using(queue_name=queue).enqueue("autocommit")
    [sent] = cherga_tasks(client, queue)
    assert sent.payload["result_id"] == result.id
    assert OutboxTask.objects.get(queue=queue).task_id == sent.id


def test_a_row_of_an_unknown_backend_does_not_hold_up_the_others(client: Client, queue: str) -> None:
    # A row whose TASKS alias was removed since: it cannot be sent, and the
    # rows after it still are.
    long_ago = timezone.now() - timedelta(days=1)
    stale = OutboxTask.objects.create(
        backend="gone", queue=queue, kind="k", payload={}, idempotency_key=f"stale-{queue}", created_at=long_ago
    )
    fresh = OutboxTask.objects.create(
        backend="default", queue=queue, kind="k", payload={"n": 1}, idempotency_key=f"fresh-{queue}"
    )
    try:
        relay(ids=[stale.pk, fresh.pk])
        fresh.refresh_from_db()
        stale.refresh_from_db()
        assert fresh.relayed_at is not None and [t.id for t in cherga_tasks(client, queue)] == [fresh.task_id]
        assert stale.relayed_at is None and stale.relay_attempts == 1 and "'gone'" in stale.last_error
    finally:
        stale.delete()
