from django.urls import path

from shop import views

urlpatterns = [
    path("", views.index, name="index"),
    path("orders/new", views.new_order, name="new_order"),
    path("orders/<int:order_id>", views.order_status, name="order_status"),
    path("orders/<int:order_id>/pay", views.pay, name="pay"),
]
