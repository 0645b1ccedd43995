"""One thin view per command: validate the input, call one service, answer the payment.

The rules are the domain's and the service's; the errors become answers in
``payments.api.errors``; retries are made safe by ``payments.api.idempotency``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar
from uuid import UUID

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments import services
from payments.api.idempotency import IDEMPOTENCY_KEY_PARAMETER, idempotent, service_key
from payments.api.serializers import (
    EVENT_POSITION_HEADER,
    AmountField,
    BankNameField,
    CommandSerializer,
    CurrencyField,
    DeclineCodeField,
    ErrorSerializer,
    ExistingPaymentCommandSerializer,
    PaymentSerializer,
    ReferenceField,
    command_headers,
)
from payments.domain import Payment

PAYMENT_ID_PARAMETER = OpenApiParameter(
    "payment_id", OpenApiTypes.UUID, OpenApiParameter.PATH,
    description="the payment's id; anything that is not a UUID is an unknown payment (404)",
)


EVENT_POSITION_PARAMETER = OpenApiParameter(
    EVENT_POSITION_HEADER, OpenApiTypes.INT, OpenApiParameter.HEADER, response=[200, 201],
    description="the event store position of the command's event (a replay: the original"
                " event's), as the body's `position`; `GET /api/payments/?after=<it>` lists"
                " the payments with this change applied",
)


def error(description: str) -> OpenApiResponse:
    """A documented ``{"detail": …}`` answer."""
    return OpenApiResponse(ErrorSerializer, description=description)


BAD_INPUT = OpenApiResponse(
    OpenApiTypes.OBJECT,
    description='bad input: {"<field>": ["<the domain\'s message>"]}; an unknown field is'
                " refused by name",
)
COMMAND_ERRORS: dict[int, OpenApiResponse] = {
    400: BAD_INPUT,
    401: error("no credentials: send `Authorization: Token <key>` or log in"),
    403: error("not allowed (a session POST without a CSRF token)"),
    404: error("no payment has this id (or it is not a UUID)"),
    409: error("the payment's status, its balance or expected_version refused the command;"
               " the message names the current status"),
    422: error("the Idempotency-Key was used before for a different request"),
    503: error("the event store is unreachable; retry later (Retry-After)"),
}


def payment_id_from(value: str) -> UUID:
    """The payment id in the path; a malformed one names no payment, hence 404."""
    try:
        return UUID(value)
    except ValueError:
        raise exceptions.NotFound(f"payment {value!r} not found: not a payment id") from None


def validated(serializer_class: type[CommandSerializer], request: Request) -> dict[str, Any]:
    """The request body, checked by the input serializer (400 on bad input)."""
    return serializer_class.validated(request.data)


def command_schema(input_class: type[serializers.Serializer], *, operation_id: str,
                   summary: str, description: str = "", created: bool = False) -> Any:
    """The schema of a command: its body, the payment it answers and its errors."""
    ok = {201: PaymentSerializer} if created else {200: PaymentSerializer}
    parameters = [IDEMPOTENCY_KEY_PARAMETER, EVENT_POSITION_PARAMETER]
    if not created:
        parameters.append(PAYMENT_ID_PARAMETER)
    errors = {code: answer for code, answer in COMMAND_ERRORS.items()
              if not (created and code in (404, 409))}
    return extend_schema(operation_id=operation_id, summary=summary, description=description,
                         request=input_class,
                         responses={**ok, **errors}, parameters=parameters, tags=["payments"])


class CreatePaymentSerializer(CommandSerializer):
    amount = AmountField()
    currency = CurrencyField(required=False, allow_null=True,
                             help_text="ISO 4217; the server's default currency if absent")
    reference = ReferenceField(required=False, allow_null=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """``null`` means absent (the input policy): no reference, which the service's
        default says."""
        if attrs.get("reference", "") is None:
            del attrs["reference"]
        return attrs


class AuthorizePaymentSerializer(ExistingPaymentCommandSerializer):
    bank_name = BankNameField()


class SettlePaymentSerializer(ExistingPaymentCommandSerializer):
    amount = AmountField(required=False, allow_null=True,
                         help_text="what to settle; everything outstanding if absent")
    bank_name = BankNameField(required=False, allow_null=True,
                              help_text="the authorizing bank if absent")


class RefundPaymentSerializer(ExistingPaymentCommandSerializer):
    amount = AmountField(required=False, allow_null=True,
                         help_text="what to refund; everything settled and not refunded if absent")


class DeclinePaymentSerializer(ExistingPaymentCommandSerializer):
    bank_name = BankNameField()
    decline_code = DeclineCodeField()


class PaymentCreateApi(APIView):
    """POST /api/payments/: create a pending payment."""

    @command_schema(CreatePaymentSerializer, operation_id="payments_create",
                    summary="Create a payment", created=True,
                    description="Answers 201 with the payment, its URL in `Location` and its"
                                " event's position in `X-Event-Position`.")
    @idempotent
    def post(self, request: Request) -> Response:
        data = validated(CreatePaymentSerializer, request)
        payment = services.create_payment(**data, idempotency_key=service_key(request))
        location = request.build_absolute_uri(reverse("api:payment-detail", args=[payment.id]))
        return Response(PaymentSerializer(payment).data, status=status.HTTP_201_CREATED,
                        headers={"Location": location, **command_headers(payment)})


class PaymentCommandApi(APIView):
    """A command on an existing payment: the body checked by ``input_class``, then ``command``.

    Each subclass names its input and its one service function; the schema comes from
    ``extend_schema_view`` on the subclass.
    """

    input_class: ClassVar[type[CommandSerializer]]
    command: ClassVar[Callable[..., Payment]]

    @idempotent
    def post(self, request: Request, payment_id: str) -> Response:
        payment_uuid = payment_id_from(payment_id)
        data = validated(self.input_class, request)
        payment = type(self).command(
            payment_id=payment_uuid, **data, idempotency_key=service_key(request)
        )
        return Response(PaymentSerializer(payment).data, headers=command_headers(payment))


@extend_schema_view(post=command_schema(
    AuthorizePaymentSerializer, operation_id="payments_authorize",
    summary="Authorize a pending payment"))
class PaymentAuthorizeApi(PaymentCommandApi):
    """POST /api/payments/{id}/authorize/: the bank authorized a pending payment."""

    input_class = AuthorizePaymentSerializer
    command = staticmethod(services.authorize_payment)


@extend_schema_view(post=command_schema(
    SettlePaymentSerializer, operation_id="payments_settle",
    summary="Settle an authorized payment, in part or in full"))
class PaymentSettleApi(PaymentCommandApi):
    """POST /api/payments/{id}/settle/: settle part or all of what is outstanding."""

    input_class = SettlePaymentSerializer
    command = staticmethod(services.settle_payment)


@extend_schema_view(post=command_schema(
    RefundPaymentSerializer, operation_id="payments_refund",
    summary="Refund a settled payment, in part or in full"))
class PaymentRefundApi(PaymentCommandApi):
    """POST /api/payments/{id}/refund/: refund part or all of what was settled."""

    input_class = RefundPaymentSerializer
    command = staticmethod(services.refund_payment)


@extend_schema_view(post=command_schema(
    DeclinePaymentSerializer, operation_id="payments_decline",
    summary="Decline a pending or authorized payment"))
class PaymentDeclineApi(PaymentCommandApi):
    """POST /api/payments/{id}/decline/: the bank refused a pending or authorized payment."""

    input_class = DeclinePaymentSerializer
    command = staticmethod(services.decline_payment)
