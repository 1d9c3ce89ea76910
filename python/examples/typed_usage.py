"""The package as a typed program uses it; ``mypy --strict`` checks this file
(run-tests.sh), so a return type that turns into ``Any`` shows up here."""

from __future__ import annotations

import asyncio

from cherga import AsyncClient, Client, Task, Worker


def produce(client: Client) -> str:
    task: Task = client.enqueue("emails", "send", {"to": "a@example.com"}, key="signup-1")
    leased: list[Task] = client.lease_tasks("emails", max=1)
    for one in leased:
        client.ack(one, {"sent": True})
    return task.id


async def produce_async(client: AsyncClient) -> int:
    task: Task = await client.enqueue("emails", "send", {"to": "b@example.com"})
    queue = await client.get_queue(task.queue)
    return queue.counts.ready


def worker() -> Worker:
    worker = Worker("emails", concurrency=4)

    @worker.task("send")
    def send(task: Task) -> dict[str, bool]:
        return {"sent": True}

    return worker


if __name__ == "__main__":
    with Client() as client:
        print(produce(client))
    print(asyncio.run(produce_async(AsyncClient())))
