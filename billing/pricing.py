"""Units -> cost -> charge, exactly.

For one call at one route:

    cost          = Σ units × the physical model's unit cost   (provider currency, Decimal)
    cost_credits  = cost × the exchange rate in force           (credits, Decimal)
    charge        = Σ units × the logical model's sale price    for every component it prices,
                  + Σ cost_credits of the other components × the organization's markup

Prices are per 1M tokens (per image, per second for other units). Everything stays an
exact Decimal until the very end of the per-call computation, where the ONE rounding rule
applies: `billing.money.to_micros`, a ceiling to whole micro-credits (a fraction of a
micro-credit is charged as one; nothing is billed at zero by rounding).

A component that must be charged from cost, where the physical model's cost is zero for
both input and output and the logical model has no sale price, is refused (PricingError):
a merchant who forgot a price must get a clear error, never free calls by accident. A cost
in a currency without an exchange rate is refused the same way.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from billing.money import to_micros
from routing.snapshot import LogicalModelSnap, RouteSnap

MTOK = Decimal(1_000_000)
MICROS = 1_000_000
ZERO = Decimal(0)
TOKEN_COMPONENTS = ("input", "cached_input", "cache_creation", "output")
_COST_FIELDS = {
    "input": "input_cost_per_mtok",
    "cached_input": "cached_input_cost_per_mtok",
    "cache_creation": "cache_write_cost_per_mtok",
    "output": "output_cost_per_mtok",
}
_SALE_FIELDS = {
    "input": "input_price_per_mtok",
    "cached_input": "cached_input_price_per_mtok",
    "cache_creation": "cache_write_price_per_mtok",
    "output": "output_price_per_mtok",
}


class PricingError(Exception):
    """The call cannot be priced (no price, no cost, no exchange rate). The message is
    shown to the API user: it names the model, never a provider or a credential."""

    code = "model_not_priced"


@dataclass(frozen=True, slots=True)
class Units:
    input: int = 0
    cached_input: int = 0
    cache_creation: int = 0
    output: int = 0
    images: tuple = ()  # ({"size": "1024x1024", "quality": "standard", "n": 1}, ...)
    audio_seconds: Decimal = ZERO
    estimated: bool = False

    def as_dict(self) -> dict:
        return {
            "input": self.input, "cached_input": self.cached_input, "cache_creation": self.cache_creation,
            "output": self.output, "images": list(self.images), "audio_seconds": str(self.audio_seconds),
        }


def units_from(usage, extra: dict | None = None) -> Units:
    """Units from gateway.adapters.base.Usage (or None) and Outcome.units."""
    if not extra:  # tokens only (the hot path): the same Units as below, with fewer steps
        return Units(getattr(usage, "input_tokens", 0) or 0, getattr(usage, "cached_input_tokens", 0) or 0,
                     getattr(usage, "cache_creation_tokens", 0) or 0, getattr(usage, "output_tokens", 0) or 0,
                     (), ZERO, bool(getattr(usage, "estimated", False)))
    return Units(
        input=getattr(usage, "input_tokens", 0) or 0,
        cached_input=getattr(usage, "cached_input_tokens", 0) or 0,
        cache_creation=getattr(usage, "cache_creation_tokens", 0) or 0,
        output=getattr(usage, "output_tokens", 0) or 0,
        images=tuple(extra.get("images") or ()),
        audio_seconds=Decimal(str(extra.get("audio_seconds") or 0)),
        estimated=bool(getattr(usage, "estimated", False)),
    )


@dataclass(frozen=True, slots=True)
class Rate:
    currency: str
    credits_per_unit: Decimal
    rate_id: int | None
    organization_id: int | None
    effective_from: datetime | None

    def snapshot(self) -> dict:
        return {"currency": self.currency, "credits_per_unit": str(self.credits_per_unit), "rate_id": self.rate_id,
                "organization_id": self.organization_id,
                "effective_from": self.effective_from.isoformat() if self.effective_from else None}


CREDITS = Rate("CREDITS", Decimal(1), None, None, None)


@dataclass(frozen=True, slots=True)
class RouteRates:
    """Per-unit prices of one route for one logical model, all exact Decimals.

    charge_per[c] is credits per token of component c; cost_per[c] provider currency per token."""

    route: RouteSnap
    rate: Rate | None
    markup: Decimal
    charge_per: dict
    cost_per: dict
    sale_components: frozenset
    image_prices: dict = field(default_factory=dict)  # the logical model's, credits per image
    price_per_second: Decimal | None = None  # the logical model's, credits per audio second
    # (input numerator, output numerator, denominator) of micro-credits per token, exact
    # integers from charge_per: the hot path's charge_micros is two multiplications.
    _fast: tuple = field(default=(), init=False, repr=False, compare=False)
    _snapshot: list = field(default_factory=list, init=False, repr=False, compare=False)  # price_snapshot, once
    _cost_seq: tuple = field(default=(), init=False, repr=False, compare=False)  # cost_per in TOKEN_COMPONENTS order

    def __post_init__(self):
        ratios = [Decimal(self.charge_per[c]).as_integer_ratio() for c in TOKEN_COMPONENTS]
        d = math.lcm(*(den for _, den in ratios))
        object.__setattr__(self, "_fast", (*(num * (d // den) * MICROS for num, den in ratios), d))
        object.__setattr__(self, "_cost_seq", tuple(self.cost_per[c] for c in TOKEN_COMPONENTS))

    def charge_micros(self, input_tokens: int, output_tokens: int, cached_input: int = 0,
                      cache_creation: int = 0) -> int:
        """to_micros(charge_exact(Units(...))) of token units with integers only: the same
        exact value and the same ceiling (tests/billing/test_pricing.py compares them)."""
        a, c, w, b, d = self._fast  # TOKEN_COMPONENTS order: input, cached_input, cache_creation, output
        return -(-(input_tokens * a + cached_input * c + cache_creation * w + output_tokens * b) // d)

    def charge_exact(self, units: Units) -> Decimal:
        total = sum((getattr(units, c) * self.charge_per[c] for c in TOKEN_COMPONENTS), ZERO)
        return total + self._other_units(units, sale=True)

    def cost_exact(self, units: Units) -> Decimal:
        # sum((getattr(units, c) * self.cost_per[c] for c in TOKEN_COMPONENTS), ZERO) written
        # out: the same Decimal operations in the same order, so the same value and exponent.
        i, c, w, o = self._cost_seq
        total = ZERO + units.input * i + units.cached_input * c + units.cache_creation * w + units.output * o
        if not units.images and not units.audio_seconds:
            return total + ZERO  # what _other_units adds then
        return total + self._other_units(units, sale=False)

    def _other_units(self, units: Units, *, sale: bool) -> Decimal:
        if not units.images and not units.audio_seconds:
            return ZERO
        pm = self.route.physical_model
        total = ZERO
        for image in units.images:
            n = int(image.get("n", 1))
            cost = _image_price(pm.image_costs, image)
            total += n * (self._sale_image(image, cost) if sale else cost)
        if units.audio_seconds:
            cost = units.audio_seconds * pm.audio_cost_per_second
            total += self._sale_audio(units.audio_seconds, cost) if sale else cost
        return total

    def _sale_image(self, image: dict, cost: Decimal) -> Decimal:
        price = (self.image_prices.get(image.get("size") or "1024x1024") or {}).get(image.get("quality") or "standard")
        return self._from_cost(cost) if price is None else Decimal(str(price))

    def _sale_audio(self, seconds: Decimal, cost: Decimal) -> Decimal:
        return self._from_cost(cost) if self.price_per_second is None else seconds * self.price_per_second

    def _from_cost(self, cost: Decimal) -> Decimal:
        if cost and self.rate is None:
            raise PricingError("This model's provider cost has no exchange rate to credits; ask the operator to set one.")
        return cost * (self.rate.credits_per_unit if self.rate else ZERO) * self.markup


def _image_price(table: dict, image: dict) -> Decimal:
    by_quality = (table or {}).get(image.get("size") or "1024x1024") or {}
    value = by_quality.get(image.get("quality") or "standard")
    return Decimal(str(value)) if value is not None else ZERO


def route_rates(model: LogicalModelSnap, route: RouteSnap, markup: Decimal, rate: Rate | None) -> RouteRates:
    """Per-token prices of `route` when it serves `model`; raises PricingError if unpriceable."""
    pm = route.physical_model
    cost_per = {c: getattr(pm, _COST_FIELDS[c]) / MTOK for c in TOKEN_COMPONENTS}
    charge_per, sale = {}, set()
    for c in TOKEN_COMPONENTS:
        price = getattr(model, _SALE_FIELDS[c])
        if price is not None:
            charge_per[c] = price / MTOK
            sale.add(c)
        elif rate is not None:
            charge_per[c] = cost_per[c] * rate.credits_per_unit * markup
        else:
            charge_per[c] = None
    _refuse_unpriced(model, pm, cost_per, charge_per, sale)
    charge_per = {c: (v if v is not None else ZERO) for c, v in charge_per.items()}
    return RouteRates(route, rate, markup, charge_per, cost_per, frozenset(sale),
                      model.image_prices or {}, model.price_per_second)


def _refuse_unpriced(model, pm, cost_per, charge_per, sale) -> None:
    if model.modality not in ("chat", "embedding"):
        return  # images and audio are priced per image / per second (see _other_units)
    needs_cost = {"input", "output"} - sale
    if model.modality == "embedding":
        needs_cost.discard("output")
    if not needs_cost:
        return
    if any(charge_per[c] is None and cost_per[c] for c in needs_cost):
        raise PricingError(
            f"Model '{model.name}' cannot be billed: its provider's currency {pm.provider.currency} has no exchange "
            "rate to credits. Ask the operator to set one."
        )
    if not any(cost_per[c] for c in needs_cost) and not sale:
        raise PricingError(
            f"Model '{model.name}' has no price: set a sale price on the logical model or a cost on its physical model."
        )


class Priced:
    """One call priced at one route. The charge is computed at once; the cost (provider
    currency, exact) and its credits only when read: the request-log row wants them, the
    answer's headers do not, so the gateway computes them after the answer left."""

    __slots__ = ("units", "charge", "snapshot", "_rates", "_cost")

    def __init__(self, units: Units, charge: int, snapshot: dict, rates: RouteRates):
        self.units = units
        self.charge = charge  # micro-credits (ceiling)
        self.snapshot = snapshot
        self._rates = rates
        self._cost = None

    @property
    def cost(self) -> Decimal:  # provider currency, exact
        if self._cost is None:
            self._cost = self._rates.cost_exact(self.units)
        return self._cost

    @property
    def cost_currency(self) -> str:
        return self._rates.route.physical_model.provider.currency

    @property
    def cost_credits(self) -> int:  # micro-credits (ceiling), 0 when no rate
        rate = self._rates.rate
        return to_micros(self.cost * rate.credits_per_unit) if rate else 0

    def __repr__(self) -> str:
        return f"Priced(units={self.units!r}, charge={self.charge!r})"


