"""The REST API's reads: one payment folded from its stream, and the read-model lists.

The detail asks the command service (the stream is authoritative and always
current); the lists read the projections' tables, which may lag the store by a
moment: given ``?after=<position>`` (a command's answer) they first wait for it
(``projections.read_your_writes``). This is the only part of ``payments`` that knows
the read models.
"""

from __future__ import annotations

from typing import Any, ClassVar

import django_filters
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from payments import services
from payments.api.commands import COMMAND_ERRORS, PAYMENT_ID_PARAMETER, error, payment_id_from
from payments.api.serializers import (
    MONEY,
    BlankAsNullCharField,
    PaymentDetail,
    PaymentDetailSerializer,
)
from payments.domain import InvalidInput, PaymentStatus, parse_currency, parse_decline_code
from payments.history import API_MAX_PAGE_SIZE, API_PAGE_SIZE, PageParameterError, exact_page
from projections import read_your_writes
from projections.models import DeclineView, PaymentView
from projections.projectors import DeclineProjection, PaymentProjection

LIST_ERRORS = {
    400: COMMAND_ERRORS[400],
    401: COMMAND_ERRORS[401],
    404: error("no such page"),
}


class Pagination(PageNumberPagination):
    """``?page=N`` (and ``page_size`` up to 500): lists stay cheap however long they grow."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


def normalised_filter(parse: Any, field: str) -> Any:
    """A filter method that reads its value through a domain ``parse_*`` function."""

    def filter_method(queryset: QuerySet, name: str, value: str) -> QuerySet:
        try:
            return queryset.filter(**{field: parse(value)})
        except InvalidInput as e:
            raise serializers.ValidationError({name: [e.message]}) from None

    return filter_method


class PaymentFilter(django_filters.FilterSet):
    """``?status=&bank_name=&currency=`` (exact; currency case-insensitive)."""

    status = django_filters.ChoiceFilter(choices=[(s.value, s.value) for s in PaymentStatus])
    bank_name = django_filters.CharFilter()
    currency = django_filters.CharFilter(method=normalised_filter(parse_currency, "currency"))

    class Meta:
        model = PaymentView
        fields = ["status", "bank_name", "currency"]


class DeclineFilter(django_filters.FilterSet):
    """``?decline_code=&bank_name=&date=`` and a date range ``date_from``/``date_to``."""

    decline_code = django_filters.CharFilter(
        method=normalised_filter(parse_decline_code, "decline_code")
    )
    bank_name = django_filters.CharFilter()
    date = django_filters.DateFilter()
    date_from = django_filters.DateFilter(field_name="date", lookup_expr="gte")
    date_to = django_filters.DateFilter(field_name="date", lookup_expr="lte")

    class Meta:
        model = DeclineView
        fields = ["decline_code", "bank_name", "date", "date_from", "date_to"]


class PaymentListItemSerializer(serializers.ModelSerializer):
    """A payment as the PaymentView projection last saw it."""

    id = serializers.UUIDField(source="payment_id")
    amount = serializers.DecimalField(**MONEY)
    reference = serializers.CharField(
        allow_blank=True, help_text="the merchant's reference given at create; \"\" for none")
    settled_amount = serializers.DecimalField(**MONEY)
    refunded_amount = serializers.DecimalField(**MONEY)
    bank_name = BlankAsNullCharField()
    decline_code = BlankAsNullCharField()

    class Meta:
        model = PaymentView
        fields = ["id", "status", "amount", "currency", "reference", "settled_amount",
                  "refunded_amount", "bank_name", "decline_code", "version", "position",
                  "created_at", "updated_at"]
        extra_kwargs = {"position": {"help_text": "the event store position of the last"
                                                  " event the projection applied to this row"}}


class DeclineSerializer(serializers.ModelSerializer):
    """Declines counted by code, bank and UTC date."""

    class Meta:
        model = DeclineView
        fields = ["decline_code", "bank_name", "date", "count"]


AFTER_PARAMETER = OpenApiParameter(
    read_your_writes.AFTER,
    {"type": "integer", "minimum": 0, "maximum": read_your_writes.MAX_POSITION},
    OpenApiParameter.QUERY,
    description="read your writes: the `position` (or `X-Event-Position`) a command answered."
                " The list waits until its projection has applied that event, at most the"
                " server's READ_YOUR_WRITES_TIMEOUT (2 s by default); if it has not by then,"
                " the list is answered anyway, marked `X-Read-Model-Stale: true`. Not a whole"
                " number, or beyond the event store's last position: 400.",
)
FRESHNESS_HEADERS = [
    OpenApiParameter(
        read_your_writes.STALE_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER,
        response=[200], enum=["true", "false"],
        description="only with `after`: `true` when the projection had not applied that event"
                    " within the bound (the list may not show it), else `false`"),
    OpenApiParameter(
        read_your_writes.POSITION_HEADER, OpenApiTypes.INT, OpenApiParameter.HEADER,
        response=[200],
        description="only with `after`: the projection's checkpoint when the list was read"
                    " (every event up to it is applied)"),
]


class ProjectionListApi(generics.ListAPIView):
    """A list of a read model: honours ``?after=`` (read your writes) before it queries."""

    projection: ClassVar[str]

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        freshness = read_your_writes.wait_until_applied(
            [self.projection], request.query_params.get(read_your_writes.AFTER))
        response = super().list(request, *args, **kwargs)
        for name, value in read_your_writes.headers(freshness).items():
            response[name] = value
        return response


class PaymentListApi(ProjectionListApi):
    """GET /api/payments/: the PaymentView read model, newest change first."""

    projection = PaymentProjection.name

    queryset = PaymentView.objects.order_by("-updated_at", "payment_id")
    serializer_class = PaymentListItemSerializer
    filterset_class = PaymentFilter
    pagination_class = Pagination

    @extend_schema(operation_id="payments_list", summary="List payments (read model)",
                   description="The PaymentView read model, newest change first; it may lag"
                               " the event store by a moment (the detail never does): pass"
                               " `after` to read it with your own change.",
                   parameters=[AFTER_PARAMETER, *FRESHNESS_HEADERS],
                   responses={200: PaymentListItemSerializer(many=True), **LIST_ERRORS},
                   tags=["payments"])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class DeclineListApi(ProjectionListApi):
    """GET /api/declines/: the DeclineView read model, newest date first."""

    projection = DeclineProjection.name

    queryset = DeclineView.objects.order_by("-date", "decline_code", "bank_name")
    serializer_class = DeclineSerializer
    filterset_class = DeclineFilter
    pagination_class = Pagination

    @extend_schema(operation_id="declines_list", summary="Declines by code, bank and date",
                   description="The DeclineView read model, newest date first; pass `after`"
                               " to read it with your own change.",
                   parameters=[AFTER_PARAMETER, *FRESHNESS_HEADERS],
                   responses={200: DeclineSerializer(many=True), **LIST_ERRORS},
                   tags=["declines"])
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


EVENTS_PAGE_PARAMETERS = [
    OpenApiParameter(
        "events_page", {"type": "integer", "minimum": 1}, OpenApiParameter.QUERY,
        description="which page of the events, from 1 (the oldest); a page that does not"
                    " exist is a 400. Follow `events_next` rather than counting.",
    ),
    OpenApiParameter(
        "events_page_size",
        {"type": "integer", "minimum": 1, "maximum": API_MAX_PAGE_SIZE,
         "default": API_PAGE_SIZE},
        OpenApiParameter.QUERY,
        description=f"events per page, 1 to {API_MAX_PAGE_SIZE}; default {API_PAGE_SIZE}",
    ),
]


AS_OF_PARAMETERS = [
    OpenApiParameter(
        "as_of_version", {"type": "integer", "minimum": 0}, OpenApiParameter.QUERY,
        description="the payment as it was right after this event (stream versions count from"
                    " 0, as `version` and `events[].version` do), with its events up to there;"
                    " beyond the last version is a 400 naming it. Not with `as_of`.",
    ),
    OpenApiParameter(
        "as_of", {"type": "string", "format": "date-time"}, OpenApiParameter.QUERY,
        description="the payment as it was at this moment (ISO 8601, a date and a time; no"
                    " zone means UTC; in a URL write `+` as `%2B`): after the events that"
                    " occurred at or before it. Before the payment existed is a 404. Not with"
                    " `as_of_version`.",
    ),
]


class PaymentDetailApi(APIView):
    """GET /api/payments/{id}/: the payment folded from its stream, with a page of its events.

    The first page is what this endpoint always answered for a payment with up to
    ``API_PAGE_SIZE`` events: all of them, oldest first; a longer history is paged so
    an answer stays small however many events a payment has. ``?as_of_version=N`` or
    ``?as_of=<time>`` answers a past state instead, marked by ``as_of``.
    """

    @extend_schema(
        operation_id="payments_retrieve", summary="A payment and its events, a page at a time",
        description=f"The payment folded from its stream (always current), `events_count`,"
                    f" and a page of its `events`, oldest first: at most `events_page_size`"
                    f" ({API_PAGE_SIZE} by default), so a payment with fewer events has them"
                    f" all on the first page. `events_next` and `events_previous` are the URLs"
                    f" of the pages either side (null when there is none). With"
                    f" `as_of_version` or `as_of`, the payment as it was then, its events up"
                    f" to there, and `as_of` saying which state it is.",
        parameters=[PAYMENT_ID_PARAMETER, *EVENTS_PAGE_PARAMETERS, *AS_OF_PARAMETERS],
        tags=["payments"],
        responses={200: PaymentDetailSerializer,
                   **{code: COMMAND_ERRORS[code] for code in (400, 401, 404, 503)}},
    )
    def get(self, request: Request, payment_id: str) -> Response:
        found = services.find_payment_as_of(
            payment_id=payment_id_from(payment_id),
            version=request.query_params.get("as_of_version"),
            time=request.query_params.get("as_of"),
        )
        try:
            page = exact_page(found.history, request.query_params.get("events_page"),
                              request.query_params.get("events_page_size"))
        except PageParameterError as e:
            raise serializers.ValidationError({f"events_{e.parameter}": [e.message]}) from None
        url = request.build_absolute_uri()
        detail = PaymentDetail(
            payment=found.payment, events=page,
            next_url=(replace_query_param(url, "events_page", page.next_page_number())
                      if page.has_next() else None),
            previous_url=(replace_query_param(url, "events_page", page.previous_page_number())
                          if page.has_previous() else None),
            as_of=found.as_of,
        )
        return Response(PaymentDetailSerializer(detail).data)
