"""``manage.py cherga_worker``: run the Django tasks of a ChergaBackend.

One cherga ``Worker`` per queue (default: the backend's ``QUEUES``), each with
``--concurrency`` threads, until SIGTERM/SIGINT; then running tasks finish and
tasks leased but not started are handed back. Sends Django's ``task_started``
and ``task_finished`` signals around every task.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task_backends

from cherga.django.backend import ChergaBackend
from cherga.django.runner import django_handler
from cherga.worker import DEFAULT_LEASE_MS, DEFAULT_WAIT_MS, Worker, default_worker_name, run_workers


class Command(BaseCommand):
    help = __doc__.strip().splitlines()[0]

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--backend", default=DEFAULT_TASK_BACKEND_ALIAS, help="TASKS alias (default: default)")
        parser.add_argument(
            "--queue", action="append", dest="queues", help="Django queue name; repeat for several (default: QUEUES)"
        )
        parser.add_argument("--concurrency", type=int, default=1, help="threads per queue")
        parser.add_argument("--lease-ms", type=int, default=DEFAULT_LEASE_MS)
        parser.add_argument("--wait-ms", type=int, default=DEFAULT_WAIT_MS)
        parser.add_argument("--prefetch", type=int, default=0)
        parser.add_argument("--name", default=None, help="worker name (default host:pid)")

    def handle(self, *args: Any, **options: Any) -> None:
        cherga_log = logging.getLogger("cherga")
        if not cherga_log.hasHandlers():
            # Nothing in LOGGING would print cherga's lines: give them a handler
            # of their own. Not on the root, where Django's own lines would be
            # printed a second time (Django's "django" logger has its handler).
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            cherga_log.addHandler(handler)
            if cherga_log.level == logging.NOTSET:
                cherga_log.setLevel(logging.INFO)
        # httpx logs every request at INFO: one per long poll is noise here.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        backend = task_backends[options["backend"]]
        if not isinstance(backend, ChergaBackend):
            raise CommandError(f"TASKS[{options['backend']!r}] is not a cherga.django.ChergaBackend")
        queues = options["queues"] or sorted(backend.queues)
        if not queues:
            raise CommandError("no queues: pass --queue, or list QUEUES in the backend's settings")
        name = options["name"] or default_worker_name()
        workers = []
        for queue in queues:
            worker = Worker(
                backend.cherga_queue(queue),
                client=backend.client,
                concurrency=options["concurrency"],
                lease_ms=options["lease_ms"],
                wait_ms=options["wait_ms"],
                prefetch=options["prefetch"],
                name=name,
            )
            worker.fallback(django_handler(backend, name))
            workers.append(worker)
        self.stdout.write(f"cherga_worker {name}: queues {', '.join(queues)} on {backend.url}")
        self.stdout.flush()
        run_workers(workers)
        self.stdout.write("cherga_worker: stopped")
