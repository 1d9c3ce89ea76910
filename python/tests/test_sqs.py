"""The SQS-compatible endpoint (``cherga serve --sqs-addr``) driven by the real
boto3, with SigV4 signatures checked against access keys of cherga's."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from . import harness
from .harness import Server, unique_queue, wait_until

ADMIN = ("CHRGADMINKEY0001", "admin-secret-0123456789abcdef")
PRODUCER = ("CHRGPRODUCER0001", "producer-secret-0123456789abcd")


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def sqs_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the endpoint and access keys, on each store (PostgreSQL when
    CHERGA_TEST_POSTGRES_URL names a database, in a schema of its own)."""
    keys = f"# test keys\n{ADMIN[0]} {ADMIN[1]} admin\n{PRODUCER[0]} {PRODUCER[1]} produce:jobs-*\n"
    server = harness.sqs_server(request.param, tmp_path_factory.mktemp("sqs"), keys)
    yield server
    server.stop()


def make_client(server: Server, key: tuple[str, str] = ADMIN):  # noqa: ANN201
    return boto3.client(
        "sqs",
        endpoint_url=f"http://127.0.0.1:{server.sqs_port}",
        region_name="us-east-1",
        aws_access_key_id=key[0],
        aws_secret_access_key=key[1],
        config=Config(retries={"max_attempts": 1}, read_timeout=30),
    )


@pytest.fixture
def sqs(sqs_server: Server):  # noqa: ANN201
    return make_client(sqs_server)


def code(error: ClientError) -> str:
    return error.response["Error"]["Code"]


