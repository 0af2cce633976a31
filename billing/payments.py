"""Top-up payments: start a checkout, credit it exactly once, catch up on lost webhooks.

A Payment is created (and committed) before Stripe hears of it, so a webhook that races
the redirect always finds it. Credits reach the ledger only through `payment_credit`,
whichever path confirms the payment (webhook, catch-up task, test-mode button); three
things make that happen once per payment whatever the redeliveries and races:

1. the Payment row is locked (select_for_update) and its status checked inside the
   transaction that posts: a second caller waits for the first and then sees PAID;
2. the ledger entry's idempotency key is derived from the Checkout Session id (Stripe) or
   the Payment id (test mode), and is UNIQUE in the database: even a caller that got
   past (1) could not post twice;
3. the Stripe session itself is created with an idempotency key derived from our Payment
   id, so a retried create never opens a second session to pay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from billing import stripe_gateway
from billing.checkout_selectors import quote as quote_for
from billing.currency import format_money, from_minor, to_minor  # noqa: F401  (re-exported)
from billing.ledger import post_entry
from billing.models import LedgerKind, Payment, PaymentStatus
from billing.money import format_credits_human
from billing.stripe_gateway import SessionInfo, StripeUnavailable
from routing.models import VirtualEndpoint

log = logging.getLogger(__name__)

CATCH_UP_AFTER = timedelta(minutes=10)
TEST_PAYMENT_LIFETIME = timedelta(hours=24)
_REF_SALT = "tokenbill.checkout.payment"


class CheckoutError(Exception):
    """A reason to show the payer, safe to render."""


@dataclass(frozen=True)
class Started:
    payment: Payment
    redirect_url: str


@dataclass(frozen=True)
class Credited:
    payment: Payment
    created: bool  # True only for the one call that posted the ledger entry
    error: str = ""  # why nothing was credited (mismatch, failed payment)


# --- references in URLs -------------------------------------------------------------------


def payment_ref(payment_id: int) -> str:
    """A signed, unguessable handle on a payment for success / cancel / test-pay URLs."""
    return signing.dumps(payment_id, salt=_REF_SALT, compress=True)


def payment_id_from_ref(ref: str) -> int | None:
    try:
        value = signing.loads(ref, salt=_REF_SALT, max_age=7 * 24 * 3600)
    except signing.BadSignature:
        return None
    return value if isinstance(value, int) else None


def test_mode_enabled() -> bool:
    """Test-mode payments grant credits for nothing, so they exist only without a Stripe key
    and where CHECKOUT_TEST_MODE allows them (on by default in the embedded default only)."""
    return not settings.STRIPE_SECRET_KEY and bool(getattr(settings, "CHECKOUT_TEST_MODE", False))


# --- starting a checkout -------------------------------------------------------------------


def amount_allowed(virtual_endpoint: VirtualEndpoint, amount_minor: int) -> bool:
    if amount_minor <= 0:
        return False
    if amount_minor in (virtual_endpoint.checkout_amounts or []):
        return True
    return virtual_endpoint.checkout_min_amount <= amount_minor <= virtual_endpoint.checkout_max_amount


def checkout_start(
    *,
    virtual_endpoint: VirtualEndpoint,
    amount_minor: int,
    currency: str,
    payer_email: str = "",
    client=None,
) -> Started:
    """Record a Payment at today's rate and hand back where the payer goes next.

    `client` is a stripe.StripeClient (stripe_gateway.get_client()); None means test mode.
    """
    currency = currency.upper()
    if currency not in [str(c).upper() for c in virtual_endpoint.checkout_currencies or []]:
        raise CheckoutError("This currency is not accepted here.")
    if not amount_allowed(virtual_endpoint, amount_minor):
        raise CheckoutError(
            f"Choose an amount between {format_money(virtual_endpoint.checkout_min_amount, currency)} "
            f"and {format_money(virtual_endpoint.checkout_max_amount, currency)}."
        )
    quote = quote_for(virtual_endpoint, amount_minor, currency)
    if quote is None:
        raise CheckoutError("This currency is not available right now.")
    if quote.credits <= 0:
        raise CheckoutError("This amount is too small to buy any credits.")
    if client is None and not test_mode_enabled():
        raise CheckoutError("Online payments are not configured for this service yet.")
    payment = Payment.objects.create(
        virtual_endpoint=virtual_endpoint,
        processor=Payment.Processor.STRIPE if client is not None else Payment.Processor.TEST,
        amount_minor=amount_minor,
        currency=currency,
        credits=quote.credits,
        rate_snapshot=quote.snapshot(),
        payer_email=payer_email,
    )
    ref = payment_ref(payment.pk)
    if client is None:
        return Started(payment, f"{reverse('billing:checkout_test_pay')}?ref={ref}")
    return Started(payment, _open_stripe_session(client, payment, ref))


def _open_stripe_session(client, payment: Payment, ref: str) -> str:
    base = settings.PUBLIC_BASE_URL
    try:
        session = stripe_gateway.create_checkout_session(
            client,
            payment_id=payment.pk,
            ve_public_id=payment.virtual_endpoint.public_id,
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            product_name=f"{format_credits_human(payment.credits)} credits for {payment.virtual_endpoint.name}",
            # Stripe replaces {CHECKOUT_SESSION_ID} itself.
            success_url=f"{base}{reverse('billing:checkout_success')}?ref={ref}&session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{base}{reverse('billing:checkout_cancel')}?ref={ref}",
            customer_email=payment.payer_email,
        )
    except StripeUnavailable:
        log.exception("checkout session for payment %s failed", payment.pk)
        payment_mark(payment_id=payment.pk, status=PaymentStatus.FAILED)
        raise CheckoutError("The payment service is unavailable right now. Please try again in a minute.") from None
    # The webhook may already have stored the id (it races this line); never overwrite it.
    Payment.objects.filter(pk=payment.pk, stripe_session_id__isnull=True).update(stripe_session_id=session.id)
    return session.url


# --- confirming a payment -------------------------------------------------------------------


def ledger_key(payment: Payment, session_id: str | None) -> str:
    if payment.processor == Payment.Processor.TEST:
        return f"checkout:test-payment:{payment.pk}"
    return f"stripe:checkout-session:{session_id or payment.stripe_session_id}"


def payment_credit(*, payment_id: int, session: SessionInfo | None = None) -> Credited:
    """Credit a paid payment once. `session` is Stripe's view of it (None in test mode).

    A session whose amount, currency or id disagrees with our Payment credits nothing and
    marks the payment failed: someone paid something other than what we quoted.
    """
    with transaction.atomic():
        # Lock the Payment only (of=self): the VE row is updated by post_entry, and locking it
        # here too, before the ledger insert, would widen the window gateway settles wait on.
        payment = Payment.objects.select_for_update(of=("self",)).select_related("virtual_endpoint").get(pk=payment_id)
        if payment.status == PaymentStatus.PAID:
            return Credited(payment, created=False)
        if payment.status == PaymentStatus.FAILED:
            return Credited(payment, created=False, error="payment is marked failed")
        mismatch = _mismatch(payment, session)
        if mismatch:
            _set_status(payment, PaymentStatus.FAILED)
            log.error("payment %s not credited: %s", payment.pk, mismatch)
            return Credited(payment, created=False, error=mismatch)
        posted = post_entry(
            virtual_endpoint=payment.virtual_endpoint,
            kind=LedgerKind.TOP_UP,
            amount=payment.credits,
            idempotency_key=ledger_key(payment, session.id if session else None),
            payment=payment,
            note=f"Top-up {format_money(payment.amount_minor, payment.currency)}",
            rate_snapshot=payment.rate_snapshot,
        )
        _record_paid(payment, session)
    if posted.created:
        transaction.on_commit(lambda: send_receipt(payment.pk))
    return Credited(payment, created=posted.created)


def _mismatch(payment: Payment, session: SessionInfo | None) -> str:
    if session is None:
        return "" if payment.processor == Payment.Processor.TEST else "a Stripe payment needs its session"
    if payment.stripe_session_id and session.id != payment.stripe_session_id:
        return f"session {session.id} is not this payment's session"
    if session.amount_total != payment.amount_minor or session.currency.upper() != payment.currency:
        return (
            f"amount mismatch: Stripe says {session.amount_total} {session.currency}, "
            f"we expected {payment.amount_minor} {payment.currency}"
        )
    return ""


def _record_paid(payment: Payment, session: SessionInfo | None) -> None:
    payment.status = PaymentStatus.PAID
    payment.credited_at = timezone.now()
    if session is not None:
        payment.stripe_session_id = payment.stripe_session_id or session.id
        payment.stripe_payment_intent_id = session.payment_intent or payment.stripe_payment_intent_id
        payment.payer_email = payment.payer_email or session.customer_email
    payment.save()


def _set_status(payment: Payment, status: str) -> None:
    payment.status = status
    payment.save(update_fields=["status", "updated_at"])


def payment_mark(*, payment_id: int, status: str, session_id: str | None = None) -> bool:
    """Mark a payment that was not paid (failed, expired). Never touches a paid payment."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        if payment.status == PaymentStatus.PAID:
            return False
        if session_id and not payment.stripe_session_id:
            payment.stripe_session_id = session_id
        payment.status = status
        payment.save()
    return True


