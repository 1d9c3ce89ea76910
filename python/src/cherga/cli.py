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
import traceback
from collections.abc import Sequence

from .worker import AsyncWorker, Worker


class TargetError(Exception):
    """The target names no Worker this process can load; the message says
    what and why, in one line."""


def load(target: str) -> Worker | AsyncWorker:
    """The ``Worker`` or ``AsyncWorker`` that ``module:attr`` names (``attr``
    defaults to ``worker``; a callable there is called to make one). Raises
    ``TargetError``."""
    module_name, _, attr = target.partition(":")
    attr = attr or "worker"
    if not module_name:
        raise TargetError(f"expected module:attr, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - said in one line below
        raise TargetError(f"cannot import {module_name}: {_describe(error)}") from error
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise TargetError(f"{module_name} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, (Worker, AsyncWorker)):
        try:
            obj = obj()  # a factory
        except Exception as error:  # noqa: BLE001 - said in one line
            raise TargetError(
                f"{module_name}:{attr} is not a Worker, and calling it failed: {_describe(error)}"
            ) from error
    if not isinstance(obj, (Worker, AsyncWorker)):
        raise TargetError(f"{module_name}:{attr} is not a cherga Worker or AsyncWorker (it is {_a(obj)})")
    return obj


def _describe(error: Exception) -> str:
    """An import failure in one line: a missing module as Python says it;
    anything else with its class and where it was raised."""
    if isinstance(error, ModuleNotFoundError):
        return str(error)
    where = ""
    frames = traceback.extract_tb(error.__traceback__)
    # The innermost frame outside the import machinery (and this file) is the
    # user's own line.
    own = [f for f in frames if "importlib" not in f.filename and f.filename != __file__]
    if isinstance(error, SyntaxError):
        return f"{type(error).__name__}: {error.msg} ({error.filename}:{error.lineno})"
    if own:
        where = f" ({own[-1].filename}:{own[-1].lineno})"
    return f"{type(error).__name__}: {error}{where}"


def _a(obj: object) -> str:
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


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
    p.add_argument(
        "--log-level",
        type=_log_level,
        default=os.environ.get("CHERGA_LOG_LEVEL", "INFO"),
        help="DEBUG logs one line per task (default: $CHERGA_LOG_LEVEL, else INFO)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request at INFO: one per long poll is noise here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        worker = load(args.target)
    except TargetError as error:
        print(f"cherga-worker: {error}", file=sys.stderr)
        return 2
    for option in ("queue", "concurrency", "lease_ms", "wait_ms", "prefetch", "name"):
        value = getattr(args, option)
        if value is not None:
            setattr(worker, option, value)
    if args.url:
        # The worker makes (and closes) its own client for this address.
        worker.url = args.url
        worker.client = None
    worker.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
