"""A worker for subprocess tests. Settings come from the environment:
TEST_QUEUE, TEST_MARKS (a directory for markers), TEST_LEASE_MS.

Handlers leave a marker when they start and append one line per completed
effect to TEST_MARKS/effects.log, so a test can count side effects exactly."""

import os
import time
from pathlib import Path

from cherga import Worker

worker = Worker(
    os.environ.get("TEST_QUEUE", "default"),
    lease_ms=int(os.environ.get("TEST_LEASE_MS", "1000")),
    wait_ms=500,
)
marks = Path(os.environ.get("TEST_MARKS", "."))


@worker.task("charge")
def charge(task):
    (marks / f"started-{task.id}-{task.attempts}").touch()
    # Slow on the first attempt only: that is the one the test kills.
    if task.attempts == 1:
        time.sleep(float(task.payload.get("first_attempt_sleep", 0)))
    else:
        time.sleep(float(task.payload.get("sleep", 0)))
    with open(marks / "effects.log", "a") as log:
        log.write(f"{task.id} {task.attempts}\n")
    return {"attempt": task.attempts}
