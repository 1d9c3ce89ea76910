"""Sending one ``Call`` over HTTP: the transports behind ``Client`` and ``AsyncClient``.

``Client`` sends on one keep-alive connection per thread
(``ConnectionPerThread``): no pool, so no lock shared by the threads of a
worker, and no per-request URL parsing or cookie handling. A profile of the
httpx path showed most of a single enqueue's CPU time inside
httpx/httpcore/h11; this path spends a fraction of it.

``HttpxTransport`` sends through an ``httpx.Client`` instead; ``Client`` uses it
when given an httpx ``transport=`` (tests pass ``httpx.MockTransport``).
``AsyncClient`` sends through ``httpx.AsyncClient``.

``Client`` writes each request in one piece and reads the answer itself
(``_Wire``): ``http.client`` writes headers and body apart and parses headers
with the ``email`` package, which cost more than the rest of an enqueue.

Every transport returns its failures rather than raising them, sorted the same
way (see ``_core``): ``NotSent`` when the request cannot have reached the
server (the connection could not be made), ``MaybeSent`` when it may have, and
what encoding a body that is not JSON raised.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import httpx

from ._core import Answer, Call, MaybeSent, NotSent, decode
from .errors import error_from_response

# What encoding a body that is not JSON raises: an object json cannot encode,
# NaN or an infinity, a lone surrogate, nesting deeper than the encoder
# recurses. A transport returns it, as it returns its own failures.
NOT_JSON = (TypeError, ValueError, RecursionError)


# Seconds a stream may stay silent: the server sends a keep-alive every 15.
STREAM_TIMEOUT = 60.0


def encode_body(value: Any) -> bytes:
    """A request body: compact JSON, UTF-8. Raises ``TypeError``/``ValueError``
    for a value JSON cannot hold (NaN and the infinities included) and
    ``RecursionError`` for one nested deeper than the encoder recurses."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def target(call: Call[Any]) -> str:
    """The request target: the call's path and its query string."""
    if not call.params:
        return call.path
    return f"{call.path}?{urlencode(call.params)}"


class Transport(Protocol):
    """Sends one call and returns its ``Answer``, or the ``NotSent``/``MaybeSent``
    it failed with, or what encoding its body raised."""

    def send(self, call: Call[Any], timeout: float) -> Answer | Exception: ...

    def close(self) -> None: ...

    def stream(self, path: str, headers: dict[str, str]) -> Iterator[str]: ...


