"""The payshop example: pressing "Pay" many times at once, or again after a
timeout, charges the card once."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

from django.tasks import TaskResultStatus
from django.test import Client as WebClient

from cherga import Client
from cherga.django.models import OutboxTask
from shop.models import Charge, Order, Payment
from shop.tasks import charge_order, payment_key
from tests.djhelpers import close_thread_connections, django_worker, result_when_finished
from tests.harness import EXAMPLE_DIR, PYTHON, Server, subprocess_env, wait_until


def pay_concurrently(order_id: int, n: int) -> list[tuple[int, dict]]:
    """``n`` requests to Pay, released at the same instant from ``n`` threads
    (each with its own database connection)."""
    barrier = threading.Barrier(n)
    answers: list[tuple[int, dict]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def press() -> None:
        try:
            web = WebClient()
            barrier.wait(10)
            response = web.post(f"/orders/{order_id}/pay")
            with lock:
                answers.append((response.status_code, response.json()))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            close_thread_connections()

    threads = [threading.Thread(target=press) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return answers


def charge_tasks(client: Client, order_id: int) -> list:
    key = payment_key(order_id)
    tasks, after = [], None
    while True:
        page = client.list_tasks("payments", limit=1000, after=after)
        tasks += [t for t in page.tasks if t.idempotency_key == key]
        if not page.next:
            return tasks
        after = page.next


def test_many_concurrent_pays_charge_once(client: Client) -> None:
    order = Order.objects.create(amount_cents=1999)
    answers = pay_concurrently(order.pk, 16)

    assert len(answers) == 16
    assert sorted(status for status, _ in answers) == [200] * 15 + [201]
    assert len({body["payment"] for _, body in answers}) == 1
    assert len({body["task"] for _, body in answers}) == 1
    assert Payment.objects.filter(order=order).count() == 1
    assert OutboxTask.objects.filter(idempotency_key=payment_key(order.pk)).count() == 1
    [task] = charge_tasks(client, order.pk)

    result_id = answers[0][1]["task"]
    with django_worker("default", "payments"):
        done = result_when_finished(charge_order, result_id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert Charge.objects.filter(order=order).count() == 1
    assert done.return_value == {"charge_id": Charge.objects.get(order=order).pk, "charged_now": True}
    order.refresh_from_db()
    assert order.status == "paid"
    assert client.get_task(task.id).attempts == 1


def test_pay_retried_after_a_timeout_charges_once(client: Client) -> None:
    order = Order.objects.create(amount_cents=500)
    web = WebClient()
    first = web.post(f"/orders/{order.pk}/pay")
    # The client timed out waiting (say) and presses again: same payment, no new task.
    again = web.post(f"/orders/{order.pk}/pay")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["task"] == first.json()["task"]
    with django_worker("default", "payments"):
        result_when_finished(charge_order, first.json()["task"])
        # And once more after the charge went through.
        late = web.post(f"/orders/{order.pk}/pay")
    assert late.status_code == 200 and late.json()["task"] == first.json()["task"]
    assert len(charge_tasks(client, order.pk)) == 1
    assert Charge.objects.filter(order=order).count() == 1
    status = wait_until(lambda: web.get(f"/orders/{order.pk}").json(), what="the order status")
    assert status == {
        "order": order.pk,
        "status": "paid",
        "charges": 1,
        "task": {"id": first.json()["task"], "status": "SUCCESSFUL"},
    }


def test_a_redelivered_charge_task_charges_once() -> None:
    # Delivery is at-least-once: a worker may die after charging, before its
    # ack. The task then runs again, and the processor's key makes it a no-op.
    order = Order.objects.create(amount_cents=700)
    first = charge_order.call(order.pk)
    second = charge_order.call(order.pk)
    assert first["charge_id"] == second["charge_id"]
    assert (first["charged_now"], second["charged_now"]) == (True, False)
    assert Charge.objects.filter(order=order).count() == 1


def test_shop_pages() -> None:
    web = WebClient()
    assert web.post("/orders/new", {"amount_cents": "1234"}).status_code == 302
    page = web.get("/")
    assert page.status_code == 200 and b"Pay" in page.content and b"1234" in page.content
    assert web.post("/orders/999999/pay").status_code == 404
    assert web.get("/orders/1/pay").status_code == 405


def test_the_example_worker_prints_each_log_line_once(own_server: Server, tmp_path: Path) -> None:
    env = subprocess_env(
        DJANGO_SETTINGS_MODULE="payshop.settings",
        CHERGA_URL=own_server.url,
        PAYSHOP_DB=str(tmp_path / "payshop.sqlite3"),
    )
    manage = [PYTHON, str(EXAMPLE_DIR / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, cwd=tmp_path, check=True, timeout=60)
    order = subprocess.run([*manage, "new_order"], env=env, cwd=tmp_path, check=True, timeout=60, capture_output=True)
    order_id = int(order.stdout.split()[0])
    output = tmp_path / "worker.log"
    with open(output, "wb") as sink:
        proc = subprocess.Popen(
            [*manage, "cherga_worker", "--wait-ms", "200"], env=env, cwd=tmp_path, stdout=sink, stderr=sink
        )
    try:
        wait_until(lambda: "queue payments" in output.read_text(), what="the worker's start")
        pay = f"from django.test import Client; Client().post('/orders/{order_id}/pay')"
        subprocess.run([*manage, "shell", "-c", pay], env=env, cwd=tmp_path, check=True, timeout=60)
        wait_until(lambda: "state=SUCCESSFUL" in output.read_text(), timeout=20, what="the charge task's end")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    lines = output.read_text().splitlines()
    for text in ("queue payments, 1 threads", "state=RUNNING", "state=SUCCESSFUL", "signal 15: stopping"):
        assert sum(text in line for line in lines) == 1, (text, lines)
