"""``manage.py cherga_relay``: send pending outbox rows to cherga.

Run it once (cron), or with ``--loop`` as a long-lived process beside the web
servers. Rows are relayed with their idempotency keys, so running several
relays, or relaying a row twice, still makes one task per row.
"""

from __future__ import annotations

import signal
import threading
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS, close_old_connections

from cherga.django.outbox import pending_count, prune, relay


class Command(BaseCommand):
    help = __doc__.strip().splitlines()[0]

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="the outbox's database alias")
        parser.add_argument("--limit", type=int, default=500, help="rows per round")
        parser.add_argument("--loop", action="store_true", help="keep relaying until SIGTERM/SIGINT")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between rounds with --loop")
        parser.add_argument(
            "--prune-days", type=float, default=None, help="also delete rows relayed more than this many days ago"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()
        if options["loop"]:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
        while True:
            close_old_connections()
            relayed = 0
            while True:  # drain: rounds of `limit` until a round is short
                n = relay(using=options["database"], limit=options["limit"])
                relayed += n
                if n < options["limit"]:
                    break
            if options["prune_days"] is not None:
                prune(older_than=timedelta(days=options["prune_days"]), using=options["database"])
            pending = pending_count(using=options["database"])
            if relayed or not options["loop"]:
                self.stdout.write(f"relayed {relayed}, pending {pending}")
            if not options["loop"] or stop.wait(options["interval"]):
                break
