"""The sync client's own HTTP/1.1 transport against scripted servers: the
answer framings a server may use, and how failures are sorted for retries."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from cherga import Client, ConnectionFailed
from cherga._core import Call, MaybeSent, NotSent
from cherga._http import ConnectionPerThread

TASK = {
    "id": "t1",
    "queue": "q",
    "kind": "k",
    "payload": None,
    "priority": 0,
    "run_at": "2026-01-01T00:00:00Z",
    "max_attempts": 3,
    "attempts": 0,
    "state": "ready",
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
}


def serve(answers: list[bytes]) -> Iterator[tuple[str, list[bytes]]]:
    """A server that reads one request per answer and writes the answer
    (``b""``: none), then closes the connection when the answer says so (or
    was none) and takes the next; yields its URL and the requests."""
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def run() -> None:
        conn, _ = listener.accept()
        for answer in answers:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(v)
                    for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                    if k.lower() == b"content-length"
                ),
                0,
            )
            while len(rest) < length:
                rest += conn.recv(65536)
            received.append(head + b"\r\n\r\n" + rest)
            conn.sendall(answer)
            if not answer or b"connection: close" in answer:
                conn.close()
                conn, _ = listener.accept()
        conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", received
    listener.close()


@pytest.fixture
def scripted(request: pytest.FixtureRequest) -> Iterator[tuple[str, list[bytes]]]:
    yield from serve(request.param)


BODY = json.dumps(TASK).encode()
LENGTH = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    + b"%x\r\n%s\r\n" % (10, BODY[:10])
    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY) - 10, BODY[10:])
)
CLOSE = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + BODY


@pytest.mark.parametrize("scripted", [[LENGTH, CHUNKED, LENGTH]], indirect=True)
def test_answers_by_length_and_chunked_share_one_connection(scripted: tuple[str, list[bytes]]) -> None:
    url, received = scripted
    with Client(url, retries=0) as client:
        assert [client.get_task("t1").id for _ in range(3)] == ["t1"] * 3
    assert len(received) == 3
    assert received[0].startswith(b"GET /v1/tasks/t1 HTTP/1.1\r\n") and b"\r\nhost: 127.0.0.1:" in received[0]


@pytest.mark.parametrize("scripted", [[CLOSE, b"", LENGTH]], indirect=True)
def test_an_answer_up_to_the_close_and_a_new_connection_after_it(scripted: tuple[str, list[bytes]]) -> None:
    url, received = scripted
    with Client(url, retries=0) as client:
        assert client.get_task("t1").id == "t1"  # read up to the close; the next request reconnects
        # The server drops this one unanswered: the call may have been applied.
        transport = ConnectionPerThread(url, {})
        outcome = transport.send(Call("POST", "/v1/tasks/t1/ack", lambda a: a, json={"lease": "x"}), 5)
        assert isinstance(outcome, MaybeSent), outcome
        assert client.get_task("t1").id == "t1"


def test_a_refused_connection_was_not_sent_and_runs_out_of_retries() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    transport = ConnectionPerThread(f"http://127.0.0.1:{port}", {})
    assert isinstance(transport.send(Call("GET", "/healthz", lambda a: a), 5), NotSent)
    with Client(f"http://127.0.0.1:{port}", retries=1) as client, pytest.raises(ConnectionFailed):
        client.get_task("t1")


def test_a_body_that_is_not_json_is_returned_not_sent() -> None:
    transport = ConnectionPerThread("http://127.0.0.1:9", {})
    outcome = transport.send(Call("POST", "/x", lambda a: a, json={"n": float("nan")}), 5)
    assert isinstance(outcome, ValueError)