class _Wire:
    """One keep-alive HTTP/1.1 connection, as lean as cherga's answers allow:
    a request is one write; an answer is a status line, headers and a body of
    ``content-length`` bytes (or chunked, or up to the close)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        """Sends ``request``; → status, headers (lower-case names), body, and
        whether the server closes the connection after it."""
        self.sock.sendall(request)
        reader = self.reader
        status_line = reader.readline(65537)
        if not status_line:
            raise ConnectionError("the server closed the connection before answering")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ConnectionError(f"not an HTTP answer: {status_line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            line = reader.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        closes = headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0"
        if status in (204, 304) or 100 <= status < 200:
            return status, headers, b"", closes
        if "content-length" in headers:
            length = int(headers["content-length"])
            body = reader.read(length)
            if len(body) < length:
                raise ConnectionError("the answer was cut short")
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked()
        else:
            body, closes = reader.read(), True
        return status, headers, body, closes

    def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.reader.readline(65537).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.reader.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.reader.read(size))
            self.reader.readline(65537)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class ConnectionPerThread:
    """One keep-alive connection per calling thread (``_Wire``), so threads
    share no pool and no lock; streams use ``http.client``."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = headers
        host = self._host if parts.port is None else f"{self._host}:{parts.port}"
        fixed = {"host": host, **headers}
        self._fixed = "".join(f"{name}: {value}\r\n" for name, value in fixed.items()).encode("latin-1")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[_Wire] = []
        self._ssl = ssl.create_default_context() if self._https else None

    def _connect(self, timeout: float) -> _Wire:
        sock = socket.create_connection((self._host, self._port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        wire = _Wire(sock)
        with self._lock:
            self._all.append(wire)
        return wire

    def _drop(self, wire: _Wire) -> None:
        self._local.wire = None
        with self._lock:
            if wire in self._all:
                self._all.remove(wire)
        wire.close()

    def send(self, call: Call[Any], timeout: float) -> Answer | Exception:
        try:
            body = None if call.json is None else encode_body(call.json)
        except NOT_JSON as error:
            return error
        head = f"{call.method} {self._prefix}{target(call)} HTTP/1.1\r\n".encode() + self._fixed
        if body is None:
            request = head + (b"content-length: 0\r\n\r\n" if call.method in ("POST", "PUT") else b"\r\n")
        else:
            request = b"%scontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (head, len(body), body)
        wire: _Wire | None = getattr(self._local, "wire", None)
        if wire is None:
            try:
                wire = self._local.wire = self._connect(timeout)
            except OSError as error:
                return _sorted(NotSent, error)
        try:
            wire.sock.settimeout(timeout)
            status, headers, content, closes = wire.exchange(request)
        except (OSError, ValueError) as error:
            self._drop(wire)
            return _sorted(MaybeSent, error)
        if closes:
            self._drop(wire)
        return decode(status, headers, content)

    def close(self) -> None:
        with self._lock:
            wires, self._all = self._all, []
        for wire in wires:
            wire.close()

    def stream(self, path: str, headers: dict[str, str]) -> Iterator[str]:
        """The lines of a streamed answer, on a connection of its own; an
        ``OSError`` when the connection drops, the API error for an error answer."""
        if self._ssl is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=STREAM_TIMEOUT, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=STREAM_TIMEOUT)
        try:
            try:
                conn.request("GET", self._prefix + path, headers={**self._headers, **headers})
                response = conn.getresponse()
                if response.status >= 400:
                    answer = decode(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
                    raise error_from_response(answer.status, answer.body, answer.headers)
                while line := response.readline():
                    yield line.decode().rstrip("\r\n")
            except http.client.HTTPException as error:
                raise ConnectionError(f"{type(error).__name__}: {error}") from error
        finally:
            conn.close()


def _sorted(kind: type[Exception], error: BaseException) -> Exception:
    name = "timeout" if isinstance(error, socket.timeout) else type(error).__name__
    sorted_error = kind(f"{name}: {error}")
    sorted_error.__cause__ = error
    return sorted_error


def _from_httpx(error: httpx.TransportError) -> Exception:
    """Sorts an httpx failure by whether the request may have reached the server."""
    kind = NotSent if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)) else MaybeSent
    return _sorted(kind, error)


def _answer(response: httpx.Response) -> Answer:
    return decode(response.status_code, dict(response.headers), response.content)


def _httpx_args(call: Call[Any]) -> dict[str, Any]:
    if call.json is None:
        return {}
    return {"content": encode_body(call.json), "headers": {"content-type": "application/json"}}


def _httpx_send(client: httpx.Client, call: Call[Any], timeout: float) -> Answer | Exception:
    try:
        response = client.request(call.method, call.path, params=call.params, timeout=timeout, **_httpx_args(call))
    except httpx.TransportError as error:
        return _from_httpx(error)
    except NOT_JSON as error:
        return error
    return _answer(response)


class HttpxTransport:
    """Sends through an ``httpx.Client`` (with the given httpx transport)."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float, transport: httpx.BaseTransport) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout, headers=headers, transport=transport)

    def send(self, call: Call[Any], timeout: float) -> Answer | Exception:
        return _httpx_send(self._http, call, timeout)

    def stream(self, path: str, headers: dict[str, str]) -> Iterator[str]:
        try:
            with self._http.stream("GET", path, headers=headers, timeout=STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for(response)
                yield from response.iter_lines()
        except httpx.TransportError as error:
            raise ConnectionError(f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        self._http.close()


class AsyncHttpxTransport:
    """Sends through an ``httpx.AsyncClient``."""

    def __init__(
        self, url: str, headers: dict[str, str], timeout: float, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self._http = httpx.AsyncClient(base_url=url, timeout=timeout, headers=headers, transport=transport)

    async def send(self, call: Call[Any], timeout: float) -> Answer | Exception:
        try:
            args = _httpx_args(call)
            response = await self._http.request(call.method, call.path, params=call.params, timeout=timeout, **args)
        except httpx.TransportError as error:
            return _from_httpx(error)
        except NOT_JSON as error:
            return error
        return _answer(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def stream(self, path: str, headers: dict[str, str]) -> AsyncIterator[str]:
        try:
            async with self._http.stream("GET", path, headers=headers, timeout=STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    yield line
        except httpx.TransportError as error:
            raise ConnectionError(f"{type(error).__name__}: {error}") from error


def _raise_for(response: httpx.Response) -> None:
    answer = _answer(response)
    raise error_from_response(answer.status, answer.body, answer.headers)
