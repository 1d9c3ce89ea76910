"""Session set-up: one real cherga server for the run (tests that restart a
server start their own), and a Django project (``tests.settings``) on a SQLite
file, migrated once (on Python 3.12 and newer, as Django 6 needs). Tests
isolate themselves with unique queue names."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cherga import Client
from tests.harness import (
    Server,
    # Hooks: a failed test's report shows what the servers logged meanwhile.
    pytest_runtest_makereport,  # noqa: F401
    pytest_runtest_protocol,  # noqa: F401
    unique_queue,
)

_state: dict[str, object] = {}


def pytest_configure(config: pytest.Config) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="cherga-pytest-"))
    try:
        server = Server(workdir / "server").start()
    except RuntimeError as error:
        shutil.rmtree(workdir, ignore_errors=True)
        raise pytest.UsageError(str(error)) from None
    _state["workdir"] = workdir
    _state["server"] = server
    os.environ["CHERGA_URL"] = server.url
    os.environ["CHERGA_TEST_DB"] = str(workdir / "django.sqlite3")
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    if sys.version_info < (3, 12):
        # Django 6 needs 3.12: on 3.11 only the client and worker tests run
        # (name their files; the Django ones cannot be imported).
        return

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = _state.get("server")
    if isinstance(server, Server):
        server.stop()
    workdir = _state.get("workdir")
    if isinstance(workdir, Path):
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Server:
    server = _state["server"]
    assert isinstance(server, Server)
    return server


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.url) as client:
        yield client


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    return unique_queue(request.node.name)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for tests that stop or kill it."""
    server = Server(tmp_path / "own-server").start()
    yield server
    server.stop()
