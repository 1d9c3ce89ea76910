"""The transactional outbox: tasks written in the same database transaction as
the change that caused them, and relayed to cherga after the commit.

A row is written by ``ChergaBackend.enqueue`` (with ``"OUTBOX": True``) inside
the caller's transaction, so it exists exactly when the transaction committed.
It is relayed to cherga with ``idempotency_key`` (``outbox-<id>`` unless the
caller chose a key), so relaying a row twice — two relays racing, or a relay
that died between cherga's answer and marking the row — creates one task. A
relayed row keeps the cherga task id, which is how ``get_result`` finds it.
"""

import uuid

from django.db import models
from django.utils import timezone


class OutboxTask(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    backend = models.CharField(max_length=128, help_text="alias of the TASKS backend that relays it")
    queue = models.CharField(max_length=128)
    kind = models.CharField(max_length=256)
    payload = models.JSONField()
    priority = models.IntegerField(default=0)
    run_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=256)
    group = models.CharField(max_length=256, null=True, blank=True)
    max_attempts = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    relayed_at = models.DateTimeField(null=True, blank=True)
    task_id = models.CharField(max_length=64, null=True, blank=True, help_text="the cherga task, once relayed")
    relay_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [models.Index(fields=["relayed_at", "created_at"], name="cherga_outbox_pending")]
        verbose_name = "outbox task"

    def __str__(self) -> str:
        state = f"relayed as {self.task_id}" if self.relayed_at else "pending"
        return f"{self.kind} on {self.queue} ({state})"

    @property
    def result_id(self) -> str:
        """The id ``task.enqueue()`` returned for this row."""
        return f"outbox-{self.id}"
