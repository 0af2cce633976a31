"""A priced world for the media endpoints (images, speech, transcription) behind the live
gateway, with the process's real biller (SQL budget embedded, Redis with REDIS_URL)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal

import openai

from billing import gate
from billing.models import LedgerEntry, RequestLog
from billing.rates import rate_set
from routing.cache import routing_cache
from tests import factories

RATE = Decimal(100_000)  # credits per USD
IMAGE_COSTS = {"1024x1024": {"standard": "0.04", "hd": "0.08"}, "1792x1024": {"standard": "0.08", "hd": "0.12"}}
AUDIO_COST = Decimal("0.0001")  # USD per second: 10 credits a second at the rate above


@dataclass
class MediaWorld:
    org: object
    ve: object
    secret: str
    model: object
    physical: list = field(default_factory=list)

    def sdk(self, gateway, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{gateway.url}/{self.ve.public_id}/v1", api_key=self.secret, max_retries=0,
                             timeout=kw.pop("timeout", 20), **kw)


def media_world(upstreams, modality: str, *, name: str = "media", credits: str = "100000", model_kw=None,
                physical_kw=None) -> MediaWorld:
    """upstreams: (fake, kind) pairs, one provider and one physical model each, priority in order."""
    org = factories.make_org()
    rate_set(org, "USD", str(RATE))
    physical = []
    for priority, (fake, kind) in enumerate(upstreams):
        provider = factories.make_provider(org, kind=kind, base_url=fake.base_url, api_key=fake.api_key,
                                           **({"api_version": "2024-10-21"} if kind == "azure_openai" else {}))
        kw = {"image_costs": IMAGE_COSTS, "audio_cost_per_second": AUDIO_COST, "input_cost_per_mtok": Decimal(0),
              "output_cost_per_mtok": Decimal(0), **(physical_kw or {})}
        physical.append((factories.make_physical_model(provider, f"up-{modality}-{priority}", modality=modality, **kw),
                         priority, 1))
    model = factories.make_logical_model(org, name, routes=physical, modality=modality, **(model_kw or {}))
    ve = factories.make_ve(org, models=[model], credits=credits)
    _, secret = factories.make_key(ve)
    routing_cache.refresh_now()
    book = getattr(gate.get_biller(), "rates", None)
    if book is not None:
        book.refresh()
    return MediaWorld(org=org, ve=ve, secret=secret, model=model, physical=[p for p, _, _ in physical])


def micros(credits) -> int:
    return int(Decimal(str(credits)) * 1_000_000)


def flush() -> None:
    biller = gate.get_biller()
    if hasattr(biller, "flush_sync"):
        biller.flush_sync()


def log_row(request_id: str, seconds: float = 5.0) -> RequestLog:
    """The call's request-log row. A streamed answer settles after its last byte went out:
    the client may finish reading before the row is queued, so wait for it."""
    deadline = time.monotonic() + seconds
    while True:
        flush()
        row = RequestLog.objects.filter(request_id=request_id).first()
        if row is not None or time.monotonic() > deadline:
            return row or RequestLog.objects.get(request_id=request_id)
        time.sleep(0.02)


def charged(ve) -> int:
    """Micro-credits charged to the VE, from the ledger (the truth)."""
    flush()
    return sum(e.amount for e in LedgerEntry.objects.filter(virtual_endpoint=ve, kind="charge"))
