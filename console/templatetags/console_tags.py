"""Template helpers for the console: money, roles, status pills, bars."""

from __future__ import annotations

from django import template

from billing.money import format_credits_human

register = template.Library()


@register.filter
def credits(micros) -> str:
    """Micro-credits as a person reads them: '5,000,000' or '12.35'."""
    if micros is None or micros == "":
        return "—"
    return format_credits_human(int(micros))


@register.filter
def can(request, role: str) -> bool:
    membership = getattr(request, "membership", None)
    return bool(membership and membership.can(role))


@register.filter
def percent_of(part, whole) -> int:
    """0..100, for balance bars; never divides by zero."""
    try:
        part, whole = int(part), int(whole)
    except (TypeError, ValueError):
        return 0
    if whole <= 0:
        return 0
    return max(0, min(100, round(part * 100 / whole)))


_PILL = {
    "ok": "green", "active": "green", "enabled": "green", "grant": "green", "top_up": "green",
    "closed": "green", "accepted": "green",
    "client_error": "amber", "rate_limited": "amber", "budget_exhausted": "amber", "disconnected": "amber",
    "half_open": "amber", "pending": "amber", "adjustment": "amber", "refund": "amber",
    "upstream_error": "red", "suspended": "red", "disabled": "red", "open": "red", "error": "red",
    "expired": "red", "charge": "blue",
}


@register.filter
def pill(status) -> str:
    return _PILL.get(str(status), "grey")


@register.filter
def get_item(mapping, key):
    return mapping.get(key, "") if hasattr(mapping, "get") else ""


@register.filter
def minor_units(amount, currency: str = "") -> str:
    """Checkout amounts are stored in the currency's minor unit: 1000 -> '10.00 USD'."""
    try:
        value = int(amount)
    except (TypeError, ValueError):
        return "—"
    return f"{value // 100:,}.{value % 100:02d} {currency}".strip()
