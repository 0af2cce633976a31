"""The one module that talks to Stripe.

Every call takes a `stripe.StripeClient`, so tests point it at a fake server and nothing
else in TokenBill imports `stripe` for API calls. Amounts cross this boundary in minor
units (billing/currency.py converts), and every create call carries an idempotency key
derived from our own Payment id: a retried request after a timeout returns the session
Stripe already made instead of opening a second one.
"""

from __future__ import annotations

from dataclasses import dataclass

import stripe
from django.conf import settings

WEBHOOK_TOLERANCE_SECONDS = 300


class StripeUnavailable(Exception):
    """Stripe could not be reached or refused the call; the message is safe to log."""


@dataclass(frozen=True)
class SessionInfo:
    id: str
    url: str = ""
    status: str = ""  # open, complete, expired
    payment_status: str = ""  # paid, unpaid, no_payment_required
    amount_total: int | None = None
    currency: str = ""
    payment_intent: str = ""
    customer_email: str = ""
    client_reference_id: str = ""
    metadata: dict | None = None


def get_client() -> stripe.StripeClient | None:
    """The configured client, or None in the embedded default (no STRIPE_SECRET_KEY)."""
    if not settings.STRIPE_SECRET_KEY:
        return None
    base = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else None
    return stripe.StripeClient(settings.STRIPE_SECRET_KEY, base_addresses=base, max_network_retries=2)


def idempotency_key_for_payment(payment_id: int) -> str:
    return f"tokenbill-checkout-payment-{payment_id}"


def create_checkout_session(
    client: stripe.StripeClient,
    *,
    payment_id: int,
    ve_public_id: str,
    amount_minor: int,
    currency: str,
    product_name: str,
    success_url: str,
    cancel_url: str,
    customer_email: str = "",
) -> SessionInfo:
    params: dict = {
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": currency.lower(),
                    "unit_amount": amount_minor,
                    "product_data": {"name": product_name},
                },
            }
        ],
        "client_reference_id": str(payment_id),
        "metadata": {"ve_id": ve_public_id, "payment_id": str(payment_id)},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if customer_email:
        params["customer_email"] = customer_email
    try:
        session = client.v1.checkout.sessions.create(
            params, options={"idempotency_key": idempotency_key_for_payment(payment_id)}
        )
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe refused to create a checkout session: {exc.__class__.__name__}") from exc
    return session_info(session)


def retrieve_checkout_session(client: stripe.StripeClient, session_id: str) -> SessionInfo:
    try:
        session = client.v1.checkout.sessions.retrieve(session_id)
    except stripe.StripeError as exc:
        raise StripeUnavailable(f"Stripe did not return session {session_id}: {exc.__class__.__name__}") from exc
    return session_info(session)


def session_info(session) -> SessionInfo:
    """A Checkout Session (a StripeObject or the plain dict of a webhook payload) as SessionInfo."""
    if not isinstance(session, dict):
        session = session.to_dict()  # StripeObject is no longer a dict in stripe-python 16
    get = session.get
    details = get("customer_details") or {}
    intent = get("payment_intent") or ""
    if not isinstance(intent, str):  # expanded PaymentIntent object
        intent = intent.get("id", "")
    return SessionInfo(
        id=get("id") or "",
        url=get("url") or "",
        status=get("status") or "",
        payment_status=get("payment_status") or "",
        amount_total=get("amount_total"),
        currency=(get("currency") or "").upper(),
        payment_intent=intent,
        customer_email=(details.get("email") if details else None) or get("customer_email") or "",
        client_reference_id=get("client_reference_id") or "",
        metadata=dict(get("metadata") or {}),
    )


def verify_webhook(payload: bytes, sig_header: str | None, secret: str) -> None:
    """Raise stripe.SignatureVerificationError (or ValueError for a non-JSON body) unless
    `payload` was signed by Stripe with `secret` less than five minutes ago."""
    stripe.Webhook.construct_event(payload, sig_header, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS)
