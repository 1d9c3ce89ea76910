"""Celery with its SQS transport (kombu's, ``celery[sqs]``) against cherga's
SQS-compatible endpoint: a real worker consumes tasks sent with ``.delay()``.

kombu takes the endpoint from the broker URL (``sqs://KEY:SECRET@HOST:PORT``,
plain HTTP when the transport option ``is_secure`` is false); the worker runs
in a thread of this process with the solo pool, so the tasks record what they
ran in memory."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from . import harness
from .harness import Server, unique_queue, wait_until

KEY = ("CHRGCELERYKEY001", "celery-secret-0123456789abcdef")
# May send to and receive from the queues, not create them.
WORKER_KEY = ("CHRGCELERYWRK001", "worker-secret-0123456789abcdef")
REGION = "us-east-1"

# kombu's HTTP client calls pycurl functions that pycurl now marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:kombu.asynchronous.http.curl")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def sqs_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the SQS endpoint, an admin key and a worker's key, on each store."""
    keys = f"{KEY[0]} {KEY[1]} admin\n{WORKER_KEY[0]} {WORKER_KEY[1]} produce:celery-* consume:celery-*\n"
    server = harness.sqs_server(request.param, tmp_path_factory.mktemp("celery"), keys)
    yield server
    server.stop()


def celery_app(server: Server, queue: str, predefined: bool) -> Celery:
    """The settings docs/sqs.md gives for Celery: with ``predefined`` the queue
    exists already and the worker's key may not create queues."""
    key = WORKER_KEY if predefined else KEY
    options: dict[str, Any] = {
        "region": REGION,
        "is_secure": False,
        "wait_time_seconds": 1,
        "polling_interval": 0.1,
        "visibility_timeout": 60,
    }
    if predefined:
        url = sqs_client(server).create_queue(QueueName=queue)["QueueUrl"]
        options["predefined_queues"] = {
            queue: {"url": url, "access_key_id": WORKER_KEY[0], "secret_access_key": WORKER_KEY[1]}
        }
    app = Celery("cherga_celery_test", set_as_current=False)
    app.conf.update(
        broker_url=f"sqs://{key[0]}:{key[1]}@127.0.0.1:{server.sqs_port}",
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_default_queue=queue,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # Broadcasts need SNS with this transport; the worker needs none of them.
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
    )
    return app


def sqs_client(server: Server):  # noqa: ANN201
    return boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{server.sqs_port}",
        region_name=REGION,
        aws_access_key_id=KEY[0],
        aws_secret_access_key=KEY[1],
    )


def queue_counts(server: Server, queue: str) -> tuple[int, int]:
    sqs = sqs_client(server)
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("predefined", [False, True], ids=["created", "predefined"])
def test_celery_worker_runs_every_task_once_and_retries(sqs_server: Server, predefined: bool) -> None:
    queue = unique_queue("celery")
    app = celery_app(sqs_server, queue, predefined)
    lock = threading.Lock()
    ran: Counter[int] = Counter()
    attempts: Counter[str] = Counter()

    @app.task(name="test.record", shared=False)
    def record(n: int) -> int:
        with lock:
            ran[n] += 1
        return n

    @app.task(
        name="test.flaky",
        shared=False,
        bind=True,
        autoretry_for=(ValueError,),
        retry_backoff=False,
        default_retry_delay=0,
        max_retries=5,
    )
    def flaky(self: Any, key: str) -> str:
        with lock:
            attempts[key] += 1
            count = attempts[key]
        if count < 3:
            raise ValueError(f"attempt {count} of {key} fails")
        return key

    sent = 50
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30, loglevel="WARNING"):
        for n in range(sent):
            record.delay(n)
        flaky.delay("k")

        def done() -> bool:
            with lock:
                finished = len(ran) == sent and attempts["k"] >= 3
            # Everything acknowledged: nothing left that could be delivered again.
            return finished and queue_counts(sqs_server, queue) == (0, 0)

        wait_until(done, timeout=90, interval=0.2, what="every task run and acknowledged")

    assert sorted(ran) == list(range(sent))
    assert all(count == 1 for count in ran.values()), {n: c for n, c in ran.items() if c != 1}
    # Two failures, each retried by a new message; the third attempt succeeds.
    assert attempts == Counter({"k": 3})
    assert queue_counts(sqs_server, queue) == (0, 0)
