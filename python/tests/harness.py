"""Starting the real ``cherga`` binary for tests, and small waiting helpers.

The binary is ``$CHERGA_BIN`` or ``../target/debug/cherga`` relative to
``python/``; building it is the caller's job. A missing binary fails the run
(it never skips).

A server's log (its stderr) goes to a file beside its data directory, not to
the terminal: a test that fails gets what every server wrote while it ran as a
section of its report (``pytest_runtest_makereport``, which conftest.py
imports), a test that passes prints nothing.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = PYTHON_DIR / "examples" / "payshop"

T = TypeVar("T")


def cherga_bin() -> Path:
    path = Path(os.environ.get("CHERGA_BIN") or PYTHON_DIR.parent / "target" / "debug" / "cherga").resolve()
    if not path.is_file():
        raise RuntimeError(
            f"cherga binary not found at {path}: run `cargo build -p cherga` in the workspace or set CHERGA_BIN"
        )
    return path


# The log file of every server started in this process.
_logs: set[Path] = set()


class Server:
    """One ``cherga serve`` process on 127.0.0.1 with its own data directory."""

    def __init__(self, data_dir: Path, extra_args: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        # The SQS endpoint's port, when ``extra_args`` has ``--sqs-addr``.
        self.sqs_port = 0
        self.log = data_dir.parent / f"{data_dir.name}.log"
        _logs.add(self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> Server:
        """Start on ``port`` (default: the last one, else a free one)."""
        if port is None:
            port = self.port
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(cherga_bin()),
                    "serve",
                    "--addr",
                    f"127.0.0.1:{port}",
                    "--data-dir",
                    str(self.data_dir),
                    "--log",
                    "warn",
                    *self.extra_args,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                # Plain text: the log is read by people, not a terminal.
                env={**os.environ, "NO_COLOR": "1"},
            )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline().decode() if ready else ""
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not match:
            self.proc.kill()
            raise RuntimeError(
                f"cherga did not start: first line {line!r}; log {self.log}: {self.log.read_text()[-2000:]}"
            )
        self.port = int(match.group(1))
        if "--sqs-addr" in self.extra_args:
            # Printed right after the first (which may have been read into the
            # pipe's buffer with it, so no select here); EOF if the server died.
            line = self.proc.stdout.readline().decode()
            match = re.search(r"sqs listening on http://127\.0\.0\.1:(\d+)", line)
            if not match:
                self.proc.kill()
                raise RuntimeError(f"cherga's SQS endpoint did not start: second line {line!r}")
            self.sqs_port = int(match.group(1))
        return self

    def stop(self) -> None:
        """SIGTERM and wait: the graceful shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def unique_queue(hint: str = "q") -> str:
    clean = re.sub(r"[^A-Za-z0-9_.-]", "-", hint)[:60]
    return f"{clean}-{uuid.uuid4().hex[:10]}"


def wait_until(check: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Call ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = check()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value {last!r}")
        time.sleep(interval)
        last = check()
    return last


async def wait_until_async(
    check: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """``wait_until`` in a coroutine: ``check`` may return an awaitable."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}; last value {last!r}")
        await asyncio.sleep(interval)


_LOGS_BEFORE = pytest.StashKey[dict[Path, int]]()


def _log_sizes() -> dict[Path, int]:
    return {log: log.stat().st_size for log in _logs if log.exists()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    """Notes how long each server log is before the test runs."""
    item.stash[_LOGS_BEFORE] = _log_sizes()
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Adds to a failed test's report what the servers logged while it ran."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    before = item.stash.get(_LOGS_BEFORE, {})
    for log in sorted(_log_sizes()):
        with open(log, "rb") as file:
            file.seek(before.get(log, 0))
            text = file.read().decode(errors="replace")
        if text:
            report.sections.append((f"cherga server log {log.name}", text))


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a Python subprocess that imports the tests and the
    example project."""
    env = dict(os.environ)
    paths = [str(PYTHON_DIR), str(EXAMPLE_DIR), str(PYTHON_DIR / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


PYTHON = sys.executable


def sqs_server(store: str, work: Path, keys: str) -> Server:
    """A started server with the SQS endpoint and the access keys ``keys`` (the
    key file's text), on the embedded store or, for ``store="postgres"``, on the
    database CHERGA_TEST_POSTGRES_URL names, in a schema of its own (skipped
    without one)."""
    args: list[str] = []
    if store == "postgres":
        url = os.environ.get("CHERGA_TEST_POSTGRES_URL")
        if not url:
            pytest.skip("CHERGA_TEST_POSTGRES_URL is not set")
        args = ["--store", url, "--pg-schema", f"sqs_{uuid.uuid4().hex[:12]}"]
    key_file = work / "sqs-keys"
    key_file.write_text(keys)
    key_file.chmod(0o600)
    return Server(work / "server", ["--sqs-addr", "127.0.0.1:0", "--sqs-keys", str(key_file), *args]).start()
