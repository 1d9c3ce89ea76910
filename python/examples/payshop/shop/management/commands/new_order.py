from django.core.management.base import BaseCommand

from shop.models import Order


class Command(BaseCommand):
    help = "Create an order and print its id."

    def add_arguments(self, parser):
        parser.add_argument("--amount-cents", type=int, default=1999)

    def handle(self, *args, **options):
        order = Order.objects.create(amount_cents=options["amount_cents"])
        self.stdout.write(str(order.pk))
