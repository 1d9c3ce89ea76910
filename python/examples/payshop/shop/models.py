from django.db import models


class Order(models.Model):
    amount_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=16, default="new")  # new -> paying -> paid
    created_at = models.DateTimeField(auto_now_add=True)


class Payment(models.Model):
    """The decision to charge an order: at most one per order (the unique
    one-to-one), created in the same transaction as the charge task."""

    order = models.OneToOneField(Order, on_delete=models.PROTECT, related_name="payment")
    idempotency_key = models.CharField(max_length=128, unique=True)
    task_result_id = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)


class Charge(models.Model):
    """The card processor's ledger (a stand-in for Stripe and the like): one
    row per card charge actually made. A processor deduplicates requests by
    idempotency key, and so does this one."""

    idempotency_key = models.CharField(max_length=128, unique=True)
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="charges")
    amount_cents = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
