"""Billing through the running gateway with the openai SDK: the money rules end to end."""

from __future__ import annotations

import asyncio

import openai
import pytest
from django.conf import settings

from billing import gate, ledger
from billing.biller import RealBiller
from billing.ledger import ledger_sums
from billing.money import to_micros
from billing.models import LedgerEntry, RequestLog
from billing.pricing import RateBook
from billing.ratelimit import MemoryLimiter
from billing.requestlog import LogWriter
from routing.cache import routing_cache
from routing.models import VirtualEndpoint
from tests.billing.conftest import close_sync_thread_connections, make_budget, make_world
from tests.fakes.openai_server import OpenAIFake
from tests.gateway.conftest import live_gateway  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

CANARY_KEY = "sk-canary-provider-secret-7f3a"
CANARY_HOST = "canary-upstream.invalid"


class SlowOpenAI(OpenAIFake):
    delay = 0.2

    async def default(self, request):
        await asyncio.sleep(self.delay)
        return await super().default(request)


@pytest.fixture
def upstream():
    with SlowOpenAI(api_key="sk-up") as fake:
        yield fake


@pytest.fixture(params=["sql", "redis", "redis-spool"])
def real_biller(request, transactional_db):
    """The real biller on a fresh budget (its own Redis prefix), installed in the gateway;
    "redis-spool" is production's Redis mode: log rows go through the Redis list."""
    budget = make_budget(request.param.split("-")[0])
    if request.param == "redis-spool":
        from billing.logspool import RedisLogSpool

        writer = RedisLogSpool(budget._fast, budget._sync, budget.p, interval=0.1)
    else:
        writer = LogWriter(interval=0.1)
    biller = RealBiller(budget=budget, limiter=MemoryLimiter(), writer=writer, rates=RateBook())
    listener = getattr(budget, "grant_applied", None)
    if listener:
        ledger.on_posted(listener)
    previous = gate._biller
    gate.set_biller(biller)
    yield biller
    gate.set_biller(previous)
    if listener:
        ledger._listeners.remove(listener)
        budget.delete_all_keys()
    close_sync_thread_connections()


def world_for(upstream, **kw):
    world = make_world(provider_kw={"kind": "openai", "base_url": upstream.base_url, "api_key": upstream.api_key},
                       **kw)
    routing_cache.refresh_now()
    return world


def client(live_gateway, world, **kw):
    return openai.AsyncOpenAI(base_url=f"{live_gateway.url}/{world.ve.public_id}/v1", api_key=world.secret,
                              max_retries=0, timeout=60, **kw)


def test_budget_never_overspent_through_the_gateway(live_gateway, real_biller, upstream):
    # given a VE with budget for ~50 calls (each holds ~21 credits: prompt + 100 output tokens)
    world = world_for(upstream, credits="1050")
    sdk = client(live_gateway, world)
    results = {"ok": 0, "exhausted": 0, "other": []}

    async def call(i):
        try:
            await sdk.chat.completions.create(model="chat", max_tokens=100,
                                              messages=[{"role": "user", "content": f"call number {i}"}])
            results["ok"] += 1
        except openai.RateLimitError as exc:
            assert exc.code == "budget_exhausted"
            results["exhausted"] += 1
        except Exception as exc:  # any other status (a 500) fails the test below
            results["other"].append(repr(exc))

    async def run_all():
        await asyncio.gather(*(call(i) for i in range(200)))

    # when 200 calls run at once against a slow upstream
    asyncio.run(run_all())
    real_biller.flush_sync()
    # then
    assert results["other"] == []
    charges = LedgerEntry.objects.filter(virtual_endpoint=world.ve, kind="charge").count()
    assert results["ok"] == charges and charges >= 40
    assert results["exhausted"] == 200 - charges
    budget, spend = ledger_sums(world.ve.pk)
    counters = asyncio.run(real_biller.budget.counters(world.ve.pk))
    assert (counters.budget, counters.spend, counters.reserved) == (budget, spend, 0)
    ve = VirtualEndpoint.objects.get(pk=world.ve.pk)
    assert (ve.credit_budget, ve.credit_spend) == (budget, spend) and spend <= budget
    assert RequestLog.objects.filter(virtual_endpoint=world.ve, status="ok").count() == charges
    assert RequestLog.objects.filter(virtual_endpoint=world.ve, status="budget_exhausted").count() == 200 - charges


