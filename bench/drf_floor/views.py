"""The floor's two endpoints: a two-field serializer, 201 with a small JSON body."""

from __future__ import annotations

from uuid import uuid4

from django.http import HttpRequest, JsonResponse
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.drf_floor.models import Row


class PaymentSerializer(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=14, decimal_places=2)
    currency = serializers.CharField(max_length=3, default="EUR")


class NoWrite(APIView):
    """Authenticate, validate, answer: no database write."""

    def post(self, request: Request) -> Response:
        serializer = PaymentSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response({"id": str(uuid4()), **serializer.data}, status=201)


class Durable(APIView):
    """The same, and one row inserted with one durable commit (autocommit)."""

    def post(self, request: Request) -> Response:
        serializer = PaymentSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        row = Row.objects.create(**serializer.validated_data)
        return Response({"id": row.pk, **serializer.data}, status=201)


def healthz(request: HttpRequest) -> JsonResponse:
    """What the benchmark's clients open their connection with (as on the project)."""
    return JsonResponse({"status": "ok"})
