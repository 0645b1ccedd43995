"""The read-side pages (HTML): overview, payment list, decline report."""

from django.urls import path

from projections import views

app_name = "projections"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("payments/", views.payment_list, name="payments"),
    path("declines/", views.declines, name="declines"),
]
