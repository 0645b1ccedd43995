"""The REST API's paths (DESIGN.md, "Interfaces"), under ``/api/``."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from payments.api.commands import (
    PaymentAuthorizeApi,
    PaymentCreateApi,
    PaymentDeclineApi,
    PaymentRefundApi,
    PaymentSettleApi,
)
from payments.api.reads import DeclineListApi, PaymentDetailApi, PaymentListApi


class PaymentCollectionApi(PaymentListApi, PaymentCreateApi):
    """``/api/payments/``: GET lists, POST creates (one path, so one view class)."""


app_name = "api"
urlpatterns = [
    path("payments/", PaymentCollectionApi.as_view(), name="payments"),
    # str, not uuid: a malformed id is then a JSON 404 from the view, not an HTML page.
    path("payments/<str:payment_id>/", PaymentDetailApi.as_view(), name="payment-detail"),
    path("payments/<str:payment_id>/authorize/", PaymentAuthorizeApi.as_view(),
         name="payment-authorize"),
    path("payments/<str:payment_id>/settle/", PaymentSettleApi.as_view(), name="payment-settle"),
    path("payments/<str:payment_id>/refund/", PaymentRefundApi.as_view(), name="payment-refund"),
    path("payments/<str:payment_id>/decline/", PaymentDeclineApi.as_view(),
         name="payment-decline"),
    path("declines/", DeclineListApi.as_view(), name="declines"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
]