def send_receipt(payment_id: int) -> None:
    """Email the payer a receipt. Runs after the commit; a mail failure never undoes a credit."""
    payment = Payment.objects.select_related("virtual_endpoint").get(pk=payment_id)
    if not payment.payer_email:
        return
    ve = payment.virtual_endpoint
    context = {
        "payment": payment,
        "ve": ve,
        "amount": format_money(payment.amount_minor, payment.currency),
        "credits": format_credits_human(payment.credits),
        "balance": format_credits_human(VirtualEndpoint.objects.get(pk=ve.pk).balance),
    }
    try:
        send_mail(
            subject=f"Receipt: {context['amount']} top-up for {ve.name}",
            message=render_to_string("checkout/emails/receipt.txt", context),
            from_email=None,
            recipient_list=[payment.payer_email],
            html_message=render_to_string("checkout/emails/receipt.html", context),
        )
    except Exception:  # noqa: BLE001 - the credit stands; the receipt is best effort
        log.exception("receipt email for payment %s failed", payment_id)


# --- catching up on lost webhooks -----------------------------------------------------------


def catch_up_pending(*, client=None, older_than: timedelta = CATCH_UP_AFTER) -> dict[str, int]:
    """Ask Stripe about sessions pending longer than `older_than` and settle them the same
    idempotent way a webhook would (credit, or mark expired). Safe to run concurrently with
    webhooks: payment_credit locks the Payment and the ledger key is unique."""
    counts = {"credited": 0, "expired": 0, "failed": 0, "pending": 0, "errors": 0}
    now = timezone.now()
    _expire_test_payments(now, counts)
    client = client or stripe_gateway.get_client()
    if client is None:
        return counts
    stale = Payment.objects.filter(
        processor=Payment.Processor.STRIPE, status=PaymentStatus.PENDING, created_at__lt=now - older_than
    )
    for payment in stale.iterator():
        _catch_up_one(client, payment, counts)
    return counts