def test_send_receive_delete(sqs, request: pytest.FixtureRequest) -> None:  # noqa: ANN001
    url = sqs.create_queue(QueueName=unique_queue("basic"))["QueueUrl"]
    assert sqs.get_queue_url(QueueName=url.rsplit("/", 1)[1])["QueueUrl"] == url
    assert url in sqs.list_queues(QueueNamePrefix="basic")["QueueUrls"]
    sent = sqs.send_message(
        QueueUrl=url,
        MessageBody="hello ☃",
        MessageAttributes={"colour": {"DataType": "String", "StringValue": "blue"}},
    )
    assert sent["MD5OfMessageBody"] == hashlib.md5("hello ☃".encode()).hexdigest()
    got = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        MessageAttributeNames=["All"],
        MessageSystemAttributeNames=["All"],
    )["Messages"]
    assert [m["Body"] for m in got] == ["hello ☃"]
    message = got[0]
    assert message["MessageId"] == sent["MessageId"]
    assert message["MD5OfBody"] == sent["MD5OfMessageBody"]
    assert message["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert message["MessageAttributes"]["colour"]["StringValue"] == "blue"
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    # In flight: not visible to another receive.
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    # Deleting again with the same handle is answered the same.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_unknown_queue_is_the_sdk_error(sqs) -> None:  # noqa: ANN001
    with pytest.raises(sqs.exceptions.QueueDoesNotExist) as raised:
        sqs.get_queue_url(QueueName=unique_queue("nowhere"))
    assert code(raised.value) == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(ClientError) as raised:
        sqs.send_message(QueueUrl="http://x/000000000000/" + unique_queue("nowhere"), MessageBody="x")
    assert code(raised.value) == "AWS.SimpleQueueService.NonExistentQueue"


def test_visibility_expiry_redelivers_and_the_stale_handle_is_refused(sqs) -> None:  # noqa: ANN001
    url = sqs.create_queue(QueueName=unique_queue("visibility"))["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="job")
    first = sqs.receive_message(QueueUrl=url, VisibilityTimeout=1)["Messages"][0]
    # The lease runs out; a long poll is woken when the message is visible again.
    second = wait_until(
        lambda: sqs.receive_message(
            QueueUrl=url, WaitTimeSeconds=5, MessageSystemAttributeNames=["ApproximateReceiveCount"]
        ).get("Messages"),
        what="redelivery",
    )[0]
    assert second["MessageId"] == first["MessageId"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    # The first receiver's handle cannot delete what the second one holds.
    with pytest.raises(ClientError) as raised:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    assert code(raised.value) == "ReceiptHandleIsInvalid"
    with pytest.raises(ClientError) as raised:
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"], VisibilityTimeout=60)
    assert code(raised.value) == "AWS.SimpleQueueService.MessageNotInflight"
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=60)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=second["ReceiptHandle"])
    with pytest.raises(ClientError) as raised:
        sqs.delete_message(QueueUrl=url, ReceiptHandle="not-a-handle")
    assert code(raised.value) == "ReceiptHandleIsInvalid"


def test_batches_with_partial_failures(sqs) -> None:  # noqa: ANN001
    url = sqs.create_queue(QueueName=unique_queue("batch"))["QueueUrl"]
    sent = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "one"},
            {"Id": "b", "MessageBody": "two"},
            {"Id": "c", "MessageBody": "three"},
            {"Id": "bad", "MessageBody": "x", "MessageAttributes": {"n": {"DataType": "Strange", "StringValue": "1"}}},
        ],
    )
    assert sorted(s["Id"] for s in sent["Successful"]) == ["a", "b", "c"]
    assert [(f["Id"], f["SenderFault"]) for f in sent["Failed"]] == [("bad", True)]
    with pytest.raises(ClientError) as raised:
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": "x", "MessageBody": "1"}, {"Id": "x", "MessageBody": "2"}])
    assert code(raised.value) == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    with pytest.raises(ClientError) as raised:
        sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": f"e{i}", "MessageBody": "m"} for i in range(11)])
    assert code(raised.value) == "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in got) == ["one", "three", "two"]
    changed = sqs.change_message_visibility_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "keep", "ReceiptHandle": got[0]["ReceiptHandle"], "VisibilityTimeout": 120},
            {"Id": "bogus", "ReceiptHandle": "bogus", "VisibilityTimeout": 120},
        ],
    )
    assert [s["Id"] for s in changed["Successful"]] == ["keep"]
    assert [f["Id"] for f in changed["Failed"]] == ["bogus"]
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": f"m{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
        + [{"Id": "stale", "ReceiptHandle": base64.urlsafe_b64encode(b"nonsense").decode().rstrip("=")}],
    )
    assert sorted(s["Id"] for s in deleted["Successful"]) == ["m0", "m1", "m2"]
    assert [(f["Id"], f["Code"]) for f in deleted["Failed"]] == [("stale", "ReceiptHandleIsInvalid")]


def test_fifo_dedup_and_group_order(sqs) -> None:  # noqa: ANN001
    url = sqs.create_queue(
        QueueName=unique_queue("orders") + ".fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    first = sqs.send_message(QueueUrl=url, MessageBody="pay 1", MessageGroupId="cart", MessageDeduplicationId="pay-1")
    again = sqs.send_message(QueueUrl=url, MessageBody="pay 1", MessageGroupId="cart", MessageDeduplicationId="pay-1")
    assert again["MessageId"] == first["MessageId"]
    # Content-based: the same body twice is one message.
    ship = sqs.send_message(QueueUrl=url, MessageBody="ship", MessageGroupId="cart")
    assert sqs.send_message(QueueUrl=url, MessageBody="ship", MessageGroupId="cart")["MessageId"] == ship["MessageId"]
    sqs.send_message(QueueUrl=url, MessageBody="other", MessageGroupId="elsewhere")
    with pytest.raises(ClientError) as raised:
        sqs.send_message(QueueUrl=url, MessageBody="no group")
    assert code(raised.value) == "MissingParameter"
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    # One message of each group at a time, the group's first.
    assert sorted(m["Body"] for m in got) == ["other", "pay 1"]
    cart = next(m for m in got if m["Body"] == "pay 1")
    assert cart["Attributes"]["MessageGroupId"] == "cart"
    assert cart["Attributes"]["MessageDeduplicationId"] == "pay-1"
    assert "Messages" not in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    sqs.delete_message(QueueUrl=url, ReceiptHandle=cart["ReceiptHandle"])
    assert [m["Body"] for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]] == ["ship"]


