"""The hold of a call that names no output limit: the physical model's own output cap (its
worst case, since no limit is sent upstream), on both budgets; clamped only when short."""

from __future__ import annotations

import asyncio
import random

import pytest
from asgiref.sync import sync_to_async

from billing.gate import BudgetExhausted, Outcome
from gateway.adapters.base import Usage
from routing.models import PhysicalModel, VirtualEndpoint
from tests.billing.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)

CAP = 10_000  # output tokens; 0.2 credits each: 2000 credits of worst case


def capped_world(credits: str):
    world = make_world(credits=credits)
    PhysicalModel.objects.filter(pk=world.physical.pk).update(max_output_tokens=CAP)
    return world


async def test_no_limit_holds_the_models_whole_output_and_adds_no_limit(biller, budget):
    # given 5000 credits: the cap's 2000 credits of output are paid
    world = await sync_to_async(capped_world)("5000")
    ctx = await sync_to_async(world.ctx)(max_tokens=None)
    # when
    admission = await biller.admit(ctx)
    # then: the hold covers CAP output tokens, and no limit goes upstream
    assert admission.max_tokens is None
    assert admission.reserved >= CAP * 200_000  # micro-credits: 0.2 credits a token
    await biller.settle(ctx, admission, Outcome(route=None))


async def test_no_limit_and_a_short_balance_clamps_below_the_cap(biller, budget):
    world = await sync_to_async(capped_world)("500")  # ~2500 output tokens
    ctx = await sync_to_async(world.ctx)(max_tokens=None)
    admission = await biller.admit(ctx)
    assert 16 <= admission.max_tokens < 2500
    assert admission.reserved <= 500_000_000
    await biller.settle(ctx, admission, Outcome(route=None))


async def test_calls_without_limits_never_overspend_under_concurrency(biller, budget):
    # given a budget for ~6 worst cases; every admitted call writes up to what it may
    world = await sync_to_async(capped_world)("12000")
    snaps = await sync_to_async(world.snap)()

    async def call():
        ctx = world.ctx(max_tokens=None, snaps=snaps)
        try:
            admission = await biller.admit(ctx)
        except BudgetExhausted:
            return
        await asyncio.sleep(random.uniform(0.01, 0.05))
        most = admission.max_tokens or CAP  # None: no limit was sent, the model may write its cap
        usage = Usage(input_tokens=10, output_tokens=random.randint(most // 2, most))
        await biller.settle(ctx, admission, Outcome(route=ctx.model.routes[0], usage=usage))

    await asyncio.gather(*(call() for _ in range(40)))
    await biller.flush()
    counters = await budget.counters(world.ve.pk)
    assert counters.spend <= counters.budget and counters.reserved == 0
    ve = await VirtualEndpoint.objects.aget(pk=world.ve.pk)
    assert ve.credit_spend <= ve.credit_budget