def _catch_up_one(client, payment: Payment, counts: dict[str, int]) -> None:
    if not payment.stripe_session_id:
        # Stripe never confirmed a session (the create call died): nobody can pay it.
        payment_mark(payment_id=payment.pk, status=PaymentStatus.FAILED)
        counts["failed"] += 1
        return
    counts[payment_refresh(client, payment)] += 1


def payment_refresh(client, payment: Payment) -> str:
    """Ask Stripe for the payment's session and settle it the webhook's way.

    Returns "credited", "expired", "failed", "pending" (nothing to do yet) or "errors".
    Used by the catch-up task and by the success page a payer lands on from Stripe, so a
    slow or missing webhook never leaves a paid payer waiting.
    """
    try:
        session = stripe_gateway.retrieve_checkout_session(client, payment.stripe_session_id)
    except StripeUnavailable:
        log.warning("could not retrieve the Stripe session of payment %s", payment.pk)
        return "errors"
    if session.payment_status == "paid":
        result = payment_credit(payment_id=payment.pk, session=session)
        return "credited" if result.created else "failed" if result.error else "pending"
    if session.status == "expired":
        payment_mark(payment_id=payment.pk, status=PaymentStatus.EXPIRED)
        return "expired"
    return "pending"


def _expire_test_payments(now, counts: dict[str, int]) -> None:
    expired = Payment.objects.filter(
        processor=Payment.Processor.TEST, status=PaymentStatus.PENDING, created_at__lt=now - TEST_PAYMENT_LIFETIME
    ).update(status=PaymentStatus.EXPIRED)
    counts["expired"] += expired
