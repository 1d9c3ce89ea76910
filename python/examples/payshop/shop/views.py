from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.tasks.exceptions import TaskResultDoesNotExist
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import cherga.django

from .models import Order, Payment
from .tasks import charge_order, payment_key


@require_GET
def index(request: HttpRequest):
    orders = Order.objects.order_by("-pk")[:20]
    return render(request, "shop/index.html", {"orders": orders})


@require_POST
def new_order(request: HttpRequest):
    Order.objects.create(amount_cents=int(request.POST.get("amount_cents") or 1999))
    return redirect("index")


# A JSON endpoint for browsers' fetch(), curl and the tests. A real shop would
# authenticate the caller (session + CSRF, or a token); the demo skips that.
@csrf_exempt
@require_POST
def pay(request: HttpRequest, order_id: int):
    """Pay for an order. Pressing Pay twice at once, or retrying after a
    timeout, charges once:

    1. The order row is locked (SELECT ... FOR UPDATE; on SQLite the IMMEDIATE
       transaction serializes writers), so a concurrent second request waits
       for the first to commit and then finds its Payment.
    2. Payment.order is unique: even without the lock, a second Payment for
       the order cannot be committed.
    3. The charge task is enqueued through the outbox, in this transaction,
       with an idempotency key derived from the order: it is sent only if the
       Payment commits, never lost after it does, and cherga makes one task of
       any repeat.
    4. The task charges the processor with the same key, so a redelivered task
       (a worker died after charging) charges once too.
    """
    key = payment_key(order_id)
    created = False
    with transaction.atomic():
        order = get_object_or_404(Order.objects.select_for_update(), pk=order_id)
        payment = Payment.objects.filter(order=order).first()
        if payment is None:
            try:
                with transaction.atomic():  # a savepoint, so the unique check can fail alone
                    payment = Payment.objects.create(order=order, idempotency_key=key)
            except IntegrityError:
                payment = Payment.objects.get(order=order)
            else:
                result = cherga.django.enqueue(charge_order, [order.pk], key=key)
                payment.task_result_id = result.id
                payment.save(update_fields=["task_result_id"])
                Order.objects.filter(pk=order.pk, status="new").update(status="paying")
                created = True
    return JsonResponse(
        {"order": order_id, "payment": payment.pk, "task": payment.task_result_id, "created": created},
        status=201 if created else 200,
    )


@require_GET
def order_status(request: HttpRequest, order_id: int):
    order = get_object_or_404(Order, pk=order_id)
    body = {"order": order.pk, "status": order.status, "charges": order.charges.count(), "task": None}
    payment = Payment.objects.filter(order=order).first()
    if payment is not None and payment.task_result_id:
        try:
            result = charge_order.get_result(payment.task_result_id)
        except TaskResultDoesNotExist:
            pass
        else:
            body["task"] = {"id": result.id, "status": result.status}
    return JsonResponse(body)
