"""How the outcome of running a task becomes an ack or a nack. Shared by the
lease helpers and both workers, sync and async."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any


class Retry(Exception):
    """Raise from a handler to retry the task: after ``retry_in_ms``, or after
    the queue's backoff when it is ``None``. ``message`` is stored as the task's
    ``last_error`` as is (no traceback). Out of attempts, the task is dead."""

    def __init__(self, message: str = "retry requested", *, retry_in_ms: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_in_ms = retry_in_ms


class Dead(Exception):
    """Raise from a handler to give up on the task now: it becomes ``dead``
    (retry by hand with ``client.retry``) with ``message`` as its last error."""

    def __init__(self, message: str = "handler gave up") -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Nack:
    """The arguments of a nack."""

    error: str
    retry_in_ms: int | None = None
    dead: bool = False

    def kwargs(self) -> dict[str, Any]:
        return {"error": self.error, "retry_in_ms": self.retry_in_ms, "dead": self.dead}


# What a task is handed back with when a worker stops before starting it, or a
# consumer loop is left before the task finished: retry at once, as if the
# lease had never been taken (the attempt is still counted by the server).
def hand_back(reason: str) -> Nack:
    return Nack(error=f"handed back: {reason}", retry_in_ms=0)


def undecodable(reason: str) -> Nack:
    """The nack for a task whose payload this client could not decode (see
    ``Task.decode_error``): a failed attempt, retried after the queue's
    backoff (a worker in another language may take it)."""
    return Nack(error=f"the Python client cannot decode this task: {reason}")


def failure(error: BaseException) -> Nack:
    """The nack for a handler that raised ``error``: ``Retry`` and ``Dead`` say
    what they want; anything else is retried after the queue's backoff with its
    traceback as the task's ``last_error``."""
    if isinstance(error, Retry):
        return Nack(error=error.message, retry_in_ms=error.retry_in_ms)
    if isinstance(error, Dead):
        return Nack(error=error.message, dead=True)
    return Nack(error="".join(traceback.format_exception(error)))


def outcome_name(error: BaseException) -> str:
    """How a handler that raised ``error`` ended, for the worker's log."""
    if isinstance(error, Retry):
        return "retry"
    if isinstance(error, Dead):
        return "dead"
    return "failed"


def is_control(error: BaseException | None) -> bool:
    """True for the exceptions a handler raises to steer the nack on purpose."""
    return isinstance(error, (Retry, Dead))


@dataclass(frozen=True)
class Settlement:
    """What to do with a task when the code that ran it is left: ack it (when
    ``nack`` is ``None``) or nack it, and whether to swallow the exception."""

    nack: Nack | None
    swallow: bool = False


def settle(error: BaseException | None) -> Settlement:
    """How a block that ran a task ended decides the task's fate:

    - no exception: ack;
    - ``Retry``/``Dead``: nack as they ask, and the exception is swallowed (it
      was the block's way of saying what to do, not a failure of the caller);
    - an interruption (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``,
      asyncio cancellation): hand the task back to run again at once, and let the
      interruption go on;
    - any other exception: nack with its traceback, and let it go on.
    """
    import asyncio

    if error is None:
        return Settlement(None)
    if is_control(error):
        return Settlement(failure(error), swallow=True)
    if isinstance(error, (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)):
        return Settlement(hand_back(f"interrupted by {type(error).__name__}"))
    return Settlement(failure(error))
