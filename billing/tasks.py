"""Celery tasks of billing: thin wrappers around services (autodiscovered by tokenbill/celery.py)."""

from __future__ import annotations

from celery import shared_task


# --- checkout (issue 5) -------------------------------------------------------------------


@shared_task(name="billing.checkout_catch_up")
def checkout_catch_up() -> dict:
    """Settle Stripe Checkout sessions whose webhook never came (billing.payments)."""
    from billing.payments import catch_up_pending

    return catch_up_pending()


# --- counters, request logs, rollups (issue 4) ---------------------------------------------


@shared_task(name="billing.flush_request_logs")
def flush_request_logs() -> int:
    """Redis mode: drain the gateways' request-log list into SQL (billing/logspool.py).
    Embedded default: write the rows buffered in this worker process."""
    from billing.requestlog import get_writer

    return get_writer().flush_sync()


@shared_task(name="billing.reconcile_counters")
def reconcile_counters() -> dict:
    """Release dead holds, post charges a dead gateway never wrote, repair counter drift."""
    from billing import reconcile

    return reconcile.run()


@shared_task(name="billing.release_expired_reservations")
def release_expired_reservations() -> int:
    from billing import reconcile

    return reconcile.release_expired_holds()


@shared_task(name="billing.rollup_usage")
def rollup_usage() -> dict:
    from billing.usage import rollup_recent

    return rollup_recent()