def test_dead_letter_queue_after_max_receive_count(sqs) -> None:  # noqa: ANN001
    dlq = sqs.create_queue(QueueName=unique_queue("dlq"))["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    url = sqs.create_queue(QueueName=unique_queue("work"), Attributes={"RedrivePolicy": policy})["QueueUrl"]
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    )
    assert redrive == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    for _ in range(2):
        message = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"][0]
        # Given up on: visible again at once (a failed attempt).
        sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    dead = sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=5)["Messages"]
    assert [m["Body"] for m in dead] == ["poison"]


def test_long_poll_wakes_when_a_message_arrives(sqs) -> None:  # noqa: ANN001
    url = sqs.create_queue(QueueName=unique_queue("longpoll"))["QueueUrl"]
    received: list[dict] = []
    waiter = threading.Thread(
        target=lambda: received.append(sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20)),
    )
    waiter.start()
    sqs.send_message(QueueUrl=url, MessageBody="wake up")
    waiter.join(25)
    assert [m["Body"] for m in received[0]["Messages"]] == ["wake up"]


def test_the_same_tasks_are_seen_through_the_v1_api_and_events(sqs, sqs_server: Server) -> None:  # noqa: ANN001
    name = unique_queue("shared")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sent = sqs.send_message(QueueUrl=url, MessageBody="seen by both")
    with httpx.Client(base_url=sqs_server.url, timeout=10) as v1:
        task = v1.get(f"/v1/tasks/{sent['MessageId']}").json()
        assert task["queue"] == name
        assert task["state"] == "ready"
        assert task["payload"] == {"body": "seen by both"}
        # A task enqueued through the v1 API is a message whose body is its payload.
        v1.post(f"/v1/queues/{name}/tasks", json={"kind": "k", "payload": {"n": 1}}).raise_for_status()
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        assert sorted(m["Body"] for m in got) == sorted(['{"n":1}', "seen by both"])
        mine = next(m for m in got if m["MessageId"] == sent["MessageId"])
        sqs.delete_message(QueueUrl=url, ReceiptHandle=mine["ReceiptHandle"])
        assert v1.get(f"/v1/tasks/{sent['MessageId']}").json()["state"] == "succeeded"
        # Every change made through the endpoint is an event of the log.
        page = v1.get(
            "/v1/events",
            params={"task": sent["MessageId"], "after": "0"},
            headers={"Accept": "application/json"},
        ).json()
        types = [event["type"].rsplit(".", 1)[1] for event in page["events"]]
        assert types[-2:] == ["leased", "acked"], types
        assert len(types) == 3, types


def test_signatures_and_scopes(sqs_server: Server, sqs) -> None:  # noqa: ANN001
    name = "jobs-" + unique_queue("scoped")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    producer = make_client(sqs_server, PRODUCER)
    producer.send_message(QueueUrl=url, MessageBody="allowed")
    with pytest.raises(ClientError) as raised:
        producer.receive_message(QueueUrl=url)
    assert code(raised.value) == "AccessDenied"
    with pytest.raises(ClientError) as raised:
        make_client(sqs_server, (ADMIN[0], "not-the-secret-at-all-0000")).list_queues()
    assert code(raised.value) == "SignatureDoesNotMatch"
    with pytest.raises(ClientError) as raised:
        make_client(sqs_server, ("CHRGUNKNOWN00000", ADMIN[1])).list_queues()
    assert code(raised.value) == "InvalidClientTokenId"
    unsigned = httpx.post(
        f"http://127.0.0.1:{sqs_server.sqs_port}/",
        headers={"X-Amz-Target": "AmazonSQS.ListQueues", "Content-Type": "application/x-amz-json-1.0"},
        content=b"{}",
    )
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-query-error"].startswith("MissingAuthenticationToken")


