"""The package builds into a wheel that carries everything a user needs."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

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
        "cherga/_http.py",
        "cherga/events.py",
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
    assert "Requires-Python: >=3.11" in meta
    # The Django extra: Django 6 from 3.12 on; before, a requirement that no
    # index can satisfy, so that pip's error names the reason.
    assert "Requires-Dist: django>=6.0; (python_version >= '3.12') and extra == 'django'" in meta
    assert (
        "Requires-Dist: cherga-django-needs-python-3-12-or-newer<0; (python_version < '3.12') and extra == 'django'"
        in meta
    )


def test_python_m_build_makes_a_wheel_and_an_sdist_that_twine_check_passes(tmp_path: Path) -> None:
    build = subprocess.run(
        [PYTHON, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(PYTHON_DIR)],
        capture_output=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr.decode()[-3000:]
    built = sorted(p.name for p in tmp_path.iterdir())
    assert [name.endswith(".whl") for name in built] == [True, False] and built[1].endswith(".tar.gz"), built
    check = subprocess.run(
        [PYTHON, "-m", "twine", "check", "--strict", *(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout.decode()[-3000:] + check.stderr.decode()[-3000:]
    assert check.stdout.decode().count("PASSED") == 2, check.stdout.decode()


def test_cherga_django_says_what_it_needs() -> None:
    from cherga.django import require

    require((3, 12, 1, "final", 0), "6.0.1")
    require((3, 13, 0), "6.1")
    with pytest.raises(ImportError, match=r"needs Python 3\.12 or newer .* this is Python 3\.11\.7"):
        require((3, 11, 7, "final", 0), "5.2")
    with pytest.raises(ImportError, match=r"needs Django 6: pip install 'cherga\[django\]'"):
        require((3, 12, 1), None)
    with pytest.raises(ImportError, match=r"needs Django 6 or newer; Django 5\.2\.1 is installed"):
        require((3, 12, 1), "5.2.1")
