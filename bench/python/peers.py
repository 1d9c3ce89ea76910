"""The same no-op drain as ``cherga_worker.py``, on Dramatiq and Celery.

    python bench/python/peers.py dramatiq --redis redis://127.0.0.1:6379/15 [--tasks 20000] [--threads 8]
    python bench/python/peers.py celery --broker amqp://guest@127.0.0.1// [--tasks 20000] [--threads 8]

Queues ``--tasks`` no-op messages (not timed), then runs the library's own
worker in this process (Dramatiq's ``Worker`` with ``--threads`` threads;
Celery's worker with the thread pool and ``acks_late``) until every message
was handled, and prints one JSON line: tasks/s and this process's CPU per
1,000 tasks. Needs ``pip install "dramatiq[redis]" "celery[redis]"``. The
brokers run as they are configured (this does not set Redis's fsync or
RabbitMQ's durability): say how when quoting a figure.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid


class Countdown:
    """Sets ``done`` once ``tick`` was called ``count`` times, from any thread."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.lock = threading.Lock()
        self.done = threading.Event()

    def tick(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                self.done.set()


def dramatiq_run(url: str, tasks: int, threads: int) -> tuple[float, float]:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)
    countdown = Countdown(tasks)
    queue = f"bench-{uuid.uuid4().hex[:8]}"

    @dramatiq.actor(queue_name=queue, max_retries=0)
    def noop(i: int) -> None:
        countdown.tick()

    for i in range(tasks):
        noop.send(i)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    worker = dramatiq.Worker(broker, worker_threads=threads, queues={queue})
    worker.start()
    countdown.done.wait()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    worker.stop()
    return wall, cpu


def celery_run(url: str, tasks: int, threads: int) -> tuple[float, float]:
    from celery import Celery

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    app = Celery("bench", broker=url)
    app.conf.update(
        task_acks_late=True, task_ignore_result=True, worker_prefetch_multiplier=4, task_default_queue=queue
    )
    countdown = Countdown(tasks)

    @app.task(name="noop")
    def noop(i: int) -> None:
        countdown.tick()

    for i in range(tasks):
        noop.delay(i)
    worker = app.Worker(pool="threads", concurrency=threads, queues=[queue], loglevel="WARNING", quiet=True)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    runner = threading.Thread(target=worker.start, daemon=True)
    runner.start()
    countdown.done.wait()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("system", choices=("dramatiq", "celery"))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--broker", default="amqp://guest:guest@127.0.0.1:5672//")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    if args.system == "dramatiq":
        wall, cpu = dramatiq_run(args.redis, args.tasks, args.threads)
    else:
        wall, cpu = celery_run(args.broker, args.tasks, args.threads)
    print(
        json.dumps(
            {
                "system": args.system,
                "threads": args.threads,
                "tasks": args.tasks,
                "tasks_per_s": round(args.tasks / wall),
                "cpu_s_per_1000_tasks": round(cpu / args.tasks * 1000, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
    import os

    os._exit(0)  # Celery's worker thread does not stop on its own
