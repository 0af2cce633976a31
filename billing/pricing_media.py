"""Prices of the media units: images by size and quality, audio by the second.

The arithmetic itself lives in billing/pricing.py (RouteRates._other_units): per image,
the logical model's image_prices[size][quality] in credits when set, else the physical
model's image_costs[size][quality] x exchange rate x markup; per second, the logical
model's price_per_second, else audio_cost_per_second x rate x markup. This module adds
what the gateway needs before a media call goes upstream:

- the units a call will consume, to reserve: images (n x size x quality, exact),
  transcription (the measured seconds of the upload, exact), speech (an upper bound from
  the input text, see speech_cap_seconds);
- which routes can price those units at all (a size/quality nobody priced is refused
  with a 400 before any upstream call, never served for free).
"""

from __future__ import annotations

import math
from decimal import Decimal

from billing.pricing import PricingError, RouteRates, Units, units_from

IMAGE_DEFAULT_SIZE = "1024x1024"
IMAGE_DEFAULT_QUALITY = "standard"
# Speech: reserve for this slow a speaker. People speak 12-16 characters a second; OpenAI's
# voices at speed 1.0 measure about 14-15. Five characters a second (plus a second of
# leading/trailing silence) bounds every voice we know by a factor of about three.
SPEECH_MIN_CHARS_PER_SECOND = Decimal(5)
SPEECH_PAD_SECONDS = Decimal(1)

MEDIA_ENDPOINTS = frozenset({"images.generations", "audio.speech", "audio.transcriptions", "audio.translations"})


def image_units(*, n: int, size: str | None, quality: str | None) -> dict:
    """Outcome.units / reservation units for n images of one size and quality."""
    return {"images": [{"size": size or IMAGE_DEFAULT_SIZE, "quality": quality or IMAGE_DEFAULT_QUALITY, "n": n}]}


def speech_cap_seconds(text: str, speed: float | int | None = None) -> Decimal:
    """The most seconds of speech `text` can produce, at `speed` (OpenAI: 0.25 to 4.0)."""
    speed_d = Decimal(str(speed)) if speed else Decimal(1)
    seconds = Decimal(len(text)) / (SPEECH_MIN_CHARS_PER_SECOND * speed_d) + SPEECH_PAD_SECONDS
    return Decimal(math.ceil(seconds))


def reservation_units(ctx) -> Units:
    """The units the gateway put in ctx.extra["reserve_units"] (same shape as Outcome.units)."""
    return units_from(None, ctx.extra.get("reserve_units") or {})


def priceable(model_name: str, rates: dict[int, RouteRates], units: Units) -> dict[int, RouteRates]:
    """The routes whose price table covers `units`; PricingError when none does."""
    kept, reason = {}, None
    for route_id, r in rates.items():
        problem = _unpriced(r, units)
        if problem is None:
            kept[route_id] = r
        else:
            reason = reason or problem
    if not kept:
        raise PricingError(f"Model '{model_name}' cannot be billed: {reason}")
    return kept


def _unpriced(r: RouteRates, units: Units) -> str | None:
    pm = r.route.physical_model
    for image in units.images:
        size, quality = image["size"], image["quality"]
        sale = (r.image_prices.get(size) or {}).get(quality)
        cost = ((pm.image_costs or {}).get(size) or {}).get(quality)
        if sale is None and cost is None:
            return f"no price for size '{size}' and quality '{quality}'."
        if sale is None and cost and r.rate is None:
            return "its provider's currency has no exchange rate to credits."
    if units.audio_seconds:
        if r.price_per_second is None and not pm.audio_cost_per_second:
            return "no price per second of audio."
        if r.price_per_second is None and r.rate is None:
            return "its provider's currency has no exchange rate to credits."
    return None
