"""Reads for the console pages: bounded queries, no N+1."""

from __future__ import annotations

from decimal import Decimal

from django.db.models import Q

from billing.models import ExchangeRate
from routing.models import Organization


def current_rates(org: Organization) -> dict[str, Decimal]:
    """Currency -> credits per unit in effect now (the organization's own rate wins over the
    operator default). One query."""
    from django.utils import timezone

    rows = (
        ExchangeRate.objects.filter(Q(organization=org) | Q(organization__isnull=True), effective_from__lte=timezone.now())
        .order_by("currency", "-effective_from")
        .values_list("currency", "organization_id", "credits_per_unit")
    )
    own: dict[str, Decimal] = {}
    default: dict[str, Decimal] = {}
    for currency, org_id, rate in rows:
        target = own if org_id else default
        target.setdefault(currency, rate)
    return {**default, **own}


def breaker_open(physical_model_id: int) -> bool:
    """Whether this process currently skips the physical model (circuit breaker open)."""
    try:
        from routing.breaker import breaker
    except ImportError:  # the gateway core has not landed in this tree yet
        return False
    return breaker.is_open(physical_model_id)


def route_shares(routes) -> dict[int, int]:
    """Route id -> percent of its tier's traffic (enabled routes only)."""
    totals: dict[int, Decimal] = {}
    for r in routes:
        if r.enabled:
            totals[r.priority] = totals.get(r.priority, Decimal(0)) + r.weight
    shares = {}
    for r in routes:
        total = totals.get(r.priority) or Decimal(0)
        shares[r.id] = int(round(r.weight * 100 / total)) if r.enabled and total > 0 else 0
    return shares
