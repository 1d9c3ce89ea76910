"""A fake card processor. Like a real one, it takes an idempotency key: the
same key charges once, however often the request is repeated (a task
delivered twice because a worker died after charging but before acking)."""

from django.db import IntegrityError, transaction

from .models import Charge, Order


def charge(order: Order, *, key: str) -> tuple[Charge, bool]:
    """Charge the order's amount; returns (charge, created)."""
    try:
        with transaction.atomic():
            return Charge.objects.create(idempotency_key=key, order=order, amount_cents=order.amount_cents), True
    except IntegrityError:
        return Charge.objects.get(idempotency_key=key), False
