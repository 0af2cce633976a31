"""Low-balance alerts: one email to the organization's owners and admins, and an optional
signed webhook to Organization.alert_webhook_url, when a VE's balance falls below its
low_balance_threshold; not repeated until the balance is back at or above the threshold.
The webhook goes only to public addresses (tokenbill/netguard.py) unless
ALERT_WEBHOOK_ALLOW_PRIVATE, and never follows a redirect.

VirtualEndpoint.low_balance_alerted is the latch. It flips with a conditional UPDATE
(`... WHERE low_balance_alerted = false`), so when many settles cross the threshold at
once exactly one of them sees "1 row updated" and sends; the others see 0 and stay quiet.
Re-arming uses the mirror update when the balance rises again (a top-up or a grant).

Triggers: every ledger post (billing.ledger.on_posted, connected in BillingConfig.ready)
and the gateway's settle step, which calls `check_low_balance(ve_id, balance=...)` with
the balance it just computed (its counters may be ahead of the SQL row).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string
from django.utils import timezone

from billing.checkout_links import checkout_url
from billing.money import format_credits, format_credits_human
from routing.models import Membership, Role, VirtualEndpoint
from tokenbill import netguard

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_SECONDS = 5.0
SIGNATURE_HEADER = "X-TokenBill-Signature"


def check_low_balance(ve_id: int, balance: int | None = None) -> bool:
    """Alert (once) if the VE is below its threshold, re-arm if it is not. True if it alerted."""
    ve = VirtualEndpoint.objects.filter(pk=ve_id).only(
        "pk", "low_balance_threshold", "low_balance_alerted", "credit_budget", "credit_spend"
    ).first()
    if ve is None or ve.low_balance_threshold <= 0:
        return False
    balance = ve.balance if balance is None else balance
    if balance >= ve.low_balance_threshold:
        if ve.low_balance_alerted:
            VirtualEndpoint.objects.filter(pk=ve_id, low_balance_alerted=True).update(low_balance_alerted=False)
        return False
    if ve.low_balance_alerted:
        return False
    won = VirtualEndpoint.objects.filter(pk=ve_id, low_balance_alerted=False).update(low_balance_alerted=True)
    if not won:
        return False  # another process crossed the same threshold first and alerts
    send_low_balance_alert(ve_id, balance)
    return True


def on_entry_posted(entry) -> None:
    try:
        check_low_balance(entry.virtual_endpoint_id)
    except Exception:  # noqa: BLE001 - an alert must never break the post that triggered it
        log.exception("low-balance check for VE %s failed", entry.virtual_endpoint_id)


def connect() -> None:
    from billing.ledger import on_posted

    on_posted(on_entry_posted)


def send_low_balance_alert(ve_id: int, balance: int) -> None:
    ve = VirtualEndpoint.objects.select_related("organization").get(pk=ve_id)
    context = {
        "ve": ve,
        "org": ve.organization,
        "balance": format_credits_human(balance),
        "threshold": format_credits_human(ve.low_balance_threshold),
        "checkout_url": checkout_url(ve.public_id),
    }
    _email(ve, context)
    if ve.organization.alert_webhook_url:
        _post_webhook(ve, balance)


def alert_recipients(organization_id: int) -> list[str]:
    rows = Membership.objects.filter(organization_id=organization_id, role__in=[Role.OWNER, Role.ADMIN])
    return sorted({m.user.email for m in rows.select_related("user") if m.user.email})


def _email(ve: VirtualEndpoint, context: dict) -> None:
    recipients = alert_recipients(ve.organization_id)
    if not recipients:
        return
    try:
        send_mail(
            subject=f"Low balance on {ve.name}: {context['balance']} credits left",
            message=render_to_string("checkout/emails/low_balance.txt", context),
            from_email=None,
            recipient_list=recipients,
        )
    except Exception:  # noqa: BLE001
        log.exception("low-balance email for VE %s failed", ve.pk)


def sign_payload(body: bytes, secret: str, timestamp: int | None = None) -> str:
    """`t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the scheme Stripe uses, so
    merchants can verify it the same way (and reject stale timestamps)."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def _post_webhook(ve: VirtualEndpoint, balance: int) -> None:
    _send_webhook(ve.organization, {
        "type": "virtual_endpoint.low_balance",
        "created": timezone.now().isoformat(),
        "virtual_endpoint": {"id": ve.public_id, "name": ve.name},
        "balance": format_credits(balance),
        "threshold": format_credits(ve.low_balance_threshold),
        "checkout_url": checkout_url(ve.public_id),
    }, f"low-balance webhook for VE {ve.pk}")


def _send_webhook(org, payload: dict, what: str) -> None:
    """POST one signed alert to the organization's webhook; failures are logged, never raised."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if org.alert_webhook_secret:
        headers[SIGNATURE_HEADER] = sign_payload(body, org.alert_webhook_secret)
    # Checked again here, not only when the URL was saved: DNS answers change, and the URL
    # may have been saved before the check existed or through the admin.
    try:
        netguard.post(org.alert_webhook_url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS,
                      allow_private=settings.ALERT_WEBHOOK_ALLOW_PRIVATE)
    except netguard.UnsafeURL as exc:
        log.warning("%s refused: %s (%s -> %s)", what, exc, netguard.redact(org.alert_webhook_url), exc.address or "-")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        log.warning("%s failed: %s", what, exc.__class__.__name__)


# --- a provider account out of money (OpenAI insufficient_quota) ----------------------------
def provider_quota_alert(provider_id: int, upstream_model: str) -> bool:
    """Tell the merchant (owners and admins by email, and the alert webhook) that one of
    their provider accounts answered insufficient_quota: its routes rest for
    GATEWAY_QUOTA_COOLDOWN and calls fall over to other routes meanwhile. Once per provider
    per cooldown across processes (a cache latch), never with the provider's key. True if sent."""
    from django.core.cache import cache

    from routing.models import Provider

    provider = Provider.objects.select_related("organization").filter(pk=provider_id).first()
    if provider is None:
        return False
    cooldown = int(settings.GATEWAY_QUOTA_COOLDOWN)
    if not cache.add(f"alert:quota:{provider_id}", 1, max(cooldown, 60)):
        return False  # already told during this cooldown
    org = provider.organization
    recipients = alert_recipients(org.pk)
    text = (f"The provider account behind \"{provider.name}\" answered that it is out of quota "
            f"(insufficient_quota) for {upstream_model}. TokenBill rests its routes for {cooldown // 60} minutes "
            f"and serves from your other routes meanwhile. Top up or raise the limit of that provider account.")
    if recipients:
        try:
            send_mail(subject=f"Provider out of quota: {provider.name}", message=text, from_email=None,
                      recipient_list=recipients)
        except Exception:  # noqa: BLE001
            log.exception("quota alert email for provider %s failed", provider_id)
    if org.alert_webhook_url:
        _send_webhook(org, {"type": "provider.insufficient_quota", "created": timezone.now().isoformat(),
                            "provider": {"id": provider.pk, "name": provider.name}, "upstream_model": upstream_model,
                            "cooldown_seconds": cooldown}, f"quota webhook for provider {provider_id}")
    return True
