"""POST /stripe/webhook/: verify, store, dispatch by event type.

Only an event whose signature verifies (with STRIPE_WEBHOOK_SECRET, at most five minutes
old) is stored; anything else is a 400 and leaves no trace a later replay could lean on.
Every verified event is kept (StripeEvent, unique event_id) with how it was handled.

Stripe delivers at least once, sometimes the same event several times at once. The event
row is not a lock: each delivery runs the handler, and the handler is idempotent
(payments.payment_credit locks the Payment and posts under a unique ledger key). A
handler that raises answers 500, so Stripe retries, and the retry credits once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import payments, stripe_gateway
from billing.models import Payment, PaymentStatus, StripeEvent

log = logging.getLogger(__name__)

Handling = StripeEvent.Handling


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    secret = settings.STRIPE_WEBHOOK_SECRET
    if not secret:
        return HttpResponse("webhooks are not configured", status=400, content_type="text/plain")
    payload = request.body
    try:
        stripe_gateway.verify_webhook(payload, request.headers.get("Stripe-Signature"), secret)
        event = json.loads(payload)
    except (stripe.SignatureVerificationError, ValueError):
        return HttpResponse("invalid signature", status=400, content_type="text/plain")
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        return HttpResponse("not an event", status=400, content_type="text/plain")
    record = _store(event)
    if record.handling in (Handling.PROCESSED, Handling.IGNORED):
        return HttpResponse("already handled", content_type="text/plain")
    try:
        handling, error = dispatch(event)
    except Exception as exc:  # noqa: BLE001 - answer 5xx so Stripe redelivers
        log.exception("stripe event %s (%s) failed", event["id"], event["type"])
        _finish(record, Handling.FAILED, f"{exc.__class__.__name__}: {exc}"[:2000])
        return HttpResponse("handler failed, retry", status=500, content_type="text/plain")
    _finish(record, handling, error)
    return HttpResponse(handling, content_type="text/plain")


def _store(event: dict) -> StripeEvent:
    try:
        with transaction.atomic():
            return StripeEvent.objects.create(event_id=event["id"], type=event["type"], payload=event)
    except IntegrityError:  # a redelivery, possibly concurrent with the first one
        return StripeEvent.objects.get(event_id=event["id"])


def _finish(record: StripeEvent, handling: str, error: str) -> None:
    # Never downgrade: a concurrent delivery may already have processed the event.
    StripeEvent.objects.filter(pk=record.pk).exclude(handling=Handling.PROCESSED).update(
        handling=handling, error=error, handled_at=timezone.now()
    )


def dispatch(event: dict) -> tuple[str, str]:
    handler = HANDLERS.get(event["type"])
    if handler is None:
        return Handling.IGNORED, ""
    session = stripe_gateway.session_info(event.get("data", {}).get("object") or {})
    payment = _payment_for(session)
    if payment is None:
        return Handling.IGNORED, f"no payment for session {session.id}"
    return handler(payment, session)


def _payment_for(session: stripe_gateway.SessionInfo) -> Payment | None:
    if session.id:
        found = Payment.objects.filter(stripe_session_id=session.id).first()
        if found is not None:
            return found
    # The webhook can beat the line that stores the session id: fall back on our own id,
    # but only for a session that names the same payment and VE in its metadata (another
    # integration on the same Stripe account may use client_reference_id too).
    ref, meta = session.client_reference_id, session.metadata or {}
    if not ref.isdigit() or meta.get("payment_id") != ref:
        return None
    found = Payment.objects.select_related("virtual_endpoint").filter(pk=int(ref)).first()
    if found is None or found.stripe_session_id not in (None, session.id):
        return None
    return found if found.virtual_endpoint.public_id == meta.get("ve_id") else None


def _credit(payment: Payment, session: stripe_gateway.SessionInfo) -> tuple[str, str]:
    result = payments.payment_credit(payment_id=payment.pk, session=session)
    if result.error:
        return Handling.FAILED, result.error
    return Handling.PROCESSED, ""


def on_session_completed(payment: Payment, session: stripe_gateway.SessionInfo) -> tuple[str, str]:
    if session.payment_status != "paid":
        # Delayed methods (bank debits) complete unpaid; async_payment_succeeded follows.
        return Handling.PROCESSED, f"completed with payment_status={session.payment_status}: waiting"
    return _credit(payment, session)


def on_async_payment_succeeded(payment: Payment, session: stripe_gateway.SessionInfo) -> tuple[str, str]:
    return _credit(payment, session)


def on_async_payment_failed(payment: Payment, session: stripe_gateway.SessionInfo) -> tuple[str, str]:
    payments.payment_mark(payment_id=payment.pk, status=PaymentStatus.FAILED, session_id=session.id)
    return Handling.PROCESSED, ""


def on_session_expired(payment: Payment, session: stripe_gateway.SessionInfo) -> tuple[str, str]:
    payments.payment_mark(payment_id=payment.pk, status=PaymentStatus.EXPIRED, session_id=session.id)
    return Handling.PROCESSED, ""


HANDLERS: dict[str, Callable[[Payment, stripe_gateway.SessionInfo], tuple[str, str]]] = {
    "checkout.session.completed": on_session_completed,
    "checkout.session.async_payment_succeeded": on_async_payment_succeeded,
    "checkout.session.async_payment_failed": on_async_payment_failed,
    "checkout.session.expired": on_session_expired,
}
