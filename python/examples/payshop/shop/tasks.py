from django.tasks import task

from . import gateway
from .models import Order


@task(queue_name="payments")
def charge_order(order_id: int) -> dict:
    """Charge the card for an order. Runs at least once (cherga redelivers a
    task whose worker died), so it is idempotent: the processor key is derived
    from the order, as the enqueue key was."""
    order = Order.objects.get(pk=order_id)
    charge, created = gateway.charge(order, key=payment_key(order_id))
    Order.objects.filter(pk=order_id).update(status="paid")
    return {"charge_id": charge.pk, "charged_now": created}


def payment_key(order_id: int) -> str:
    return f"order-{order_id}-pay"
