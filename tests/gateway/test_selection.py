"""routing.selection (pure) and routing.breaker state rules."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from decimal import Decimal

import pytest
from django.conf import settings

from routing.breaker import Breaker
from routing.selection import plan
from routing.snapshot import PhysicalModelSnap, ProviderSnap, RouteSnap

_P = ProviderSnap(id=1, name="p", kind="openai", base_url="http://x", api_key="k", api_version="", currency="USD",
                  connect_timeout=1, read_timeout=1)


def route(rid: int, priority: int = 0, weight: float = 1.0) -> RouteSnap:
    z = Decimal(0)
    pm = PhysicalModelSnap(id=rid, upstream_model=f"m{rid}", modality="chat", provider=_P, input_cost_per_mtok=z,
                           cached_input_cost_per_mtok=z, cache_write_cost_per_mtok=z, output_cost_per_mtok=z,
                           image_costs={}, audio_cost_per_second=z)
    return RouteSnap(id=rid, priority=priority, weight=weight, physical_model=pm)


def never_open(_):
    return False


def test_weighted_choice_follows_fractional_weights_and_weight_zero_never_serves():
    # given
    routes = [route(1, weight=0.75), route(2, weight=0.25), route(3, weight=0.0)]
    rng = random.Random(7)
    # when
    firsts = Counter(next(plan(routes, never_open, rng=rng)).id for _ in range(20000))
    # then
    assert firsts[3] == 0
    assert 0.73 < firsts[1] / 20000 < 0.77


def test_tiers_in_priority_order_each_route_once():
    routes = [route(1, 1), route(2, 0), route(3, 0), route(4, 2), route(5, 1, weight=0)]
    order = [r.id for r in plan(routes, never_open, rng=random.Random(1))]
    assert sorted(order[:2]) == [2, 3] and order[2:] == [1, 4]


def test_open_breakers_are_skipped_and_a_cooling_tier_falls_through():
    routes = [route(1, 0), route(2, 0), route(3, 1)]
    assert [r.id for r in plan(routes, lambda pm: pm in (1, 2))] == [3]
    assert [r.id for r in plan(routes, lambda pm: True)] == []


def test_allowed_route_ids_restrict_the_plan():
    routes = [route(1, 0), route(2, 0), route(3, 1)]
    assert sorted(r.id for r in plan(routes, never_open, allowed_route_ids=frozenset({2, 3}))) == [2, 3]


def test_breaker_threshold_and_never_shorten(settings):
    settings.GATEWAY_BREAKER_THRESHOLD = 3
    settings.GATEWAY_BREAKER_COOLDOWN = 10
    b = Breaker()

    async def scenario():
        await b.failure(1)
        await b.failure(1)
        assert not b.is_open(1)
        await b.success(1)  # a success resets the count
        await b.failure(1)
        await b.failure(1)
        assert not b.is_open(1)
        await b.failure(1)
        assert b.is_open(1)
        long_until = b.open_until(1)
        await b.failure(1, retry_after=1)  # shorter than the running cooldown: kept
        assert b.open_until(1) >= long_until
        await b.failure(2, retry_after=30)  # 429 + Retry-After opens at once
        assert b.is_open(2) and b.open_until(2) - time.time() > 25

    asyncio.run(scenario())


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (the shared-breaker path)")
def test_breaker_state_is_shared_through_redis_max_only():
    import redis.asyncio as aredis

    from routing.breaker import redis_key

    async def scenario():
        one, two = Breaker(), Breaker()
        one._redis = aredis.Redis.from_url(settings.REDIS_URL)
        two._redis = aredis.Redis.from_url(settings.REDIS_URL)
        try:
            until = time.time() + 60
            await one.open(99, until)
            await two.open(99, until - 30)  # another process with a shorter cooldown: ignored
            fresh = Breaker()
            fresh._redis = two._redis
            await fresh.pull()
            assert fresh.open_until(99) == pytest.approx(until, abs=0.01)
        finally:
            await one._redis.delete(redis_key())
            await one._redis.aclose()
            await two._redis.aclose()

    asyncio.run(scenario())