def query(server: Server, params: dict[str, str]) -> httpx.Response:
    """A signed query-protocol request (form post, XML answer), as older SDKs send."""
    endpoint = f"http://127.0.0.1:{server.sqs_port}/"
    body = httpx.QueryParams({"Version": "2012-11-05", **params}).__str__()
    request = AWSRequest(
        method="POST",
        url=endpoint,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    SigV4Auth(Credentials(*ADMIN), "sqs", "us-east-1").add_auth(request)
    return httpx.post(endpoint, headers=dict(request.headers), content=body.encode())


def test_query_protocol(sqs_server: Server) -> None:
    name = unique_queue("query")
    created = query(
        sqs_server,
        {
            "Action": "CreateQueue",
            "QueueName": name,
            "Attribute.1.Name": "VisibilityTimeout",
            "Attribute.1.Value": "45",
        },
    )
    assert created.status_code == 200, created.text
    assert f"<QueueUrl>http://127.0.0.1:{sqs_server.sqs_port}/000000000000/{name}</QueueUrl>" in created.text
    url = f"http://127.0.0.1:{sqs_server.sqs_port}/000000000000/{name}"
    sent = query(
        sqs_server,
        {
            "Action": "SendMessage",
            "QueueUrl": url,
            "MessageBody": "<xml & friends>",
            "MessageAttribute.1.Name": "k",
            "MessageAttribute.1.Value.DataType": "String",
            "MessageAttribute.1.Value.StringValue": "v",
        },
    )
    assert "<MD5OfMessageBody>" in sent.text, sent.text
    got = query(sqs_server, {"Action": "ReceiveMessage", "QueueUrl": url, "MessageAttributeName.1": "All"})
    assert "<Body>&lt;xml &amp; friends&gt;</Body>" in got.text, got.text
    assert "<MessageAttribute><Name>k</Name><Value>" in got.text
    assert "<StringValue>v</StringValue>" in got.text
    attributes = query(
        sqs_server, {"Action": "GetQueueAttributes", "QueueUrl": url, "AttributeName.1": "VisibilityTimeout"}
    )
    assert "<Attribute><Name>VisibilityTimeout</Name><Value>45</Value></Attribute>" in attributes.text
    missing = query(sqs_server, {"Action": "GetQueueUrl", "QueueName": unique_queue("nowhere")})
    assert missing.status_code == 400
    assert "<Code>AWS.SimpleQueueService.NonExistentQueue</Code>" in missing.text


def test_purge_and_delete_queue(sqs) -> None:  # noqa: ANN001
    url = sqs.create_queue(QueueName=unique_queue("purge"))["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(5)])
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=600)
    sqs.purge_queue(QueueUrl=url)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "0"
    sqs.tag_queue(QueueUrl=url, Tags={"team": "billing"})
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "billing"}
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(sqs.exceptions.QueueDoesNotExist):
        sqs.get_queue_url(QueueName=url.rsplit("/", 1)[1])


def test_key_file_lines_come_from_the_cli(tmp_path: Path) -> None:
    import subprocess

    from .harness import cherga_bin

    line = subprocess.run(
        [str(cherga_bin()), "token", "issue", "--sqs", "--scope", "consume:jobs-*"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    key_id, secret, scope = line.split(" ")
    assert key_id.startswith("CHRG") and len(secret) >= 16 and scope == "consume:jobs-*"


def test_without_keys_only_loopback_requests_not_from_web_pages(tmp_path: Path) -> None:
    server = Server(tmp_path / "open", ["--sqs-addr", "127.0.0.1:0"]).start()
    try:
        endpoint = f"http://127.0.0.1:{server.sqs_port}/"
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        body = b"Action=CreateQueue&QueueName=open-queue"
        assert httpx.post(endpoint, headers=form, content=body).status_code == 200
        from_page = httpx.post(endpoint, headers={**form, "Origin": "https://evil.example"}, content=body)
        assert from_page.status_code == 403
        assert "<Code>AccessDenied</Code>" in from_page.text
        rebound = httpx.post(endpoint, headers={**form, "Host": "evil.example"}, content=body)
        assert rebound.status_code == 403
    finally:
        server.stop()
