"""``cherga-worker module:attr``: run a ``Worker`` or ``AsyncWorker`` defined
in a module, until SIGTERM/SIGINT.

The current directory is put on ``sys.path`` first (as gunicorn and celery do),
so ``cherga-worker myapp.tasks:worker`` works from a project's root. Options
given on the command line replace the worker's own settings.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from .client import AsyncClient, Client
from .worker import AsyncWorker, Worker


def load(target: str) -> Worker | AsyncWorker:
    module_name, _, attr = target.partition(":")
    if not module_name:
        raise SystemExit(f"cherga-worker: expected module:attr, got {target!r}")
    module = importlib.import_module(module_name)
    obj = getattr(module, attr or "worker", None)
    if callable(obj) and not isinstance(obj, (Worker, AsyncWorker)):
        obj = obj()  # a factory
    if not isinstance(obj, (Worker, AsyncWorker)):
        raise SystemExit(f"cherga-worker: {target} is not a cherga Worker or AsyncWorker")
    return obj


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cherga-worker", description=__doc__.split("\n\n")[0])
    p.add_argument("target", help="module:attr of a Worker or AsyncWorker (attr defaults to 'worker')")
    p.add_argument("--url", help="cherga's address (default: the worker's own, else $CHERGA_URL)")
    p.add_argument("--queue", help="queue to work on")
    p.add_argument("--concurrency", type=int, help="tasks run at once")
    p.add_argument("--lease-ms", type=int, help="lease asked for and renewed")
    p.add_argument("--wait-ms", type=int, help="long-poll wait of one lease request")
    p.add_argument("--prefetch", type=int, help="tasks leased ahead of free slots")
    p.add_argument("--name", help="worker name shown on the tasks it holds")
    p.add_argument("--log-level", default=os.environ.get("CHERGA_LOG_LEVEL", "INFO"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: one per long poll is noise here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    worker = load(args.target)
    for option in ("queue", "concurrency", "lease_ms", "wait_ms", "prefetch", "name"):
        value = getattr(args, option)
        if value is not None:
            setattr(worker, option, value)
    if args.url:
        worker.url = args.url
        worker.client = AsyncClient(args.url) if isinstance(worker, AsyncWorker) else Client(args.url)
    worker.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
