"""The payment pages: the create form, a payment's page and its command forms.

The payment's page reads the stream (``find_payment_as_of``), never a projection, so
after a command (POST, then redirect) the user sees the new state at once; with
``?as_of_version=N`` (or ``?as_of=<time>``) it shows the payment as it was then, with
no forms and no live updates. Each command view validates one form and calls one
service function, then redirects to the payment's page with ``?after=<position>`` of
its event: the page's links to the lists carry it on (templates/base.html), and the
lists wait for their projection to apply it (read your writes).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from payments import services
from payments.api.tokens import find_token, issue_token, rotate_token
from payments.domain import (
    Action,
    AmountExceedsBalance,
    InvalidInput,
    LimitReached,
    Payment,
    TransitionNotAllowed,
)
from payments.forms import (
    AuthorizeForm,
    CommandForm,
    CreatePaymentForm,
    DeclineForm,
    RefundForm,
    RotateTokenForm,
    SettleForm,
)
from payments.history import nearest_page, page_links, page_summary
from paymentsite.errors import not_found_page
from paymentsite.live import live_page, store_head

COMMANDS: dict[Action, tuple[type[CommandForm], Any]] = {
    Action.AUTHORIZE: (AuthorizeForm, services.authorize_payment),
    Action.SETTLE: (SettleForm, services.settle_payment),
    Action.REFUND: (RefundForm, services.refund_payment),
    Action.DECLINE: (DeclineForm, services.decline_payment),
}

# A rule of the payment refused the command: its message says which rule.
REFUSALS = (TransitionNotAllowed, AmountExceedsBalance, LimitReached)
# The page the form came from is out of date: said for people, with the state now.
OUT_OF_DATE = {
    services.ConcurrencyConflict: "This payment changed while you were on this page: it is"
                                  " now {status}. Review and try again.",
    services.IdempotencyKeyReused: "This form was already sent, with other values (after"
                                   " going back and editing it?): the payment is now"
                                   " {status}. Review and try again.",
}
AS_OF_PARAMETERS = ("as_of_version", "as_of")
# The lists' read-your-writes parameter (projections.read_your_writes.AFTER; the write
# side does not import the read side).
READ_AFTER = "after"
KEY_REUSED_ON_NEW = ("This form was already sent, with other values (after going back and"
                     " editing it?), and made a payment then. Check the values and send the"
                     " form again to make another payment.")


def _to_payment_page(payment: Payment) -> HttpResponseRedirect:
    """After a command: the payment's page, with its event's position for the lists."""
    return redirect(f"{reverse('payments:detail', args=[payment.id])}"
                    f"?{READ_AFTER}={payment.position}")


def status_words(status: str) -> str:
    """``partially_settled`` as people write it: ``partially settled``."""
    return status.replace("_", " ")


def _auto_id(action: Action) -> str:
    """Element ids per form (``settle-amount``), since several forms share field names."""
    return f"{action}-%s"


def _fresh_form(action: Action, version: int) -> CommandForm:
    form_class, _ = COMMANDS[action]
    return form_class(auto_id=_auto_id(action),
                      initial={"expected_version": version, "idempotency_key": uuid4()})


def is_past_state(request: HttpRequest) -> bool:
    """A payment's page asked for a past state, which never changes: no polling for it."""
    return any(name in request.GET for name in AS_OF_PARAMETERS)


def _payment_page(
    request: HttpRequest, payment_id: UUID, *, failed: tuple[Action, CommandForm] | None = None,
    refusal: str | None = None, out_of_date: str | None = None, status: int = 200,
    as_of_version: str | None = None, as_of: str | None = None,
) -> HttpResponse:
    """The payment's state, one page of its history and one form per allowed action.

    ``?events_page=N`` picks the page (from 1, the oldest; none: the newest page, where
    a command's event appears); a number out of range shows the nearest page. A past
    state (``as_of_version``, ``as_of``) offers no forms: the past cannot be acted on.
    """
    try:
        found = services.find_payment_as_of(payment_id=payment_id, version=as_of_version,
                                            time=as_of)
    except services.PaymentNotYetCreated as e:
        return not_found_page(request, f"The {e}.", link=(
            reverse("payments:detail", args=[payment_id]), "See the payment as it is now"))
    except services.PaymentNotFound:
        raise Http404(f"payment {payment_id} not found") from None
    except InvalidInput as e:
        return render(request, "400.html", {
            "message": str(e),
            "back": reverse("payments:detail", args=[payment_id])}, status=400)
    payment = found.payment
    errors = [refusal] if refusal else []
    if out_of_date:
        errors.append(out_of_date.format(status=status_words(payment.status)))
    forms = []
    for action in () if found.as_of else payment.allowed_actions:
        if failed and failed[0] == action:
            forms.append((action, failed[1]))
        else:
            forms.append((action, _fresh_form(action, payment.version)))
    if failed and failed[0] not in payment.allowed_actions:
        # The status moved on: the failed form is not shown, so say why at the top.
        errors.append(f"cannot {failed[0]} a payment that is {payment.status}")
    page = nearest_page(found.history, request.GET.get("events_page"))
    as_of_event = found.history[-1] if found.as_of else None
    return render(request, "payments/detail.html", {
        "payment": payment, "history": page.object_list, "history_page": page,
        "history_links": page_links(page), "history_summary": page_summary(page),
        "forms": forms, "errors": errors, "as_of": found.as_of, "as_of_event": as_of_event,
        # Pages of a past state's history stay in that state.
        "page_query": f"as_of_version={found.as_of.version}&" if found.as_of else "",
    }, status=status)


