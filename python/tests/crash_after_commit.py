"""Run as a subprocess by test_outbox: enqueue through the outbox inside a
transaction, then die by SIGKILL right after the commit — before the relay
that ``on_commit`` would run. Prints the result id first."""

import os
import signal
import sys

import django

django.setup()

from django.db import transaction  # noqa: E402

from tests.djapp.tasks import write_note  # noqa: E402

queue = sys.argv[1]
with transaction.atomic():
    # Registered before the enqueue, so it runs first after the commit: the
    # outbox row is committed, and the process is gone before relaying it.
    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
    result = write_note.using(queue_name=queue).enqueue("written just before the crash")
    print(result.id, flush=True)
print("not reached", flush=True)
