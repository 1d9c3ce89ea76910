"""A worker for subprocess tests. Settings come from the environment:
TEST_QUEUE, TEST_MARKS (a directory for markers), TEST_LEASE_MS.

Handlers leave a marker when they start and append one line per completed
effect to TEST_MARKS/effects.log, so a test can count side effects exactly;
a first attempt may be held until the worker is told to stop."""

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
    # With "hold_first_attempt", the first attempt (the one a test kills or
    # stops) runs until its worker is told to stop.
    if task.attempts == 1 and task.payload.get("hold_first_attempt"):
        deadline = time.monotonic() + 60
        while not worker.stopping:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker was never told to stop")
            time.sleep(0.01)
    with open(marks / "effects.log", "a") as log:
        log.write(f"{task.id} {task.attempts}\n")
    return {"attempt": task.attempts}
