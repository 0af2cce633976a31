"""The end user's checkout pages: /checkout, the HTMX credit preview, pay, test mode, success.

Views parse, call billing.payments / billing.checkout_selectors, and render. Everything is
reached with a signed link (billing.checkout_links) or a signed payment reference
(payments.payment_ref); an unknown VE and a bad token get the same page and status, so a
link-guesser learns nothing about which VEs exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import checkout_selectors as selectors
from billing import payments, stripe_gateway
from billing.checkout_links import checkout_token, verify_checkout_token
from billing.currency import exponent, format_money, format_money_short, to_minor
from billing.models import Payment, PaymentStatus
from billing.money import MoneyError, format_credits_human
from routing.models import EndpointStatus, VirtualEndpoint

CUSTOM = "custom"


@dataclass
class Selection:
    currency: str
    choice: str  # a preset's minor amount as text, or CUSTOM
    custom: str  # major units as the payer typed them
    amount_minor: int | None
    error: str = ""


# --- resolving links --------------------------------------------------------------------


def _linked_ve(data) -> VirtualEndpoint | None:
    ve_id, token = data.get("ve_id", ""), data.get("token", "")
    if not ve_id or not token or not verify_checkout_token(ve_id, token):
        return None
    return VirtualEndpoint.objects.select_related("organization").filter(public_id=ve_id).first()


def _invalid_link(request: HttpRequest) -> HttpResponse:
    return render(request, "checkout/invalid_link.html", status=404)


def _linked_payment(request: HttpRequest) -> Payment | None:
    payment_id = payments.payment_id_from_ref(request.GET.get("ref") or request.POST.get("ref") or "")
    if payment_id is None:
        return None
    return Payment.objects.select_related("virtual_endpoint").filter(pk=payment_id).first()


# --- the checkout page --------------------------------------------------------------------


def _selection(ve: VirtualEndpoint, data, offered: list[str]) -> Selection:
    currency = (data.get("currency") or "").upper()
    if currency not in offered:
        currency = offered[0] if offered else ""
    presets = [int(a) for a in ve.checkout_amounts or []]
    default = str(presets[1] if len(presets) > 1 else presets[0]) if presets else CUSTOM
    choice = data.get("amount") or default
    custom = (data.get("custom_amount") or "").strip()
    if choice != CUSTOM:
        if not choice.isdigit() or int(choice) not in presets:
            choice = default
        if choice != CUSTOM:
            return Selection(currency, choice, custom, int(choice))
    return _custom_selection(ve, currency, custom)


def _custom_selection(ve: VirtualEndpoint, currency: str, custom: str) -> Selection:
    if not custom:
        return Selection(currency, CUSTOM, custom, None)
    places = exponent(currency) if currency else 2
    try:
        amount = to_minor(custom.replace(",", ""), currency or "USD")
    except MoneyError:
        return Selection(currency, CUSTOM, custom, None, f"Enter an amount with at most {places} decimals.")
    low, high = ve.checkout_min_amount, ve.checkout_max_amount
    if not low <= amount <= high:
        error = f"Choose between {format_money(low, currency)} and {format_money(high, currency)}."
        return Selection(currency, CUSTOM, custom, None, error)
    return Selection(currency, CUSTOM, custom, amount)


def _status_label(ve: VirtualEndpoint) -> str:
    if ve.status == EndpointStatus.SUSPENDED:
        return "Suspended"
    return "Active" if ve.balance > 0 else "Exhausted"


def _page_context(ve: VirtualEndpoint, data, error: str = "") -> dict:
    offered = selectors.offered_currencies(ve)
    selection = _selection(ve, data, offered)
    quote = None
    if selection.currency and selection.amount_minor:
        quote = selectors.quote(ve, selection.amount_minor, selection.currency)
    currency = selection.currency or "USD"
    return {
        "ve": ve,
        "token": checkout_token(ve.public_id),
        "status_label": _status_label(ve),
        "usage": selectors.usage_this_period(ve),
        "balance": format_credits_human(ve.balance),
        "offered": offered,
        "presets": [(str(a), format_money_short(int(a), currency)) for a in ve.checkout_amounts or []],
        "selection": selection,
        "quote": quote,
        "custom_range": (format_money(ve.checkout_min_amount, currency), format_money(ve.checkout_max_amount, currency)),
        "test_mode": payments.test_mode_enabled(),
        "payments_enabled": bool(stripe_gateway.get_client() is not None or payments.test_mode_enabled()),
        "error": error,
    }


@require_GET
def checkout_page(request: HttpRequest) -> HttpResponse:
    ve = _linked_ve(request.GET)
    if ve is None:
        return _invalid_link(request)
    context = _page_context(ve, request.GET)
    return render(request, "checkout/page.html", context)


@require_GET
def checkout_preview(request: HttpRequest) -> HttpResponse:
    """The "$50.00 → + 5,000,000 Credits" line for the current choice (an HTMX partial)."""
    ve = _linked_ve(request.GET)
    if ve is None:
        return _invalid_link(request)
    if not request.htmx:  # opened or reloaded directly: the whole page, same choice
        return render(request, "checkout/page.html", _page_context(ve, request.GET))
    # A new currency changes the button labels too; a new amount only the preview line.
    part = "choices" if request.GET.get("part") == "choices" else "preview"
    return render(request, f"checkout/page.html#{part}", _page_context(ve, request.GET))


@require_POST
def checkout_pay(request: HttpRequest) -> HttpResponse:
    ve = _linked_ve(request.POST)
    if ve is None:
        return _invalid_link(request)
    context = _page_context(ve, request.POST)
    selection = context["selection"]
    named = (request.POST.get("currency") or "").strip().upper()
    if named and named not in context["offered"]:  # never sold in another currency than the one named
        offered = ", ".join(context["offered"]) or "none (no exchange rate is set)"
        context["error"] = f"{named} is not offered here. Currencies offered: {offered}."
        return render(request, "checkout/page.html", context, status=400)
    if selection.error or selection.amount_minor is None:
        context["error"] = selection.error or "Choose an amount."
        return render(request, "checkout/page.html", context, status=400)
    try:
        started = payments.checkout_start(
            virtual_endpoint=ve,
            amount_minor=selection.amount_minor,
            currency=selection.currency,
            payer_email=_email_or_blank(request.POST.get("email")),
            client=stripe_gateway.get_client(),
        )
    except payments.CheckoutError as exc:
        context["error"] = str(exc)
        return render(request, "checkout/page.html", context, status=400)
    return HttpResponseRedirect(started.redirect_url)


def _email_or_blank(value: str | None) -> str:
    """The optional receipt address; a malformed one is dropped rather than blocking payment."""
    value = (value or "").strip()[:254]
    try:
        validate_email(value)
    except ValidationError:
        return ""
    return value


# --- after the payer chose an amount ------------------------------------------------------


def _payment_context(payment: Payment) -> dict:
    ve = VirtualEndpoint.objects.get(pk=payment.virtual_endpoint_id)
    return {
        "payment": payment,
        "ve": ve,
        "ref": payments.payment_ref(payment.pk),
        "amount": format_money(payment.amount_minor, payment.currency),
        "credits": format_credits_human(payment.credits),
        "balance": format_credits_human(ve.balance),
        "paid": payment.status == PaymentStatus.PAID,
        "pending": payment.status == PaymentStatus.PENDING,
        "back_url": f"{reverse('billing:checkout')}?ve_id={ve.public_id}&token={checkout_token(ve.public_id)}",
    }


@require_http_methods(["GET", "POST"])
def checkout_test_pay(request: HttpRequest) -> HttpResponse:
    """Test mode: the payer confirms, and the same payment_credit path as Stripe's credits."""
    payment = _linked_payment(request)
    if payment is None or payment.processor != Payment.Processor.TEST or not payments.test_mode_enabled():
        return _invalid_link(request)
    if request.method == "POST":
        payments.payment_credit(payment_id=payment.pk)
        return HttpResponseRedirect(f"{reverse('billing:checkout_success')}?ref={payments.payment_ref(payment.pk)}")
    return render(request, "checkout/test_pay.html", _payment_context(payment))