def price_call(rates: RouteRates, units: Units) -> Priced:
    """The one per-call computation; the only rounding is to_micros at the end."""
    if not units.images and not units.audio_seconds:  # tokens only: the integer path, same result
        charge = rates.charge_micros(units.input, units.output, units.cached_input, units.cache_creation)
    else:
        charge = to_micros(rates.charge_exact(units))
    if not rates._snapshot:  # the same for every call at these rates: built once (callers copy it)
        rates._snapshot.append(price_snapshot(rates))
    return Priced(units, charge, rates._snapshot[0], rates)


def price_snapshot(rates: RouteRates) -> dict:
    """What a disputed call is re-rated from: every price and the rate used."""
    pm = rates.route.physical_model
    return {
        "route_id": rates.route.id,
        "physical_model_id": pm.id,
        "cost_per_mtok": {c: _plain(getattr(pm, _COST_FIELDS[c])) for c in TOKEN_COMPONENTS},
        "cost_currency": pm.provider.currency,
        "sale_per_mtok": {c: _plain(rates.charge_per[c] * MTOK) for c in sorted(rates.sale_components)},
        "markup": str(rates.markup),
        "rate": rates.rate.snapshot() if rates.rate else None,
        "rounding": "ceiling to 1 micro-credit, once per call",
    }


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


