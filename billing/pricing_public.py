"""The public "Model pricing" page: what a visitor could buy from an organization, at what price.

`/pricing/<organization slug>` (HTML) and `?format=json` (for machines), published only
when the organization opts in (Organization.pricing_public). It lists every enabled
logical model that has at least one enabled route to an enabled physical model on an
enabled provider: the models a key could actually call.

Prices are the ones the biller charges (billing/pricing.py):
- a component with a sale price on the logical model is that price, exactly;
- a component without one is charged from cost: the serving route's cost x the exchange
  rate in force for the provider's currency x the organization's markup. The page shows it
  for the model's first route (the one tried first) and marks it "from cost": a fallback
  route with another cost charges by its own cost. A cost in a currency without a rate
  cannot be priced: the page says "not priced" (the gateway refuses such a call the same way).

Credit prices are exact Decimals. Each price is also shown in every currency the
organization has a rate in force for (credits / credits per unit), rounded half-up to
CURRENCY_PLACES decimals and labelled as a conversion; the JSON form carries the exact
credit price and the rate used so a machine can convert itself.

A fixed number of queries per render (the organization, its models, their routes, the rates),
whatever the number of models. A rendered page is kept in Django's cache under the
configuration version (every change a price depends on moves it) for CACHE_SECONDS, so a
visit costs two small queries; the answer carries Cache-Control and an ETag (a conditional
GET answers 304).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from django.core.cache import cache
from django.http import Http404, HttpResponse, HttpResponseNotModified, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET

from routing.cache import read_version
from routing.models import LogicalModel, Modality, Organization, Route

CACHE_SECONDS = 60
CURRENCY_PLACES = 4
TOKEN_COMPONENTS = (
    ("input", "input_price_per_mtok", "input_cost_per_mtok", "Input"),
    ("cached_input", "cached_input_price_per_mtok", "cached_input_cost_per_mtok", "Cached input"),
    ("output", "output_price_per_mtok", "output_cost_per_mtok", "Output"),
)
TOKEN_MODALITIES = ("chat", "embedding")


@dataclass(frozen=True, slots=True)
class Price:
    """One price in credits (None: cannot be priced), where it comes from, and what it is in
    each currency with a rate (currency, amount) in currency order."""

    credits: Decimal | None
    from_cost: bool
    converted: tuple[tuple[str, Decimal], ...] = ()
    # The same, as the page prints them (formatted once here, not by the template per cell).
    credits_text: str = ""
    converted_texts: tuple[str, ...] = ()

    @classmethod
    def of(cls, credits: Decimal | None, from_cost: bool, rates: dict[str, Decimal]) -> Price:
        if credits is None:
            return cls(None, from_cost)
        quantum = Decimal(1).scaleb(-CURRENCY_PLACES)
        converted = tuple(
            (cur, (credits / per_unit).quantize(quantum, rounding=ROUND_HALF_UP))
            for cur, per_unit in sorted(rates.items()) if per_unit > 0
        )
        return cls(credits, from_cost, converted, _plain(credits), tuple(_plain(v) for _, v in converted))

    def as_json(self) -> dict:
        return {
            "credits": None if self.credits is None else self.credits_text,
            "from_cost": self.from_cost,
            "converted": dict(zip((cur for cur, _ in self.converted), self.converted_texts, strict=True)),
        }


@dataclass(slots=True)
class ModelPrices:
    name: str
    description: str
    modality: str
    modality_label: str
    tokens: list[tuple[str, str, Price]] = field(default_factory=list)  # (key, label, price per 1M)
    images: list[tuple[str, str, Price]] = field(default_factory=list)  # (size, quality, price per image)
    per_second: Price | None = None
    columns: int = 1  # credits + one per currency

    def rows_html(self) -> str:
        """The model's price table rows. Built here rather than in the template: at 500 models
        the template engine's per-cell cost was most of the page's render time."""
        rows = [(f"{label} · 1M tokens", price) for _, label, price in self.tokens]
        rows += [(f"Image {size} {quality}", price) for size, quality, price in self.images]
        if self.per_second is not None:
            rows.append(("Audio · second", self.per_second))
        out = []
        for label, price in rows:
            out.append(f'<tr><th scope="row">{escape(label)}</th>')
            if price.credits is None:
                out.append(f'<td colspan="{self.columns}">not priced</td></tr>')
                continue
            out.append(f"<td>{price.credits_text}{'*' if price.from_cost else ''}</td>")  # digits only
            out.extend(f"<td>{text}</td>" for text in price.converted_texts)
            out.append("</tr>")
        return mark_safe("".join(out))  # the label is escaped; the rest are numbers we formatted


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _credits_from_cost(cost: Decimal, currency: str, rates: dict[str, Decimal], markup: Decimal) -> Decimal | None:
    if not cost:
        return Decimal(0)
    if currency == "CREDITS":
        return cost * markup
    rate = rates.get(currency)
    return None if rate is None else cost * rate * markup


def _price(sale, cost, currency, rates, markup) -> Price:
    if sale is not None:
        return Price.of(Decimal(sale), False, rates)
    return Price.of(_credits_from_cost(Decimal(cost), currency, rates, markup), True, rates)


_LM_FIELDS = ("id", "name", "description", "modality", "input_price_per_mtok", "cached_input_price_per_mtok",
              "output_price_per_mtok", "image_prices", "price_per_second")
_PM_FIELDS = ("input_cost_per_mtok", "cached_input_cost_per_mtok", "output_cost_per_mtok", "image_costs",
              "audio_cost_per_second")


def model_prices(org: Organization, rates: dict[str, Decimal]) -> list[ModelPrices]:
    """Every model a visitor could buy from `org`, with its prices (see the module doc).

    Two queries of plain values (no model instances: at 500 models building them was most
    of the cost): the enabled logical models, and the first live route of each."""
    first_route: dict[int, dict] = {}
    routes = Route.objects.filter(
        logical_model__organization=org, logical_model__enabled=True, enabled=True,
        physical_model__enabled=True, physical_model__provider__enabled=True,
    ).order_by("priority", "-weight", "id")
    pm_fields = ["physical_model__" + f for f in _PM_FIELDS]
    for row in routes.values("logical_model_id", "physical_model__provider__currency", *pm_fields):
        first_route.setdefault(row["logical_model_id"], row)
    labels = dict(Modality.choices)
    result = []
    for lm in LogicalModel.objects.filter(organization=org, enabled=True).order_by("name").values(*_LM_FIELDS):
        route = first_route.get(lm["id"])
        if route is None:
            continue  # nothing could serve it: not for sale
        pm = {f: route["physical_model__" + f] for f in _PM_FIELDS}
        currency = route["physical_model__provider__currency"]
        modality = lm["modality"]
        entry = ModelPrices(lm["name"], lm["description"], modality, labels.get(modality, modality),
                            columns=len(rates) + 1)
        if modality in TOKEN_MODALITIES:
            for key, sale_field, cost_field, label in TOKEN_COMPONENTS:
                if modality == "embedding" and key != "input":
                    continue
                entry.tokens.append((key, label, _price(lm[sale_field], pm[cost_field], currency, rates, org.markup)))
        elif modality == "image":
            costs, prices = pm["image_costs"] or {}, lm["image_prices"] or {}
            sizes = {(s, q) for table in (costs, prices) for s, qs in table.items() for q in (qs or {})}
            for size, quality in sorted(sizes):
                sale = (prices.get(size) or {}).get(quality)
                cost = Decimal(str((costs.get(size) or {}).get(quality) or "0"))
                entry.images.append((size, quality, _price(sale, cost, currency, rates, org.markup)))
        else:  # speech, transcription: per second of audio
            entry.per_second = _price(lm["price_per_second"], pm["audio_cost_per_second"], currency, rates, org.markup)
        result.append(entry)
    return result


def _as_json(org: Organization, models: list[ModelPrices], rates: dict[str, Decimal]) -> dict:
    return {
        "organization": {"name": org.name, "slug": org.slug},
        "unit": "credits",
        "rates": {cur: {"credits_per_unit": _plain(v)} for cur, v in sorted(rates.items())},
        "models": [
            {
                "name": m.name,
                "description": m.description,
                "modality": m.modality,
                "per_1m_tokens": {key: price.as_json() for key, _, price in m.tokens},
                "per_image": [{"size": s, "quality": q, **price.as_json()} for s, q, price in m.images],
                "per_second": m.per_second.as_json() if m.per_second else None,
            }
            for m in models
        ],
    }


def _render(request, org: Organization, fmt: str) -> tuple[bytes, str]:
    from console.selectors import current_rates

    rates = current_rates(org)
    models = model_prices(org, rates)
    if fmt == "json":
        body = JsonResponse(_as_json(org, models, rates)).content
    else:
        context = {"org": org, "models": models, "currencies": sorted(rates), "rates": rates}
        body = render_to_string("pricing/page.html", context, request=request).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@require_GET
def pricing_page(request, slug: str):
    org = get_object_or_404(Organization, slug=slug)
    if not org.pricing_public:
        raise Http404("This organization does not publish its prices.")
    fmt = "json" if request.GET.get("format") == "json" else "html"
    # Every change a price depends on (models, routes, markup, rates) moves the configuration
    # version; the time bucket lets a rate dated in the future take effect without one.
    key = "pricing:%s:%s:%s:%s:%s" % (
        org.pk, org.created_at.timestamp(), read_version(), int(time.time() // CACHE_SECONDS), fmt
    )
    cached = cache.get(key)
    if cached is None:
        cached = _render(request, org, fmt)
        cache.set(key, cached, CACHE_SECONDS)
    body, etag = cached
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponseNotModified()
    elif fmt == "json":
        response = HttpResponse(body, content_type="application/json")
    else:
        response = HttpResponse(body)
    response["ETag"] = etag
    response["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
    response["Vary"] = "Accept-Encoding"
    return response
