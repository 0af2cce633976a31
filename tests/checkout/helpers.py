"""Shared steps of the checkout tests."""

from __future__ import annotations

from django.test import Client

from billing import payments, stripe_gateway
from billing.models import LedgerEntry, Payment
from tests.checkout.conftest import WEBHOOK_SECRET
from tests.fakes.stripe_server import make_event, sign_payload


def start_stripe_payment(ve, amount_minor: int = 5000, currency: str = "USD", email: str = "") -> Payment:
    started = payments.checkout_start(
        virtual_endpoint=ve, amount_minor=amount_minor, currency=currency, payer_email=email,
        client=stripe_gateway.get_client(),
    )
    return Payment.objects.get(pk=started.payment.pk)


def deliver(body: bytes, *, secret: str = WEBHOOK_SECRET, signature: str | None = None, client: Client | None = None):
    client = client or Client()
    header = sign_payload(body, secret) if signature is None else signature
    extra = {"HTTP_STRIPE_SIGNATURE": header} if header else {}
    return client.post("/stripe/webhook/", data=body, content_type="application/json", **extra)


def event_for(fake, event_type: str, session_id: str, event_id: str | None = None) -> bytes:
    return make_event(event_type, dict(fake.sessions[session_id]), event_id=event_id)


def top_ups(ve) -> list[LedgerEntry]:
    return list(LedgerEntry.objects.filter(virtual_endpoint=ve, kind="top_up"))
