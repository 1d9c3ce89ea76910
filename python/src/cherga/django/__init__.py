"""Django integration for cherga.

- ``cherga.django.ChergaBackend``: a Django 6 Tasks backend (``TASKS``
  setting). ``task.enqueue()`` sends the task to cherga, or — with
  ``"OUTBOX": True`` — writes it to an outbox table in the same database
  transaction and relays it once the transaction commits.
- ``cherga.django.enqueue(task, args, kwargs, key=..., group=...)``: enqueue
  with cherga's own options (an idempotency key derived from your operation,
  an ordering group).
- The app (``INSTALLED_APPS += ["cherga.django"]``, label ``cherga``) holds the
  outbox model and the ``cherga_worker`` and ``cherga_relay`` commands.
"""

import sys


def require(python: tuple[int, ...], django_version: str | None) -> None:
    """Raises ``ImportError`` saying what is missing when this Python
    (``python``, as ``sys.version_info``) or Django (its version, ``None``
    when it is not installed) cannot run ``cherga.django``."""
    if python < (3, 12):
        running = ".".join(map(str, python[:3]))
        raise ImportError(
            f"cherga.django needs Python 3.12 or newer (it runs on Django 6, which does); this is Python {running}. "
            "The client and worker (import cherga) work on 3.11."
        )
    if django_version is None:
        raise ImportError("cherga.django needs Django 6: pip install 'cherga[django]'")
    if int(django_version.split(".")[0]) < 6:
        raise ImportError(f"cherga.django needs Django 6 or newer; Django {django_version} is installed")


def _django_version() -> str | None:
    try:
        import django
    except ImportError:
        return None
    version: str = django.get_version()
    return version


require(sys.version_info[:3], _django_version())

from .backend import ChergaBackend, RemoteTaskError, enqueue  # noqa: E402 - after the check above

__all__ = ["ChergaBackend", "RemoteTaskError", "enqueue"]