@login_required
@require_GET
@live_page(store_head, unless=is_past_state)
def payment_detail(request: HttpRequest, payment_id: UUID) -> HttpResponse:
    """GET /payments/<id>/: read from the stream, always current; or a past state."""
    return _payment_page(request, payment_id, as_of_version=request.GET.get("as_of_version"),
                         as_of=request.GET.get("as_of"))


@login_required
@require_http_methods(["GET", "POST"])
def payment_command(request: HttpRequest, payment_id: UUID, action: str) -> HttpResponse:
    """POST /payments/<id>/<action>/: one command, then back to the payment's page.

    A refused form is answered at this address, so a reload or a bookmark GETs it: that
    goes to the payment's page, at the action's form. An unknown action is a 404.
    """
    try:
        command = Action(action)
    except ValueError:
        raise Http404(f"no action {action!r}") from None
    if request.method == "GET":
        return redirect(f"{reverse('payments:detail', args=[payment_id])}#form-{command}")
    form_class, service = COMMANDS[command]
    form = form_class(request.POST, auto_id=_auto_id(command))
    if not form.is_valid():
        return _payment_page(request, payment_id, failed=(command, form), status=400)
    try:
        payment = service(payment_id=payment_id, **form.arguments(),
                          **form.command_options(request.user.pk))
    except InvalidInput as e:
        form.add_error(e.field if e.field in form.fields else None, e.message)
        return _payment_page(request, payment_id, failed=(command, form), status=400)
    except services.PaymentNotFound:
        raise Http404(f"payment {payment_id} not found") from None
    except REFUSALS as e:
        return _payment_page(request, payment_id, refusal=str(e), status=409)
    except tuple(OUT_OF_DATE) as e:
        return _payment_page(request, payment_id, out_of_date=OUT_OF_DATE[type(e)], status=409)
    messages.success(request, f"{command.capitalize()}: the payment is now"
                              f" {status_words(payment.status)}.")
    return _to_payment_page(payment)


@login_required
@require_http_methods(["GET", "POST"])
def payment_new(request: HttpRequest) -> HttpResponse:
    """GET the create form; POST creates the payment and goes to its page."""
    if request.method == "GET":
        form = CreatePaymentForm(initial={"idempotency_key": uuid4()})
        return render(request, "payments/new.html", {"form": form})
    form = CreatePaymentForm(request.POST)
    if form.is_valid():
        try:
            payment = services.create_payment(**form.arguments(),
                                              **form.command_options(request.user.pk))
        except InvalidInput as e:
            form.add_error(e.field if e.field in form.fields else None, e.message)
        except services.IdempotencyKeyReused:
            # The same values with a new key: sending again makes a payment, as said.
            data = request.POST.copy()
            data["idempotency_key"] = str(uuid4())
            form = CreatePaymentForm(data)
            form.is_valid()
            form.add_error(None, KEY_REUSED_ON_NEW)
        else:
            messages.success(request, f"Created: the payment of {payment.amount}"
                                      f" {payment.currency} is {status_words(payment.status)}.")
            return _to_payment_page(payment)
    return render(request, "payments/new.html", {"form": form}, status=400)


@login_required
@require_http_methods(["GET", "POST"])
def api_token(request: HttpRequest) -> HttpResponse:
    """/accounts/token/: the user's API token; POST makes it, or replaces it once confirmed."""
    rotate_form = RotateTokenForm()
    status = 200
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "create":
            issue_token(request.user)
            messages.success(request, "Your API token is ready.")
            return redirect("token")
        if action != "rotate":
            return render(request, "400.html", {"message": "action must be create or rotate",
                                                "back": reverse("token")}, status=400)
        rotate_form = RotateTokenForm(request.POST)
        if rotate_form.is_valid():
            rotate_token(request.user)
            messages.success(request, "A new token replaces the old one, which no longer works.")
            return redirect("token")
        status = 400
    token = find_token(request.user)
    api_root = request.build_absolute_uri("/api/payments/")
    return render(request, "payments/token.html", {
        "token": token, "rotate_form": rotate_form, "api_root": api_root}, status=status)
