"""The client against the real server: every operation, the error mapping, and
retries that survive a server restart and a lost answer."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

import cherga
import cherga.errors
from cherga import (
    ChergaError,
    Client,
    ConnectionFailed,
    IdempotencyKeyReused,
    InvalidQueueName,
    InvalidRequest,
    InvalidState,
    InvalidTaskId,
    LeaseLost,
    NewTask,
    NotFound,
    QueueNotFound,
    State,
    TaskNotFound,
)
from tests.harness import Server, unique_queue, wait_until


def test_enqueue_generates_a_key_and_returns_the_task(client: Client, queue: str) -> None:
    task = client.enqueue(queue, "charge_card", {"order": 42, "cents": 1999}, priority=5, max_attempts=3)
    assert task.state == State.READY and task.state == "ready"
    assert task.queue == queue and task.kind == "charge_card"
    assert task.payload == {"order": 42, "cents": 1999}
    assert task.priority == 5 and task.max_attempts == 3 and task.attempts == 0
    assert task.idempotency_key and len(task.idempotency_key) == 36  # a uuid4
    assert task.replayed is False
    assert task.created_at.tzinfo is not None
    assert client.get_task(task.id) == task


def test_same_key_replays_and_different_request_is_refused(client: Client, queue: str) -> None:
    first = client.enqueue(queue, "k", {"n": 1}, key="order-1-pay")
    again = client.enqueue(queue, "k", {"n": 1}, key="order-1-pay")
    assert again.replayed and again.id == first.id
    with pytest.raises(IdempotencyKeyReused) as caught:
        client.enqueue(queue, "k", {"n": 2}, key="order-1-pay")
    error = caught.value
    assert isinstance(error, ChergaError)
    assert error.code == "idempotency_key_reused" and error.status == 422
    assert first.id in error.message
    assert client.list_tasks(queue).tasks == [first]


def test_concurrent_duplicates_create_one_task(client: Client, queue: str) -> None:
    with ThreadPoolExecutor(16) as pool:
        tasks = list(pool.map(lambda _: client.enqueue(queue, "pay", {"order": 7}, key="order-7"), range(32)))
    assert len({t.id for t in tasks}) == 1
    assert sum(not t.replayed for t in tasks) == 1
    assert client.get_queue(queue).counts.ready == 1


def test_delay_and_run_at_schedule_the_task(client: Client, queue: str) -> None:
    later = client.enqueue(queue, "k", delay_ms=60_000)
    assert later.state == State.SCHEDULED
    at = datetime.now(UTC) + timedelta(hours=1)
    scheduled = client.enqueue(queue, "k", run_at=at)
    assert scheduled.state == State.SCHEDULED
    assert abs((scheduled.run_at - at).total_seconds()) < 0.01
    assert client.lease_tasks(queue, max=10) == []


def test_lease_ack_nack_extend_and_fencing(client: Client, queue: str) -> None:
    client.configure_queue(queue, backoff={"initial_ms": 10, "jitter": 0.0})
    task = client.enqueue(queue, "k", {"x": 1})
    [leased] = client.lease_tasks(queue, max=5, lease_ms=5_000, worker="w1")
    assert leased.id == task.id and leased.state == State.RUNNING and leased.attempts == 1
    assert leased.lease is not None and leased.worker == "w1"

    extended = client.extend(leased, 20_000)
    assert extended.lease_expires_at is not None and extended.lease_expires_at > leased.lease.expires_at

    nacked = client.nack(leased, "boom")
    assert nacked.state == State.SCHEDULED and nacked.last_error == "boom"
    # The old token is dead now: fencing.
    with pytest.raises(LeaseLost) as caught:
        client.ack(leased, {"late": True})
    assert caught.value.status == 409 and caught.value.code == "lease_lost"

    [again] = wait_until(lambda: client.lease_tasks(queue, wait_ms=1_000), what="the retry")
    assert again.attempts == 2 and again.lease.token != leased.lease.token
    done = client.ack(again, {"charge_id": "ch_1"})
    assert done.state == State.SUCCEEDED and done.result == {"charge_id": "ch_1"}
    # The same ack again succeeds and changes nothing.
    assert client.ack(again, {"charge_id": "ch_2"}).result == {"charge_id": "ch_1"}
    # An id with an explicit lease works too.
    assert client.ack(again.id, lease=again.lease.token).state == State.SUCCEEDED


def test_dead_cancel_retry(client: Client, queue: str) -> None:
    task = client.enqueue(queue, "k")
    [leased] = client.lease_tasks(queue)
    dead = client.nack(leased, "no such card", dead=True)
    assert dead.state == State.DEAD
    with pytest.raises(InvalidState):
        client.cancel(task.id)
    assert client.retry(task.id).state == State.READY
    assert client.cancel(task.id).state == State.CANCELLED
    assert client.cancel(task.id).state == State.CANCELLED  # idempotent


def test_retry_with_a_new_payload(client: Client, queue: str) -> None:
    task = client.enqueue(queue, "k", {"v": 1})
    [leased] = client.lease_tasks(queue)
    client.nack(leased, "bad v", dead=True)
    retried = client.retry(task.id, payload={"v": 2})
    assert retried.state == State.READY and retried.payload == {"v": 2}
    edit = retried.history[0].payload_edit
    assert edit is not None and edit.by is None  # auth is off: no subject
    assert edit.at == retried.updated_at
    [again] = client.lease_tasks(queue)
    assert again.payload == {"v": 2}
    with pytest.raises(InvalidState):
        client.retry(task.id, payload={"v": 3})
    assert client.get_task(task.id).payload == {"v": 2}
    dead = client.nack(again, "still bad", dead=True)
    assert client.retry(dead.id, payload=None).payload is None  # None is JSON null
    assert [a.payload_edit is not None for a in client.get_task(task.id).history] == [True, True]


def test_batches(client: Client, queue: str) -> None:
    results = client.enqueue_many(
        queue,
        [NewTask("a", 1), NewTask("b", 2, key="batch-b"), NewTask("", 3), NewTask("b", 2, key="batch-b")],
    )
    assert [r.status for r in results] == [201, 201, 400, 200]
    assert results[0].ok and results[0].task is not None and results[0].task.kind == "a"
    assert isinstance(results[2].error, InvalidRequest) and not results[2].ok
    assert results[3].task is not None and results[3].task.replayed
    leased = client.lease_tasks(queue, max=10)
    assert len(leased) == 2
    acked = client.ack_many([(t, {"k": t.kind}) for t in leased])
    assert all(r.ok and r.task is not None and r.task.state == State.SUCCEEDED for r in acked)


def test_lease_and_ack_acks_earlier_tasks_in_the_lease_request(client: Client, queue: str) -> None:
    for n in range(3):
        client.enqueue(queue, "k", n)
    first, second = client.lease_tasks(queue, max=2)
    stale = client.get_task(second.id)  # the task without its lease token
    tasks, acks = client.lease_and_ack(queue, [(first, {"done": 0}), (second, None)], max=5)
    assert [t.payload for t in tasks] == [2]
    assert [r.status for r in acks] == [200, 200]
    assert acks[0].task is not None and acks[0].task.result == {"done": 0}
    assert client.get_task(second.id).state == State.SUCCEEDED
    with pytest.raises(ValueError, match="carries no lease"):
        client.lease_and_ack(queue, [(stale, None)])
    # A replayed ack succeeds again; a stale token is refused item by item.
    tasks, acks = client.lease_and_ack(queue, [(first, {"done": 0}), (tasks[0], None)], wait_ms=100)
    assert tasks == [] and all(r.ok for r in acks)
    [again] = client.lease_and_ack(queue, [(first, None)])[1]
    assert again.ok
    client.enqueue(queue, "k", 3)
    [fourth] = client.lease_tasks(queue)
    assert fourth.lease is not None
    forged = dataclasses.replace(fourth, lease=dataclasses.replace(fourth.lease, token="forged"))
    [refused] = client.lease_and_ack(queue, [(forged, None)])[1]
    assert isinstance(refused.error, LeaseLost) and refused.status == 409
    assert client.get_task(fourth.id).state == State.RUNNING


def test_list_tasks_pages_with_a_cursor(client: Client, queue: str) -> None:
    ids = [client.enqueue(queue, "k", i).id for i in range(5)]
    page = client.list_tasks(queue, limit=2)
    seen = [t.id for t in page.tasks]
    while page.next:
        page = client.list_tasks(queue, limit=2, after=page.next)
        seen += [t.id for t in page.tasks]
    assert seen == ids
    assert client.list_tasks(queue, state="succeeded").tasks == []


def test_list_tasks_searches_by_kind_group_and_key(client: Client, queue: str) -> None:
    a = client.enqueue(queue, "charge", 1, key="order-1", group="tenant-a")
    b = client.enqueue(queue, "refund", 2, key="order-2", group="tenant-a")
    c = client.enqueue(queue, "charge", 3, key="order-3")
    assert [t.id for t in client.list_tasks(queue, kind="charge").tasks] == [a.id, c.id]
    assert [t.id for t in client.list_tasks(queue, group="tenant-a").tasks] == [a.id, b.id]
    assert [t.id for t in client.list_tasks(queue, key="order-2").tasks] == [b.id]
    assert client.list_tasks(queue, key="order-2", kind="charge").tasks == []


def test_queues_settings_and_counts(client: Client, queue: str) -> None:
    with pytest.raises(QueueNotFound) as caught:
        client.get_queue(queue)
    assert isinstance(caught.value, NotFound) and caught.value.status == 404
    configured = client.configure_queue(queue, max_attempts=3, lease_ms=1_000, concurrency=2, paused=True)
    assert configured.settings.max_attempts == 3 and configured.settings.concurrency == 2
    assert configured.settings.paused
    client.enqueue(queue, "k")
    assert client.lease_tasks(queue) == []  # paused
    unpaused = client.configure_queue(queue, paused=False, concurrency=None)
    assert unpaused.settings.concurrency is None and unpaused.settings.max_attempts == 3
    assert unpaused.counts.ready == 1
    assert queue in {q.name for q in client.list_queues()}
    assert client.health() is True


def test_errors_map_to_classes(client: Client) -> None:
    with pytest.raises(InvalidQueueName) as bad_queue:
        client.enqueue("no spaces allowed", "k")
    assert isinstance(bad_queue.value, InvalidRequest) and bad_queue.value.status == 400
    with pytest.raises(InvalidTaskId):
        client.get_task("not-a-task-id")
    with pytest.raises(TaskNotFound) as missing:
        client.get_task("01890000-0000-7000-8000-000000000000")
    assert missing.value.code == "task_not_found" and "no task" in missing.value.message
    with pytest.raises(InvalidRequest) as out_of_range:
        client.lease_tasks(unique_queue(), max=0)
    assert out_of_range.value.code == "invalid_request"
    with pytest.raises(cherga.PayloadTooLarge):
        client.enqueue(unique_queue(), "k", "x" * (2 << 20))


def test_ids_and_queue_names_are_sent_as_one_path_segment(client: Client, queue: str) -> None:
    # "/" or "?" would end the segment: they are escaped, and the server
    # refuses what arrives.
    for task_id in ("a/b", "../queues", "?state=ready", "#x", "%2E"):
        with pytest.raises(InvalidTaskId) as refused:
            client.get_task(task_id)
        assert refused.value.status == 400
    with pytest.raises(InvalidQueueName) as refused:
        client.enqueue("a/b", "k")
    assert refused.value.status == 400


def test_empty_dot_and_dot_dot_are_refused_before_sending() -> None:
    # An empty segment would name another route, and a URL resolves "." and
    # ".." away ("/v1/tasks/.." is "/v1"): no queue name or task id is one of
    # them, so nothing is sent.
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    with Client("http://cherga.test", transport=httpx.MockTransport(record), retries=0) as client:
        for name in ("", ".", ".."):
            for method, args, kwargs in (
                (client.enqueue, (name, "k"), {}),
                (client.enqueue_many, (name, [NewTask("k")]), {}),
                (client.lease_tasks, (name,), {}),
                (client.list_tasks, (name,), {}),
                (client.get_queue, (name,), {}),
                (client.configure_queue, (name,), {"paused": True}),
            ):
                with pytest.raises(InvalidQueueName) as refused:
                    method(*args, **kwargs)
                assert refused.value.status is None and refused.value.code == "invalid_queue_name"
            for method, args, kwargs in (
                (client.get_task, (name,), {}),
                (client.cancel, (name,), {}),
                (client.retry, (name,), {}),
                (client.ack, (name,), {"lease": "t"}),
                (client.nack, (name,), {"lease": "t"}),
                (client.extend, (name,), {"lease": "t"}),
            ):
                with pytest.raises(InvalidTaskId) as refused:
                    method(*args, **kwargs)
                assert refused.value.status is None and refused.value.code == "invalid_task_id"
    assert sent == []
    # Three dots are a name like any other.
    with Client("http://cherga.test", transport=httpx.MockTransport(record), retries=0) as client:
        with pytest.raises(cherga.InternalError):
            client.enqueue("...", "k")
    assert [r.url.path for r in sent] == ["/v1/queues/.../tasks"]


def test_every_error_code_of_the_server_has_its_class(server: Server) -> None:
    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    codes = document["components"]["schemas"]["WireError"]["properties"]["code"]["enum"]
    assert "invalid_json" in codes
    assert [code for code in codes if code not in cherga.errors.ERROR_CLASSES] == []


def test_a_request_addressed_to_another_host_is_forbidden(server: Server, queue: str) -> None:
    # What a web page reaching the server through a name of its own would send.
    with Client(server.url, headers={"host": "evil.example"}, retries=0) as client:
        with pytest.raises(cherga.Forbidden) as refused:
            client.enqueue(queue, "k")
    assert refused.value.status == 403 and "--allowed-hosts" in refused.value.message


def test_retries_ride_out_a_server_restart(own_server: Server) -> None:
    queue = unique_queue()
    with Client(own_server.url, retries=8) as client:
        client.enqueue(queue, "before")
        own_server.stop()
        restart = threading.Timer(0.6, own_server.start)
        restart.start()
        started = time.monotonic()
        task = client.enqueue(queue, "during")  # refused connections are retried
        restart.join()
        assert time.monotonic() - started >= 0.5
        assert task.state == State.READY
        assert [t.kind for t in client.list_tasks(queue).tasks] == ["before", "during"]


def test_retries_give_up_with_connection_failed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", retries=2, timeout=1) as client:
        started = time.monotonic()
        with pytest.raises(ConnectionFailed) as caught:
            client.enqueue("q", "k")
    assert time.monotonic() - started < 5
    assert isinstance(caught.value, cherga.Unavailable) and caught.value.status is None
    assert "3 tries" in caught.value.message


class DropFirstAnswers:
    """A TCP proxy to the server that swallows the answers on its first
    ``drop`` connections: the request arrives, the answer never does — what a
    client sees when a response is lost after the server acted."""

    def __init__(self, upstream_port: int, drop: int) -> None:
        self.upstream_port = upstream_port
        self.drop = drop
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            drop = self.connections <= self.drop
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, drop), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, drop: bool) -> None:
        try:
            while data := source.recv(65536):
                if drop:
                    # The server answered: cut the client off without the answer.
                    sink.shutdown(socket.SHUT_RDWR)
                    sink.close()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def test_lost_answer_is_retried_and_makes_one_task(server: Server, queue: str) -> None:
    proxy = DropFirstAnswers(server.port, drop=2)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", retries=4) as client:
            task = client.enqueue(queue, "charge", {"order": 9})
    finally:
        proxy.close()
    assert proxy.connections == 3  # two answers lost, the third try got through
    # The first try created the task; the retries, carrying the same generated
    # key, found it.
    assert task.replayed
    with Client(server.url) as direct:
        assert [t.id for t in direct.list_tasks(queue).tasks] == [task.id]


def test_lost_answer_is_not_resent_for_non_idempotent_calls(server: Server, client: Client, queue: str) -> None:
    task = client.enqueue(queue, "k")
    [leased] = client.lease_tasks(queue)
    client.nack(leased, "x", dead=True)
    proxy = DropFirstAnswers(server.port, drop=1)
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", retries=4) as through_proxy:
            with pytest.raises(ConnectionFailed):
                through_proxy.retry(task.id)
    finally:
        proxy.close()
    assert proxy.connections == 1
    assert client.get_task(task.id).state == State.READY  # the one try did arrive


def test_group_runs_one_at_a_time_in_order(client: Client, queue: str) -> None:
    first = client.enqueue(queue, "k", 1, group="customer-7")
    second = client.enqueue(queue, "k", 2, group="customer-7")
    other = client.enqueue(queue, "k", 3)
    leased = client.lease_tasks(queue, max=10)
    assert {t.id for t in leased} == {first.id, other.id}  # the group's second waits
    assert client.get_task(second.id).group == "customer-7"
    client.ack(next(t for t in leased if t.id == first.id))
    assert [t.id for t in client.lease_tasks(queue, max=10, wait_ms=1_000)] == [second.id]


def test_a_queue_schema_refuses_payloads_that_break_it(client: Client, queue: str) -> None:
    client.enqueue(queue, "pay", {"id": "before"})  # stored before the schema: not checked again
    schema = {"type": "object", "required": ["id", "amount"], "properties": {"amount": {"minimum": 1}}}
    first = client.set_schema(queue, schema)
    assert (first.version, [v.schema for v in first.current]) == (1, [schema])
    with pytest.raises(cherga.PayloadInvalid) as caught:
        client.enqueue(queue, "pay", {"id": "a", "amount": 0})
    assert [(v["pointer"], v["keyword"]) for v in caught.value.violations] == [("/amount", "minimum")]
    assert client.enqueue(queue, "pay", {"id": "b", "amount": 5}).payload == {"id": "b", "amount": 5}
    client.set_schema(queue, {"type": "string"}, kind="note")
    assert client.enqueue(queue, "note", "free text").kind == "note"
    removed = client.delete_schema(queue)
    assert removed.version == 3 and [v.kind for v in removed.current] == ["note"]
    assert [v.version for v in client.get_schema(queue).history] == [1, 2, 3]
    assert client.enqueue(queue, "pay", {"anything": True}).kind == "pay"
    assert client.get_queue(queue).counts.ready == 4
