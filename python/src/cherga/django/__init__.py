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

from .backend import ChergaBackend, RemoteTaskError, enqueue

__all__ = ["ChergaBackend", "RemoteTaskError", "enqueue"]
