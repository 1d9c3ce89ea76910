"""Decoding answers that hold JSON nested deeper than Python's parser goes.

cherga stores any JSON a producer sends as a payload (or a worker as a
result), however deeply nested, unless the server limits the depth. Python's
``json`` parser recurses once per level and raises ``RecursionError`` near the
interpreter's recursion limit (about 1,000 levels). Without care, one task
nested 5,000 levels deep would make every answer that carries it fail: a lease
answer could neither be run nor reported, and a worker would stop.

``loads`` parses as ``json.loads`` does, and only when that recurses too deep
cuts every value nested deeper than ``MAX_DEPTH`` levels out of the text
before parsing it again. A task whose ``payload`` or ``result`` was cut gets
``None`` there and a ``DECODE_ERROR`` entry saying why, which
``Task.from_wire`` turns into ``task.decode_error``; workers and the lease
helpers nack such a task instead of running it. Every other part of the
answer is decoded whole.

Invariant: a cut value is replaced by a marker string that carries a random
nonce drawn once per process, so no text in a payload can pass for a cut.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

# Levels of the whole answer kept by the second parse. Well below the
# recursion limit, so it holds from any reasonable stack depth; a task inside
# a lease answer starts three levels down.
MAX_DEPTH = 512

# Where a task dict (as sent by the server, mutated here) says what was cut.
# The server's field names never hold a dot.
DECODE_ERROR = "cherga.decode_error"

_CUT = f"\x00cherga: cut, nested too deep {secrets.token_hex(16)}"
_CUT_JSON = json.dumps(_CUT)

# A JSON string (escapes included), or a bracket. Everything else (numbers,
# literals, commas, colons, white space) is skipped over.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.S)

# The fields of a task that hold arbitrary JSON.
_FREE_FIELDS = ("payload", "result")


class TooDeep(ValueError):
    """The answer is nested too deeply outside the places a cut can be
    reported (a task's payload or result)."""


def loads(content: bytes | str) -> Any:
    """``json.loads(content)``, except that values nested too deeply for the
    parser are cut out of tasks as described in the module documentation.
    Raises ``ValueError`` when ``content`` is not JSON or is too deep where
    nothing can be cut."""
    try:
        return json.loads(content)
    except RecursionError:
        pass
    text = content.decode() if isinstance(content, bytes) else content
    try:
        body = json.loads(_cut(text, MAX_DEPTH))
    except RecursionError:  # not JSON after all (unbalanced brackets)
        raise ValueError("JSON nested too deeply to decode") from None
    _report_cuts(body)
    return body


def _cut(text: str, max_depth: int) -> str:
    """``text`` with every array or object that opens deeper than
    ``max_depth`` levels replaced by the cut marker. Iterative: the depth of
    ``text`` is unbounded."""
    pieces: list[str] = []
    depth = 0
    kept_until = 0
    cut_from = -1
    for token in _TOKENS.finditer(text):
        char = text[token.start()]
        if char == '"':
            continue
        if char in "[{":
            depth += 1
            if depth == max_depth + 1:
                cut_from = token.start()
        else:
            if depth == max_depth + 1 and cut_from >= 0:
                pieces += (text[kept_until:cut_from], _CUT_JSON)
                kept_until = token.end()
                cut_from = -1
            depth -= 1
    pieces.append(text[kept_until:])
    return "".join(pieces)


def _report_cuts(body: Any) -> None:
    """Replaces the payload or result of every task that holds a cut by
    ``None`` and records why under ``DECODE_ERROR``. Iterative; each
    container remembers its parent, so a cut can be traced to its task."""
    # (container, key in its parent, the parent's entry)
    pending: list[tuple[Any, Any, Any]] = [(body, None, None)]
    while pending:
        entry = pending.pop()
        container = entry[0]
        children = list(container.items()) if isinstance(container, dict) else enumerate(container)
        for key, child in children:
            if isinstance(child, (dict, list)):
                pending.append((child, key, entry))
            elif isinstance(child, str) and child == _CUT:
                _mark(entry, key)


def _mark(entry: tuple[Any, Any, Any], key: Any) -> None:
    # The outermost task on the way up owns the cut: a payload may hold
    # anything, dicts that look like tasks included, but tasks are never
    # nested inside one another in an answer.
    owner = None
    while entry is not None:
        container, _, parent = entry
        if key in _FREE_FIELDS and isinstance(container, dict) and _is_task(container):
            owner = (container, key)
        key = entry[1]
        entry = parent
    if owner is None:
        raise TooDeep("an answer's JSON is nested too deeply outside a task's payload or result")
    task, field = owner
    task[field] = None
    errors = task.setdefault(DECODE_ERROR, [])
    # The levels count from the answer's root, a few above the field's.
    reason = f"its {field} is JSON nested too deeply for Python's json module (about {MAX_DEPTH} levels or more)"
    if reason not in errors:
        errors.append(reason)


def _is_task(value: dict[str, Any]) -> bool:
    return all(name in value for name in ("id", "queue", "kind", "state"))


def decode_error(task: dict[str, Any]) -> str | None:
    """Why parts of the task dict were cut (``None`` when nothing was)."""
    errors = task.get(DECODE_ERROR)
    return "; ".join(errors) if errors else None
