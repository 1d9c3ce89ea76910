"""The package builds into a wheel that carries everything a user needs."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from tests.harness import PYTHON, PYTHON_DIR


def test_wheel_builds_with_the_django_app_and_the_worker_script(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            PYTHON,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(PYTHON_DIR),
        ],
        capture_output=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr.decode()[-3000:]
    [wheel] = tmp_path.glob("cherga-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "cherga/__init__.py",
        "cherga/py.typed",
        "cherga/client.py",
        "cherga/worker.py",
        "cherga/django/backend.py",
        "cherga/django/migrations/0001_initial.py",
        "cherga/django/management/commands/cherga_worker.py",
        "cherga/django/management/commands/cherga_relay.py",
    ):
        assert expected in names, expected
    assert not any(name.startswith(("tests/", "examples/")) for name in names)
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cherga-worker = cherga.cli:main" in text
    [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: httpx" in meta and "Provides-Extra: django" in meta
