"""The Python package's worker and producer speed, against a running cherga.

    python bench/python/cherga_worker.py --url http://127.0.0.1:7700 \
        [--tasks 20000] [--threads 8] [--enqueues 3000] [--mode thread|async] [--src DIR]

Queues ``--tasks`` no-op tasks on a fresh queue (in batches, not timed), then
runs the library's standard worker (``Worker`` with ``--threads`` threads, or
``AsyncWorker`` with ``async def`` handlers) in this process until every task
was handled and the worker has shut down, and checks on the server that all of
them succeeded. Then times ``--enqueues`` single ``Client.enqueue`` calls from
one thread. Prints one JSON line: tasks/s, worker CPU per 1,000 tasks (this
process's CPU time), enqueues/s and CPU per enqueue. ``--src`` puts another
copy of the package first on ``sys.path`` (to compare two versions in one run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--enqueues", type=int, default=3_000)
    parser.add_argument("--mode", choices=("thread", "async"), default="thread")
    parser.add_argument("--src", default=None)
    args = parser.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    import cherga
    from cherga import Client, NewTask

    queue = f"bench-{uuid.uuid4().hex[:8]}"
    with Client(args.url) as client:
        for start in range(0, args.tasks, 1000):
            n = min(1000, args.tasks - start)
            client.enqueue_many(queue, [NewTask("noop", {"i": start + i}) for i in range(n)])

    done = threading.Event()
    handled = 0
    lock = threading.Lock()

    def count() -> None:
        nonlocal handled
        with lock:
            handled += 1
            if handled == args.tasks:
                done.set()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    if args.mode == "thread":
        worker = cherga.Worker(queue, url=args.url, concurrency=args.threads, wait_ms=1000)

        @worker.task("noop")
        def noop(task: object) -> None:
            count()

        worker.start()
        done.wait()
        worker.stop()
        worker.join()
    else:
        aworker = cherga.AsyncWorker(queue, url=args.url, concurrency=args.threads, wait_ms=1000)

        @aworker.task("noop")
        async def anoop(task: object) -> None:
            count()

        async def serve() -> None:
            runner = asyncio.create_task(aworker.serve())
            while not done.is_set():
                await asyncio.sleep(0.01)
            aworker.stop()
            await runner

        asyncio.run(serve())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0

    with Client(args.url) as client:
        succeeded = client.get_queue(queue).counts.succeeded
        assert succeeded == args.tasks, f"{succeeded} of {args.tasks} tasks succeeded"
        cpu1, wall1 = time.process_time(), time.perf_counter()
        for i in range(args.enqueues):
            client.enqueue(queue + "-enq", "noop", {"i": i})
        enq_wall, enq_cpu = time.perf_counter() - wall1, time.process_time() - cpu1

    print(
        json.dumps(
            {
                "mode": args.mode,
                "threads": args.threads,
                "tasks": args.tasks,
                "tasks_per_s": round(args.tasks / wall),
                "cpu_s_per_1000_tasks": round(cpu / args.tasks * 1000, 3),
                "enqueues_per_s": round(args.enqueues / enq_wall),
                "cpu_ms_per_enqueue": round(enq_cpu / args.enqueues * 1000, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
