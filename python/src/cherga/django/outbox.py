"""Relaying the outbox to cherga.

``relay()`` sends pending outbox rows to cherga, oldest first, each with its
row's idempotency key, and marks them relayed. It holds no database lock while
it talks to cherga: two relays racing over the same row both send it, and the
key makes that one task. Likewise a relay that dies after cherga answered but
before the row was marked sends it again next time, and gets the same task back.

It runs opportunistically right after the transaction that wrote a row commits
(``ChergaBackend`` registers it with ``transaction.on_commit``), and from the
``cherga_relay`` management command, which catches whatever that missed: a
process that died between commit and relay, or cherga being unreachable then.

The idempotency key protects within the cherga queue's ``dedup_window_ms``
(24 h by default): run ``cherga_relay`` more often than that.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS
from django.utils import timezone

from ..errors import ChergaError, Unavailable

log = logging.getLogger("cherga.django.outbox")


def relay(*, using: str = DEFAULT_DB_ALIAS, ids: Iterable[Any] | None = None, limit: int = 500) -> int:
    """Send up to ``limit`` pending rows (only ``ids`` when given) to cherga;
    returns how many were relayed. A row cherga refuses (a 4xx) keeps its error
    in ``last_error`` and stays pending; an unreachable cherga stops the round."""
    from django.tasks import task_backends
    from django.tasks.exceptions import InvalidTaskBackend

    from .models import OutboxTask

    pending = OutboxTask.objects.using(using).filter(relayed_at__isnull=True).order_by("created_at")
    if ids is not None:
        pending = pending.filter(pk__in=list(ids))
    relayed = 0
    for row in pending[:limit]:
        try:
            backend = task_backends[row.backend]
        except InvalidTaskBackend as error:
            # Its alias left TASKS: this row waits for it, the others do not.
            _failed(row, f"no TASKS backend {row.backend!r}: {error}", using=using)
            continue
        try:
            task = backend.client.enqueue(
                row.queue,
                row.kind,
                row.payload,
                key=row.idempotency_key,
                priority=row.priority,
                run_at=row.run_at,
                group=row.group,
                max_attempts=row.max_attempts,
            )
        except Exception as error:  # noqa: BLE001 - recorded on the row
            _failed(row, str(error), using=using)
            if isinstance(error, Unavailable) or not isinstance(error, ChergaError):
                break  # cherga is unreachable or misconfigured: the next round retries
            continue
        OutboxTask.objects.using(using).filter(pk=row.pk, relayed_at__isnull=True).update(
            relayed_at=timezone.now(), task_id=task.id, last_error=""
        )
        relayed += 1
    return relayed


def _failed(row: Any, error: str, *, using: str) -> None:
    from .models import OutboxTask

    OutboxTask.objects.using(using).filter(pk=row.pk).update(
        relay_attempts=row.relay_attempts + 1, last_error=error[:10_000]
    )
    log.warning("outbox row %s not relayed: %s", row.pk, error)


def prune(*, older_than: timedelta, using: str = DEFAULT_DB_ALIAS) -> int:
    """Delete relayed rows relayed more than ``older_than`` ago; returns how
    many. Their results stay readable through the cherga task id only."""
    from .models import OutboxTask

    cutoff = timezone.now() - older_than
    deleted, _ = OutboxTask.objects.using(using).filter(relayed_at__lt=cutoff).delete()
    return int(deleted)


def pending_count(*, using: str = DEFAULT_DB_ALIAS) -> int:
    from .models import OutboxTask

    return int(OutboxTask.objects.using(using).filter(relayed_at__isnull=True).count())
