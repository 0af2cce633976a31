"""Billing fixtures: a priced world (rate, provider, models, VE, key) as snapshots, and a
real biller on the SQL budget or, when REDIS_URL is set, the Redis budget."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.conf import settings

from billing.biller import RealBiller
from billing.budget_sql import SqlBudget
from billing.gate import CallContext
from billing.pricing import RateBook
from billing.ratelimit import MemoryLimiter
from billing.rates import rate_set
from billing.requestlog import LogWriter
from routing.cache import build_snapshot
from routing.models import hash_secret
from tests import factories

BUDGETS = ["sql", "redis"]


def make_budget(name: str):
    if name == "sql":
        return SqlBudget()
    if not settings.REDIS_URL:
        pytest.skip("the Redis budget needs REDIS_URL (run with the PostgreSQL + Redis configuration)")
    from billing.budget_redis import RedisBudget

    return RedisBudget(settings.REDIS_URL, settings.REDIS_PREFIX + uuid.uuid4().hex[:6] + ":")


@pytest.fixture(params=BUDGETS)
def budget(request, transactional_db):
    impl = make_budget(request.param)
    yield impl
    if impl.name == "redis":
        impl.delete_all_keys()
    close_sync_thread_connections()


def close_sync_thread_connections():
    """sync_to_async work runs on asgiref's one sync thread, whose database connection
    outlives the test; close it so the test database can be dropped."""
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture
def biller(budget):
    return RealBiller(budget=budget, limiter=MemoryLimiter(), writer=LogWriter(interval=0.05), rates=RateBook())


@dataclass
class World:
    org: object
    ve: object
    key: object
    secret: str
    model: object
    physical: object

    def snap(self):
        snapshot = build_snapshot()
        return (snapshot.endpoints_by_id[self.ve.pk], snapshot.keys_by_hash[hash_secret(self.secret)],
                snapshot.logical_models[(self.org.pk, self.model.name)])

    def ctx(self, *, max_tokens: int | None = 100, content: str = "hello there", request_id: str | None = None,
            snaps=None, **body) -> CallContext:
        ve, key, model = snaps or self.snap()
        body = {"model": model.name, "messages": [{"role": "user", "content": content}], **body}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return CallContext(request_id=request_id or uuid.uuid4().hex, endpoint="chat.completions", ve=ve, key=key,
                           model=model, body=body, started_at=time.time(), requested_model=model.name)


def make_world(*, credits="1000", rate="100000", input_cost="1", output_cost="2", currency="USD", ve_kw=None,
               key_kw=None, model_kw=None, provider_kw=None) -> World:
    """Defaults: 1 USD = 100,000 credits; input 1 USD / 1M tokens (0.1 credit a token),
    output 2 USD / 1M (0.2 credit a token); markup 1."""
    org = factories.make_org()
    if rate is not None:
        rate_set(None, currency, rate)
    provider = factories.make_provider(org, currency=currency, **(provider_kw or {}))
    pm = factories.make_physical_model(provider, "up-model", input_cost_per_mtok=Decimal(input_cost),
                                       output_cost_per_mtok=Decimal(output_cost))
    model = factories.make_logical_model(org, "chat", routes=[pm], **(model_kw or {}))
    ve = factories.make_ve(org, models=[model], credits=credits, **(ve_kw or {}))
    key, secret = factories.make_key(ve, **(key_kw or {}))
    return World(org, ve, key, secret, model, pm)


@pytest.fixture(autouse=True, scope="session")
def _drop_billing_redis_keys():
    """The process-wide budget (grant listener) writes under this run's REDIS_PREFIX: clean it."""
    yield
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        for pattern in ("b:*", "rl:*", "logq*"):
            names = list(client.scan_iter(match=settings.REDIS_PREFIX + pattern, count=1000))
            if names:
                client.delete(*names)
        client.close()


@pytest.fixture
def mid_window(monkeypatch):
    """Rate-limit windows are fixed minutes (billing/ratelimit.py): pin the limiter's clock
    to the middle of one, so a test's calls never straddle two windows (a test that ran
    across a minute boundary once saw its third call admitted)."""
    import types

    from billing import ratelimit

    now = int(time.time() // ratelimit.WINDOW) * ratelimit.WINDOW + ratelimit.WINDOW / 2
    monkeypatch.setattr(ratelimit, "time", types.SimpleNamespace(time=lambda: now))
    return now