def test_charge_and_balance_headers_and_request_log(live_gateway, real_biller, upstream):
    world = world_for(upstream)
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    # when
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "hello"}], extra_headers={"X-TokenBill-Run-Id": "run-7"})
    raw.parse()
    real_biller.flush_sync()
    # then
    row = RequestLog.objects.get(request_id=raw.headers["x-tokenbill-request-id"])
    entry = LedgerEntry.objects.get(idempotency_key=row.request_id)
    assert row.charge == entry.amount > 0
    assert row.run_id == "run-7" and row.attempts and row.physical_model_id == world.physical.pk
    # the headers are decimal-string credits, equal to what the ledger says
    assert to_micros(raw.headers["x-tokenbill-charge"]) == entry.amount
    ve = VirtualEndpoint.objects.get(pk=world.ve.pk)
    assert to_micros(raw.headers["x-tokenbill-balance"]) == ve.credit_budget - ve.credit_spend


def test_budget_exhausted_error_mode(live_gateway, real_biller, upstream):
    world = world_for(upstream, credits="1")
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret)  # SDK retries left ON
    # when
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    # then: one call only (x-should-retry: false), the link in the message and in the error
    error = raised.value
    assert error.code == "budget_exhausted" and error.type == "insufficient_quota"
    assert error.body["checkout_url"].startswith(f"{settings.PUBLIC_BASE_URL}/checkout?ve_id={world.ve.public_id}")
    assert "Your Credit balance is insufficient. Please top up: " + error.body["checkout_url"] in error.message
    assert error.response.headers["x-should-retry"] == "false"
    assert len(upstream.requests) == 0


@pytest.mark.parametrize("stream", [False, True])
def test_budget_exhausted_message_mode_answers_kindly_and_free(live_gateway, real_biller, upstream, stream):
    world = world_for(upstream, credits="1", ve_kw={"exhaustion_mode": "message"})
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    # when
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
            model="chat", stream=True, messages=[{"role": "user", "content": "hi"}]) if c.choices)
    else:
        text = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}]
                                           ).choices[0].message.content
    # then
    assert "run out of credits" in text and f"/checkout?ve_id={world.ve.public_id}" in text
    assert len(upstream.requests) == 0
    assert not LedgerEntry.objects.filter(kind="charge").exists()


@pytest.mark.parametrize("stream", [False, True])
def test_tokenbill_command_answers_free_and_leaks_nothing(live_gateway, real_biller, upstream, stream):
    # given canaries in the provider's credential and URL
    world = world_for(upstream, credits="1234.5", key_kw={"credit_limit": 100_000_000})
    from routing.models import Provider

    provider = Provider.objects.get(pk=world.physical.provider_id)
    provider.set_credentials(CANARY_KEY)
    provider.base_url = f"http://{CANARY_HOST}/v1"
    provider.save()
    routing_cache.refresh_now()
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "/tokenbill"}]
    # when
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(
            model="chat", stream=True, messages=messages) if c.choices)
    else:
        text = sdk.chat.completions.create(model="chat", messages=messages).choices[0].message.content
    models = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "/tokenbill models"}])
    # then
    assert world.ve.name in text and "Balance: 1,234.50 credits" in text and "Models: chat" in text
    assert "limit 100" in text
    assert "- chat" in models.choices[0].message.content
    for secret in (CANARY_KEY, CANARY_HOST, world.secret, world.secret[:10], "http"):
        assert secret not in text
    assert len(upstream.requests) == 0
    assert not LedgerEntry.objects.filter(kind="charge").exists()


