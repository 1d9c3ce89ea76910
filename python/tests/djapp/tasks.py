"""Django tasks used by the tests. The decorator's backend is the default
(outbox); tests pick others with .using(backend=..., queue_name=...)."""

import asyncio

from django.tasks import task

from .models import Note


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task(takes_context=True)
def attempt_info(context, tag: str) -> dict:
    return {"tag": tag, "attempt": context.attempt, "result_id": context.task_result.id}


@task(takes_context=True)
def flaky(context, failures: int) -> int:
    """Fails its first ``failures`` attempts; returns the attempt it succeeded on."""
    if context.attempt <= failures:
        raise ValueError(f"attempt {context.attempt} failed")
    return context.attempt


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@task
def write_note(text: str) -> int:
    return Note.objects.create(text=text).pk


@task
def exit_now(code: int) -> None:
    raise SystemExit(code)
