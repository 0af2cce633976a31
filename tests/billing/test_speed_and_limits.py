"""Admit + settle cost per call (printed; run with -s to see it), rate limiters, disconnects."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from billing.gate import Outcome, RateLimited
from billing.models import RequestLog
from billing.ratelimit import MemoryLimiter, RedisLimiter
from gateway.adapters.base import Usage
from tests.billing.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)


async def test_admit_and_settle_per_call_cost(biller, budget):
    # given a warm biller (rates loaded, counters built)
    world = await sync_to_async(make_world)(credits="1000000")
    snaps = await sync_to_async(world.snap)()
    ctx = world.ctx(snaps=snaps)
    await biller.settle(ctx, await biller.admit(ctx), Outcome(route=None))
    biller.rates.max_age = 3600
    n = 200
    # when
    started = time.perf_counter()
    for _ in range(n):
        ctx = world.ctx(snaps=snaps)
        admission = await biller.admit(ctx)
        await biller.settle(ctx, admission, Outcome(route=ctx.model.routes[0], usage=Usage(10, 0, 0, 20)))
    per_call_us = (time.perf_counter() - started) / n * 1e6
    await biller.flush()
    # then
    print(f"\nadmit+settle on {budget.name} ({settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}): "
          f"{per_call_us:.0f} µs per call (sequential, {n} calls, tokenizer included)")
    assert per_call_us < 50_000
    assert await RequestLog.objects.acount() == n + 1


async def test_client_disconnect_is_charged_for_what_was_generated(biller, budget):
    world = await sync_to_async(make_world)()
    ctx = await sync_to_async(world.ctx)(stream=True)
    admission = await biller.admit(ctx)
    outcome = Outcome(route=ctx.model.routes[0], usage=Usage(input_tokens=10, output_tokens=7, estimated=True),
                      client_disconnected=True, status="disconnected")
    settlement = await biller.settle(ctx, admission, outcome)
    await biller.flush()
    assert settlement.charge == 1_000_000 + 1_400_000
    row = await RequestLog.objects.aget(request_id=ctx.request_id)
    assert row.status == "disconnected" and row.usage_estimated and row.charge == settlement.charge


class _VE:
    def __init__(self, rpm=None, tpm=None, id=1):
        self.id, self.requests_per_minute, self.tokens_per_minute = id, rpm, tpm


class _Key:
    def __init__(self, id):
        self.id = id



@pytest.mark.parametrize("make", ["memory", "redis"])
async def test_requests_per_minute_per_ve_and_per_key(make, mid_window):
    limiter = _limiter(make)
    ve = _VE(rpm=3, id=time.time_ns() % 10**9)
    # two keys share the VE's 3 requests a minute
    await limiter.check(ve, _Key(1), 1)
    await limiter.check(ve, _Key(2), 1)
    await limiter.check(ve, _Key(1), 1)
    with pytest.raises(RateLimited) as raised:
        await limiter.check(ve, _Key(2), 1)
    assert raised.value.scope == "virtual endpoint" and 0 < raised.value.retry_after <= 60


@pytest.mark.parametrize("make", ["memory", "redis"])
async def test_tokens_per_minute_counts_prompt_and_output(make, mid_window):
    limiter = _limiter(make)
    ve = _VE(tpm=1000, id=time.time_ns() % 10**9)
    await limiter.check(ve, _Key(1), 5000)  # larger than a window: let through when the window is empty
    with pytest.raises(RateLimited):
        await limiter.check(ve, _Key(1), 10)
    ve2 = _VE(tpm=1000, id=ve.id + 1)
    await limiter.check(ve2, _Key(3), 100)
    await limiter.add_tokens(ve2, _Key(3), 850)  # output counted at settle
    with pytest.raises(RateLimited) as raised:
        await limiter.check(ve2, _Key(3), 100)
    assert raised.value.scope == "virtual endpoint"


def _limiter(make):
    if make == "memory":
        return MemoryLimiter()
    if not settings.REDIS_URL:
        pytest.skip("the Redis rate limiter needs REDIS_URL (run with the PostgreSQL + Redis configuration)")
    return RedisLimiter(settings.REDIS_URL, settings.REDIS_PREFIX + f"t{time.time_ns()}:")


@pytest.mark.skipif(not settings.REDIS_URL, reason="the Redis limiter and budget need REDIS_URL (the PostgreSQL + "
                                                     "Redis pass runs this)")
async def test_a_rate_limited_call_holds_nothing_and_check_and_hold_share_one_round_trip(mid_window):
    import asyncio
    import uuid

    from billing.biller import RealBiller
    from billing.pricing import RateBook
    from billing.requestlog import LogWriter
    from tests.billing.conftest import make_budget

    budget = make_budget("redis")
    limiter = RedisLimiter(settings.REDIS_URL, settings.REDIS_PREFIX + uuid.uuid4().hex[:6] + ":")
    biller = RealBiller(budget=budget, limiter=limiter, writer=LogWriter(), rates=RateBook())
    spans = {}

    def timed(name, fn):
        async def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                spans[name] = (started, time.perf_counter())
        return wrapper

    limiter.check = timed("check", limiter.check)
    budget.reserve = timed("reserve", budget.reserve)
    try:
        # given a VE allowing one request a minute
        world = await sync_to_async(make_world)(ve_kw={"requests_per_minute": 1})
        ctx = await sync_to_async(world.ctx)()
        admission = await biller.admit(ctx)
        settled = await biller.settle(ctx, admission, Outcome(route=ctx.model.routes[0], usage=Usage(10, 0, 0, 5)))
        # then the check and the hold were in flight together (neither waited for the other)
        (c0, c1), (r0, r1) = spans["check"], spans["reserve"]
        assert c0 < r1 and r0 < c1
        # when the second call of the minute comes
        ctx = await sync_to_async(world.ctx)()
        with pytest.raises(RateLimited):
            await biller.admit(ctx)
        await asyncio.sleep(0)
        # then it holds nothing and costs nothing: the hold taken beside the check is released
        counters = await budget.counters(world.ve.pk)
        assert (counters.reserved, counters.spend) == (0, settled.charge)
    finally:
        budget.delete_all_keys()
        await biller.flush()