def test_model_without_any_price_is_a_clear_error_not_free(live_gateway, real_biller, upstream):
    world = world_for(upstream, input_cost="0", output_cost="0")
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "model_not_priced" and "no price" in raised.value.message
    assert len(upstream.requests) == 0


def test_rate_limit_per_minute_gives_429_with_retry_after(live_gateway, real_biller, upstream, mid_window):
    world = world_for(upstream, ve_kw={"requests_per_minute": 2})
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    for _ in range(2):
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as raised:
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.code == "rate_limit_exceeded"
    assert 1 <= int(raised.value.response.headers["retry-after"]) <= 60




def test_clean_shutdown_flushes_buffered_logs_and_charges(real_biller, upstream):
    # given a gateway whose writer would not flush on its own for an hour
    from django.core.asgi import get_asgi_application

    from tests.fakes.gateway_server import LiveServer
    from tokenbill.routing import build_application

    real_biller.writer.interval = 3600
    world = world_for(upstream)
    server = LiveServer(build_application(get_asgi_application())).start()
    try:
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=world.secret, max_retries=0)
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
        assert RequestLog.objects.count() == 0
    finally:
        # when the server shuts down cleanly (lifespan shutdown)
        server.stop()
    # then nothing buffered is lost
    assert RequestLog.objects.filter(virtual_endpoint=world.ve, status="ok").count() == 1
    assert LedgerEntry.objects.filter(virtual_endpoint=world.ve, kind="charge").count() == 1


def test_leased_calls_charge_exactly_and_shutdown_returns_the_lease(real_biller, upstream):
    # given a VE with a large balance: with Redis, calls are admitted from a credit lease
    from django.core.asgi import get_asgi_application

    from tests.fakes.gateway_server import LiveServer
    from tokenbill.routing import build_application

    world = world_for(upstream, credits="1000000")
    server = LiveServer(build_application(get_asgi_application())).start()
    charges, balances = [], []
    try:
        sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=world.secret, max_retries=0)
        for i in range(12):
            raw = sdk.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": f"call {i}"}])
            raw.parse()
            charges.append(to_micros(raw.headers["x-tokenbill-charge"]))
            balances.append(to_micros(raw.headers["x-tokenbill-balance"]))
        if real_biller.budget.name == "redis":  # the slice is held while the process runs
            assert asyncio.run(real_biller.budget.counters(world.ve.pk)).reserved > 0
    finally:
        # when the gateway shuts down cleanly
        server.stop()
    # then every header agrees with the ledger, and nothing stays reserved
    real_biller.flush_sync()
    budget, spend = ledger_sums(world.ve.pk)
    assert LedgerEntry.objects.filter(virtual_endpoint=world.ve, kind="charge").count() == 12
    assert sum(charges) == spend and all(c > 0 for c in charges)
    assert balances[-1] == budget - spend
    assert all(after == before - c for before, after, c in zip(balances, balances[1:], charges[1:]))
    counters = asyncio.run(real_biller.budget.counters(world.ve.pk))
    assert (counters.budget, counters.spend, counters.reserved) == (budget, spend, 0)


def test_redis_restart_mid_run_loses_no_charge(live_gateway, real_biller, upstream):
    if real_biller.budget.name != "redis":
        pytest.skip("SQL counters cannot be lost to a Redis restart")
    world = world_for(upstream)
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)

    def calls(n):
        for i in range(n):
            sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"call {i}"}])

    # given charged calls, some maybe still buffered
    calls(5)
    # when Redis comes back empty in the middle of the run
    assert real_biller.budget.delete_all_keys() > 0
    calls(5)
    real_biller.flush_sync()
    # then every charge is in the ledger and the rebuilt counters equal its sums
    budget, spend = ledger_sums(world.ve.pk)
    assert LedgerEntry.objects.filter(virtual_endpoint=world.ve, kind="charge").count() == 10
    counters = asyncio.run(real_biller.budget.counters(world.ve.pk))
    assert (counters.budget, counters.spend, counters.reserved) == (budget, spend, 0)
    assert RequestLog.objects.filter(virtual_endpoint=world.ve).count() == 10
