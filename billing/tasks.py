"""Celery tasks of billing: thin wrappers around services (autodiscovered by tokenbill/celery.py)."""

from __future__ import annotations

from celery import shared_task


# --- checkout (issue 5) -------------------------------------------------------------------


@shared_task(name="billing.checkout_catch_up")
def checkout_catch_up() -> dict:
    """Settle Stripe Checkout sessions whose webhook never came (billing.payments)."""
    from billing.payments import catch_up_pending

    return catch_up_pending()