# --- exchange rates, cached in-process -------------------------------------------------

class RateBook:
    """Every ExchangeRate row, in memory: the hot path never reads SQL for a rate.

    `refresh()` reloads the whole (small) table; the biller calls `maybe_refresh()` at most
    every `max_age` seconds from a worker thread, and a configuration change (a new rate
    is one) marks the book stale. Lookup = billing.rates.rate_in_force's rule: the
    organization's newest row in force wins over the operator's default (organization NULL).
    """

    def __init__(self, max_age: float = 1.0):
        self.max_age = max_age
        self.loaded_at = 0.0
        self.loaded = False
        self._rows: dict[tuple[int | None, str], list] = {}
        self._lock = threading.Lock()
        self._tz = UTC

    def refresh(self) -> None:
        from django.conf import settings

        from billing.models import ExchangeRate

        self._tz = UTC if settings.USE_TZ else None  # timezone.now()'s, read here and not per call

        rows: dict[tuple[int | None, str], list] = {}
        for r in ExchangeRate.objects.order_by("-effective_from", "-id").values_list(
            "id", "organization_id", "currency", "credits_per_unit", "effective_from"
        ):
            rows.setdefault((r[1], r[2]), []).append(Rate(r[2], r[3], r[0], r[1], r[4]))
        with self._lock:
            self._rows, self.loaded_at, self.loaded = rows, time.monotonic(), True

    def stale(self) -> bool:
        return time.monotonic() - self.loaded_at > self.max_age

    def mark_stale(self) -> None:
        self.loaded_at = 0.0

    def rate(self, organization_id: int, currency: str, at: datetime | None = None) -> Rate | None:
        if currency == "CREDITS":
            return CREDITS
        at = at or datetime.now(self._tz)  # django.utils.timezone.now(), with USE_TZ as of the last refresh
        for owner in (organization_id, None):
            for rate in self._rows.get((owner, currency), ()):
                if rate.effective_from <= at:
                    return rate
        return None
