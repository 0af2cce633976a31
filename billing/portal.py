"""The customer portal: where the person who pays for a VE sees what they paid for.

No account in the merchant's organization: the customer asks for a sign-in link at
/portal/ with an email address; when that address may see at least one VE (the VE has
the portal on, and the address is its `portal_email` or the receipt email of one of its
paid top-ups), a one-time link is mailed to it. The answer is the same whether or not the
address is known, so the form tells nobody who is a customer.

- The link is a TimestampSigner signature of the address, valid LINK_MAX_AGE seconds, and
  works once (its digest is remembered in the cache until it would expire anyway).
- The session holds the address and an expiry (SESSION_SECONDS); which VEs it may see is
  read again on every page, so a merchant who turns the portal off, or changes the email,
  shuts the door at once. Every page is scoped to one VE the address may see: another VE
  (of the same merchant or not) answers 404.
- Pages: balance and budget, usage by day and by model (last USAGE_DAYS days), the VE's
  request log (metadata only: the gateway stores no prompts), payments with printable
  receipts, the top-up link, and — where the merchant allows it — the VE's keys (create:
  the secret is shown once; disable; last used).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from billing.checkout_links import checkout_url
from billing.currency import format_money
from billing.models import Payment, PaymentStatus, RequestLog
from routing.models import AccessKey, VirtualEndpoint

LINK_MAX_AGE = 15 * 60
SESSION_SECONDS = 12 * 3600
USAGE_DAYS = 30
_SALT = "tokenbill.portal"
_SESSION_KEY = "tb_portal"


# --- who may see what ------------------------------------------------------------------
def endpoints_for(email: str):
    """The VEs `email` may see in the portal."""
    email = email.strip()
    paid = Payment.objects.filter(status=PaymentStatus.PAID, payer_email__iexact=email).values("virtual_endpoint_id")
    return VirtualEndpoint.objects.filter(portal_enabled=True).filter(
        Q(portal_email__iexact=email) | Q(pk__in=paid)
    ).select_related("organization").order_by("name")


def sign_in_link(email: str) -> str:
    # A nonce: two links asked for in the same second are two links (each works once).
    token = signing.dumps({"e": email.strip().lower(), "n": secrets.token_hex(8)}, salt=_SALT)
    return settings.PUBLIC_BASE_URL + reverse("billing:portal_login", args=[token])


def _portal_email(request) -> str | None:
    data = request.session.get(_SESSION_KEY) or {}
    if not data or data.get("expires", 0) < time.time():
        request.session.pop(_SESSION_KEY, None)
        return None
    return data["email"]


def _endpoint(request, ve_public_id: str) -> VirtualEndpoint:
    email = _portal_email(request)
    if email is None:
        raise _SignInFirst
    ve = endpoints_for(email).filter(public_id=ve_public_id).first()
    if ve is None:
        raise Http404("No such endpoint in your portal.")
    return ve


class _SignInFirst(Exception):
    pass


def portal_page(view):
    """Resolve the VE of the URL for the signed-in customer, or send them to sign in."""

    def wrapped(request, ve_public_id: str, *args, **kwargs):
        try:
            ve = _endpoint(request, ve_public_id)
        except _SignInFirst:
            return redirect(reverse("billing:portal") + "?expired=1")
        return view(request, ve, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


# --- sign in ---------------------------------------------------------------------------
@require_http_methods(["GET", "POST"])
def portal_start(request):
    """The sign-in form (and, once signed in, the list of the customer's endpoints)."""
    email = _portal_email(request)
    if email is not None and request.method == "GET":
        endpoints = list(endpoints_for(email))
        if len(endpoints) == 1:
            return redirect("billing:portal_endpoint", endpoints[0].public_id)
        return render(request, "portal/home.html", {"email": email, "endpoints": endpoints})
    context = {"expired": request.GET.get("expired") == "1"}
    if request.method == "POST":
        address = (request.POST.get("email") or "").strip()
        try:
            validate_email(address)
        except Exception:
            context.update(error="Enter a valid email address.", email=address)
            return render(request, "portal/start.html", context, status=400)
        if endpoints_for(address).exists():
            send_mail(
                "Your sign-in link",
                f"Open this link within {LINK_MAX_AGE // 60} minutes to see your balance, usage and receipts:\n\n"
                f"{sign_in_link(address)}\n\nIf you did not ask for it, ignore this email.",
                settings.DEFAULT_FROM_EMAIL, [address],
            )
        context["sent"] = True  # the same answer for an unknown address: the form reveals nobody
    return render(request, "portal/start.html", context)


def portal_login(request, token: str):
    try:
        email = signing.loads(token, salt=_SALT, max_age=LINK_MAX_AGE)["e"]
    except signing.SignatureExpired:
        return render(request, "portal/start.html", {"error": "This link has expired: ask for a new one."}, status=400)
    except signing.BadSignature:
        return render(request, "portal/start.html", {"error": "This link is not valid: ask for a new one."}, status=400)
    used = "portal:used:" + hashlib.sha256(token.encode()).hexdigest()
    if not cache.add(used, 1, LINK_MAX_AGE + 60):
        return render(request, "portal/start.html", {"error": "This link was already used: ask for a new one."},
                      status=400)
    request.session.cycle_key()
    request.session[_SESSION_KEY] = {"email": email, "expires": time.time() + SESSION_SECONDS}
    return redirect("billing:portal")


@require_POST
def portal_logout(request):
    request.session.pop(_SESSION_KEY, None)
    return redirect("billing:portal")


# --- pages -----------------------------------------------------------------------------
@portal_page
def portal_endpoint(request, ve: VirtualEndpoint):
    since = timezone.now() - timedelta(days=USAGE_DAYS)
    logs = RequestLog.objects.filter(virtual_endpoint=ve, started_at__gte=since)
    sums = dict(calls=Count("id"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"),
                charge=Sum("charge"))
    by_day = logs.annotate(day=TruncDate("started_at")).values("day").annotate(**sums).order_by("-day")
    by_model = logs.values("logical_model_name").annotate(**sums).order_by("-charge", "logical_model_name")
    payments = list(ve.payments.exclude(status=PaymentStatus.PENDING).order_by("-created_at")[:100])
    for payment in payments:
        payment.amount_text = format_money(payment.amount_minor, payment.currency)
    keys = ve.keys.order_by("-created_at") if ve.portal_manage_keys else None
    context = {
        "ve": ve, "email": _portal_email(request), "by_day": list(by_day), "by_model": list(by_model),
        "recent": RequestLog.objects.filter(virtual_endpoint=ve).order_by("-started_at", "-id")[:50],
        "payments": payments, "keys": keys, "topup_url": checkout_url(ve.public_id), "days": USAGE_DAYS,
        "new_secret": request.session.pop("tb_portal_new_secret", None),
    }
    return render(request, "portal/endpoint.html", context)


@portal_page
def portal_receipt(request, ve: VirtualEndpoint, payment_id: int):
    payment = ve.payments.filter(pk=payment_id).exclude(status=PaymentStatus.PENDING).first()
    if payment is None:
        raise Http404("No such payment.")
    payment.amount_text = format_money(payment.amount_minor, payment.currency)
    return render(request, "portal/receipt.html", {"ve": ve, "payment": payment})


@require_POST
@portal_page
def portal_key_new(request, ve: VirtualEndpoint):
    from routing.services import key_create

    if not ve.portal_manage_keys:
        raise Http404("Keys are managed by the merchant.")
    name = (request.POST.get("name") or "").strip()[:120] or "Portal key"
    _, secret = key_create(virtual_endpoint=ve, name=name)
    # Shown once, on the next page, then gone from the session.
    request.session["tb_portal_new_secret"] = secret
    return redirect("billing:portal_endpoint", ve.public_id)


@require_POST
@portal_page
def portal_key_toggle(request, ve: VirtualEndpoint, key_id: int):
    from routing.services import key_update

    if not ve.portal_manage_keys:
        raise Http404("Keys are managed by the merchant.")
    key = AccessKey.objects.filter(virtual_endpoint=ve, pk=key_id).first()
    if key is None:
        raise Http404("No such key.")
    key_update(key=key, enabled=not key.enabled)
    return redirect("billing:portal_endpoint", ve.public_id)
