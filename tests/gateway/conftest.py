"""Fixtures for gateway tests through real sockets: fake upstreams, the live ASGI app under
uvicorn, and a small routing world (VE, key, logical model, routes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import openai
import pytest
from django.conf import settings

from billing import gate
from billing.rates import rate_set
from routing.breaker import breaker, redis_key
from routing.cache import redis_version_key, routing_cache
from tests import factories
from tests.fakes.gateway_server import LiveServer
from tests.fakes.openai_server import AzureFake, OpenAIFake


def _clear_redis_state():
    if not settings.REDIS_URL:
        return
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(redis_key(), redis_version_key())
    client.close()


@pytest.fixture
def live_gateway(transactional_db):
    # tokenbill.asgi minus its production-readiness check (tests run with DEBUG off).
    from django.core.asgi import get_asgi_application

    from tokenbill.routing import build_application

    application = build_application(get_asgi_application())

    breaker.reset()
    _clear_redis_state()
    with LiveServer(application) as server:
        yield server
    breaker.reset()
    _clear_redis_state()


@pytest.fixture
def openai_up():
    with OpenAIFake(api_key="sk-openai-test") as fake:
        yield fake


@pytest.fixture
def azure_up():
    with AzureFake(api_key="azure-key-test") as fake:
        yield fake


class RecordingBiller(gate.NullBiller):
    """Admits everything; remembers what the gateway reported."""

    def __init__(self):
        self.admitted: list = []
        self.settled: list = []
        self.recorded: list = []

    async def admit(self, ctx):
        self.admitted.append(ctx)
        return gate.Admission()

    async def settle(self, ctx, admission, outcome):
        self.settled.append((ctx, outcome))
        return gate.Settlement(charge=1234, balance=5678)

    async def record(self, ctx, outcome):
        self.recorded.append((ctx, outcome))

    def wait_settled(self, count: int = 1, seconds: float = 5.0) -> list:
        """Streams settle after their last byte: the client may see the end first."""
        import time

        deadline = time.monotonic() + seconds
        while len(self.settled) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)  # and never more than `count`
        return self.settled


@pytest.fixture
def biller():
    previous = gate.get_biller()
    recording = RecordingBiller()
    gate.set_biller(recording)
    yield recording
    gate.set_biller(previous)


@dataclass
class World:
    org: object
    ve: object
    key: object
    secret: str
    model: object
    physical: list = field(default_factory=list)

    def client(self, base_url: str, **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=base_url, api_key=self.secret, max_retries=0, timeout=kw.pop("timeout", 20), **kw)


def make_world(routes, *, model_name: str = "chat", modality: str = "chat", ve_kw=None, key_kw=None) -> World:
    """routes: (fake, kind, upstream_model, priority, weight) tuples, one provider each."""
    org = factories.make_org()
    rate_set(org, "USD", "100000")  # the real biller prices every call: it needs a rate
    physical = []
    for fake, kind, upstream_model, priority, weight in routes:
        provider = factories.make_provider(org, kind=kind, base_url=fake.base_url, api_key=fake.api_key,
                                           **({"api_version": "2024-10-21"} if kind == "azure_openai" else {}))
        physical.append((factories.make_physical_model(provider, upstream_model, modality=modality), priority, weight))
    model = factories.make_logical_model(org, model_name, routes=physical, modality=modality)
    ve = factories.make_ve(org, models=[model], credits=1000, **(ve_kw or {}))
    key, secret = factories.make_key(ve, **(key_kw or {}))
    routing_cache.refresh_now()
    book = getattr(gate.get_biller(), "rates", None)
    if book is not None:  # the real biller's exchange-rate book: see the rate set above now
        book.refresh()
    return World(org=org, ve=ve, key=key, secret=secret, model=model, physical=[p for p, _, _ in physical])


@pytest.fixture
def world_openai(live_gateway, openai_up):
    return make_world([(openai_up, "openai", "gpt-up", 0, 1)])
