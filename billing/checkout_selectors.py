"""Reads for the checkout page: which currencies are offered, what an amount buys, usage."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Sum
from django.utils import timezone

from billing import rates
from billing.currency import credits_for, format_money
from billing.models import ExchangeRate, RequestLog
from billing.money import format_credits_human
from routing.models import VirtualEndpoint


@dataclass(frozen=True)
class Quote:
    amount_minor: int
    currency: str
    credits: int  # micro-credits
    rate: ExchangeRate

    @property
    def amount_display(self) -> str:
        return format_money(self.amount_minor, self.currency)

    @property
    def credits_display(self) -> str:
        return format_credits_human(self.credits)

    def snapshot(self) -> dict:
        return {
            "exchange_rate_id": self.rate.pk,
            "organization_id": self.rate.organization_id,
            "currency": self.currency,
            "credits_per_unit": str(self.rate.credits_per_unit),
            "effective_from": self.rate.effective_from.isoformat(),
        }


@dataclass(frozen=True)
class Usage:
    tokens: int
    requests: int
    since: datetime


def rate_for(virtual_endpoint: VirtualEndpoint, currency: str) -> ExchangeRate | None:
    return rates.rate_in_force(virtual_endpoint.organization_id, currency)


def offered_currencies(virtual_endpoint: VirtualEndpoint) -> list[str]:
    """The merchant's enabled currencies that have a rate in force, in the merchant's order.

    A currency without a rate cannot say what it buys, so it is not offered at all.
    """
    offered: list[str] = []
    for code in virtual_endpoint.checkout_currencies or []:
        code = str(code).upper()
        if code not in offered and rate_for(virtual_endpoint, code) is not None:
            offered.append(code)
    return offered


def quote(virtual_endpoint: VirtualEndpoint, amount_minor: int, currency: str) -> Quote | None:
    rate = rate_for(virtual_endpoint, currency)
    if rate is None:
        return None
    credits = credits_for(amount_minor, currency, rate.credits_per_unit)
    return Quote(amount_minor=amount_minor, currency=currency.upper(), credits=credits, rate=rate)


def month_start(now: datetime | None = None) -> datetime:
    now = timezone.localtime(now or timezone.now())
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def usage_this_period(virtual_endpoint: VirtualEndpoint) -> Usage:
    since = month_start()
    totals = RequestLog.objects.filter(virtual_endpoint=virtual_endpoint, started_at__gte=since).aggregate(
        input=Sum("input_tokens"), output=Sum("output_tokens"), requests=Count("id")
    )
    tokens = (totals["input"] or 0) + (totals["output"] or 0)
    return Usage(tokens=tokens, requests=totals["requests"] or 0, since=since)
