import uuid

import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="OutboxTask",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("backend", models.CharField(help_text="alias of the TASKS backend that relays it", max_length=128)),
                ("queue", models.CharField(max_length=128)),
                ("kind", models.CharField(max_length=256)),
                ("payload", models.JSONField()),
                ("priority", models.IntegerField(default=0)),
                ("run_at", models.DateTimeField(blank=True, null=True)),
                ("idempotency_key", models.CharField(max_length=256)),
                ("group", models.CharField(blank=True, max_length=256, null=True)),
                ("max_attempts", models.PositiveIntegerField(blank=True, null=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("relayed_at", models.DateTimeField(blank=True, null=True)),
                (
                    "task_id",
                    models.CharField(blank=True, help_text="the cherga task, once relayed", max_length=64, null=True),
                ),
                ("relay_attempts", models.PositiveIntegerField(default=0)),
                ("last_error", models.TextField(blank=True, default="")),
            ],
            options={
                "verbose_name": "outbox task",
                "indexes": [models.Index(fields=["relayed_at", "created_at"], name="cherga_outbox_pending")],
            },
        ),
    ]