@require_GET
def checkout_success(request: HttpRequest) -> HttpResponse:
    payment = _linked_payment(request)
    if payment is None:
        return _invalid_link(request)
    _refresh_from_stripe(payment, request.GET.get("session_id", ""))
    return render(request, "checkout/success.html", _payment_context(payment))


def _refresh_from_stripe(payment: Payment, session_id: str) -> None:
    """The payer is back from Stripe: ask Stripe once rather than wait for the webhook."""
    client = stripe_gateway.get_client()
    if (
        client is None
        or payment.status != PaymentStatus.PENDING
        or payment.processor != Payment.Processor.STRIPE
        or not payment.stripe_session_id
        or session_id != payment.stripe_session_id
    ):
        return
    payments.payment_refresh(client, payment)
    payment.refresh_from_db()


@require_GET
def checkout_success_status(request: HttpRequest) -> HttpResponse:
    """Polled by the success page (HTMX, every second) until the payment is settled."""
    payment = _linked_payment(request)
    if payment is None:
        return _invalid_link(request)
    return render(request, "checkout/success.html#status", _payment_context(payment))


@require_GET
def checkout_cancel(request: HttpRequest) -> HttpResponse:
    payment = _linked_payment(request)
    if payment is None:
        return _invalid_link(request)
    return render(request, "checkout/cancel.html", _payment_context(payment))
