"""Exchange rates: how many credits one unit of a currency is worth.

Rates are dated and never edited. `rate_set` adds a new row that takes effect at
`effective_from` (now by default); the old rows stay as history, so every ledger entry
and price snapshot can name the rate it used, and "what did 1 USD buy last March" has an
answer.

Lookup order (`rate_in_force`): the organization's own newest row whose effective_from
is not in the future wins; failing that, the operator's default for every organization
(organization NULL); failing that, None (the caller decides: checkout refuses the
currency, pricing refuses to convert).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from billing.models import ExchangeRate
from billing.money import MoneyError, parse_decimal
from routing.models import Organization


@transaction.atomic
def rate_set(
    organization: Organization | None,
    currency: str,
    credits_per_unit: Decimal | int | str,
    *,
    effective_from: datetime | None = None,
    created_by=None,
) -> ExchangeRate:
    """Record a new rate (organization None: the default for every organization)."""
    try:
        value = parse_decimal(credits_per_unit)
    except MoneyError as exc:
        raise ValidationError({"credits_per_unit": str(exc)}) from None
    rate = ExchangeRate(
        organization=organization,
        currency=currency.upper(),
        credits_per_unit=value,
        effective_from=effective_from or timezone.now(),
        created_by=created_by,
    )
    rate.full_clean()
    rate.save(force_insert=True)
    _notify()
    return rate


def rate_in_force(organization_id: int | None, currency: str, at: datetime | None = None) -> ExchangeRate | None:
    """The rate that applies to this organization and currency at `at` (default: now)."""
    at = at or timezone.now()
    rows = ExchangeRate.objects.filter(currency=currency.upper(), effective_from__lte=at).order_by(
        "-effective_from", "-id"
    )
    if organization_id is not None:
        own = rows.filter(organization_id=organization_id).first()
        if own is not None:
            return own
    return rows.filter(organization__isnull=True).first()


def rate_history(organization_id: int | None, currency: str | None = None) -> QuerySet[ExchangeRate]:
    """Every row that applies to the organization (its own and the defaults), newest first."""
    rows = ExchangeRate.objects.filter(organization_id=organization_id) | ExchangeRate.objects.filter(
        organization__isnull=True
    )
    if currency:
        rows = rows.filter(currency=currency.upper())
    return rows.order_by("currency", "-effective_from", "-id")


def _notify() -> None:
    # Gateway processes keep prices and rates in their in-process snapshot; a new rate is
    # a configuration change like any other.
    from routing.services import config_changed

    config_changed()
