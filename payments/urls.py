"""The payment pages (HTML): create, a payment's page, its command forms."""

from django.urls import path

from payments import views

app_name = "payments"

urlpatterns = [
    path("new/", views.payment_new, name="new"),
    # <uuid:…>: a malformed id matches nothing, hence a 404 like an unknown one.
    path("<uuid:payment_id>/", views.payment_detail, name="detail"),
    path("<uuid:payment_id>/<str:action>/", views.payment_command, name="command"),
]
