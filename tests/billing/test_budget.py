"""Reserve-then-settle through the real biller, on the SQL and the Redis budget."""

import asyncio
import random

import pytest
from asgiref.sync import sync_to_async

from billing.gate import BudgetExhausted, Outcome
from billing.ledger import ledger_sums
from billing.models import LedgerEntry, RequestLog
from gateway.adapters.base import Usage
from routing.models import AccessKey, VirtualEndpoint
from tests import factories
from tests.billing.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)


def served(ctx, input_tokens=10, output_tokens=50, **kw) -> Outcome:
    return Outcome(route=ctx.model.routes[0], usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens), **kw)


async def counters(budget, ve_id):
    return await budget.counters(ve_id)


async def test_admit_holds_the_estimate_and_settle_charges_actual_usage(biller, budget):
    # given 1000 credits; 0.1 credit per input token, 0.2 per output token
    world = await sync_to_async(make_world)()
    ctx = await sync_to_async(world.ctx)(max_tokens=100)
    # when
    admission = await biller.admit(ctx)
    during = await counters(budget, world.ve.pk)
    settlement = await biller.settle(ctx, admission, served(ctx, 10, 50))
    await biller.flush()
    # then: held prompt estimate + 100 output tokens, charged 10 x 0.1 + 50 x 0.2 = 11 credits
    assert admission.reserved >= 20_000_000 + 100_000 * 10
    assert during.reserved == admission.reserved
    assert settlement.charge == 11_000_000
    assert settlement.balance == 989_000_000
    after = await counters(budget, world.ve.pk)
    assert (after.budget, after.spend, after.reserved) == (1_000_000_000, 11_000_000, 0)
    entry = await LedgerEntry.objects.aget(idempotency_key=ctx.request_id)
    assert (entry.kind, entry.amount, entry.access_key_id) == ("charge", 11_000_000, world.key.pk)
    assert entry.rate_snapshot["rate"]["credits_per_unit"] == "100000.00000000"
    row = await RequestLog.objects.aget(request_id=ctx.request_id)
    assert (row.charge, row.cost_credits, row.input_tokens, row.output_tokens) == (11_000_000, 11_000_000, 10, 50)
    assert row.price_snapshot["cost_per_mtok"]["output"].startswith("2")


async def test_balance_for_part_of_max_tokens_clamps_it(biller, budget):
    # given 10 credits: prompt (~3 credits held for the estimate) + ~35 output tokens at 0.2
    world = await sync_to_async(make_world)(credits="10")
    ctx = await sync_to_async(world.ctx)(max_tokens=1000)
    # when
    admission = await biller.admit(ctx)
    # then
    assert 16 <= admission.max_tokens < 50
    assert admission.reserved <= 10_000_000
    assert admission.allowed_route_ids == frozenset({ctx.model.routes[0].id})
    await biller.settle(ctx, admission, Outcome(route=None, status="upstream_error", http_status=503))


async def test_balance_below_the_smallest_useful_call_is_exhausted(biller, budget):
    # given 1 credit: not enough for the prompt plus 16 output tokens (3.2 credits)
    world = await sync_to_async(make_world)(credits="1", ve_kw={"exhaustion_mode": "message"})
    ctx = await sync_to_async(world.ctx)()
    # when
    with pytest.raises(BudgetExhausted) as raised:
        await biller.admit(ctx)
    # then
    assert raised.value.mode == "message"
    assert f"ve_id={world.ve.public_id}" in raised.value.checkout_url and "token=" in raised.value.checkout_url
    assert raised.value.checkout_url in raised.value.message
    assert (await counters(budget, world.ve.pk)).reserved == 0


async def test_failed_everywhere_is_charged_nothing_and_releases_the_hold(biller, budget):
    world = await sync_to_async(make_world)()
    ctx = await sync_to_async(world.ctx)()
    admission = await biller.admit(ctx)
    settlement = await biller.settle(ctx, admission, Outcome(route=None, status="upstream_error", http_status=502))
    await biller.flush()
    assert settlement.charge == 0
    after = await counters(budget, world.ve.pk)
    assert (after.spend, after.reserved) == (0, 0)
    assert not await LedgerEntry.objects.filter(kind="charge").aexists()
    assert (await RequestLog.objects.aget(request_id=ctx.request_id)).status == "upstream_error"


async def test_key_credit_limit_is_reserved_against_too(biller, budget):
    # given a key limited to 5 credits on a VE with 1000
    world = await sync_to_async(make_world)(key_kw={"credit_limit": 5_000_000})
    ctx = await sync_to_async(world.ctx)(max_tokens=1000)
    # when
    admission = await biller.admit(ctx)
    # then: clamped to what the key may still spend
    assert admission.reserved <= 5_000_000 and admission.max_tokens < 25
    await biller.settle(ctx, admission, served(ctx, 10, admission.max_tokens))
    spend, reserved = await budget.key_counters(world.key.pk)
    assert reserved == 0 and 0 < spend <= 5_000_000


async def test_usage_above_the_hold_is_capped_when_the_balance_cannot_pay(biller, budget):
    # given 5 credits, a call held ~5 credits but reports far more output than estimated
    world = await sync_to_async(make_world)(credits="5")
    ctx = await sync_to_async(world.ctx)(max_tokens=10)
    admission = await biller.admit(ctx)
    # when
    settlement = await biller.settle(ctx, admission, served(ctx, 10, 10_000))
    # then the VE never goes below zero
    after = await counters(budget, world.ve.pk)
    assert settlement.charge <= 5_000_000 and after.spend <= after.budget
    await biller.flush()
    row = await RequestLog.objects.aget(request_id=ctx.request_id)
    assert row.price_snapshot["uncollected"] > 0


async def test_expired_holds_are_released_once(biller, budget, settings):
    # given a call whose hold expired (its process died)
    settings.GATEWAY_TOTAL_TIMEOUT = -120  # holds expire in the past
    world = await sync_to_async(make_world)()
    ctx = await sync_to_async(world.ctx)()
    admission = await biller.admit(ctx)
    assert (await counters(budget, world.ve.pk)).reserved == admission.reserved
    # when the sweep runs, then the late settle comes
    released = await sync_to_async(budget.release_expired)()
    assert released == 1
    assert (await counters(budget, world.ve.pk)).reserved == 0
    await biller.settle(ctx, admission, served(ctx, 10, 10))
    # then nothing was released twice, and the charge still went through
    after = await counters(budget, world.ve.pk)
    assert (after.reserved, after.spend) == (0, 3_000_000)
    assert await sync_to_async(budget.release_expired)() == 0


def _sums(ve_id):
    return ledger_sums(ve_id), LedgerEntry.objects.filter(virtual_endpoint_id=ve_id, kind="charge").count()


async def test_budget_never_overspent_under_concurrency(biller, budget):
    # given a VE with budget for ~50 calls of max 100 output tokens (each holds ~24 credits)
    world = await sync_to_async(make_world)(credits="1200")
    snaps = await sync_to_async(world.snap)()
    outcomes = {"charged": 0, "exhausted": 0, "errors": 0}

    async def call(i):
        ctx = world.ctx(max_tokens=100, snaps=snaps)
        try:
            admission = await biller.admit(ctx)
        except BudgetExhausted:
            outcomes["exhausted"] += 1
            return
        await asyncio.sleep(random.uniform(0.01, 0.05))  # a slow upstream
        most = admission.max_tokens or 100  # None: not clamped, the client's 100 stands
        settlement = await biller.settle(ctx, admission, served(ctx, 10, random.randint(min(40, most), most)))
        outcomes["charged" if settlement.charge else "errors"] += 1

    # when 200 calls run at once
    await asyncio.gather(*(call(i) for i in range(200)))
    await biller.flush()
    # then
    (ledger_budget, ledger_spend), charges = await sync_to_async(_sums)(world.ve.pk)
    after = await counters(budget, world.ve.pk)
    assert outcomes["errors"] == 0
    assert outcomes["charged"] == charges >= 40
    assert outcomes["exhausted"] == 200 - charges
    assert after.spend <= after.budget
    assert (after.budget, after.spend, after.reserved) == (ledger_budget, ledger_spend, 0)
    ve = await VirtualEndpoint.objects.aget(pk=world.ve.pk)
    assert (ve.credit_budget, ve.credit_spend) == (ledger_budget, ledger_spend)
    assert ve.credit_spend <= ve.credit_budget
    assert await RequestLog.objects.filter(virtual_endpoint_id=world.ve.pk).acount() == charges


async def test_reconcile_repairs_drift_and_reports_it(biller, budget):
    # given a counter that disagrees with the ledger
    world = await sync_to_async(make_world)()
    ctx = await sync_to_async(world.ctx)()
    await biller.settle(ctx, await biller.admit(ctx), served(ctx, 10, 10))
    await biller.flush()
    if budget.name == "redis":
        await sync_to_async(budget._sync.hincrby)(budget.k_ve(world.ve.pk), "spend", 777)
    else:
        await VirtualEndpoint.objects.filter(pk=world.ve.pk).aupdate(credit_spend=3_000_777)
    # when
    drifts = await sync_to_async(budget.reconcile)(world.ve.pk)
    # then
    assert [(d.counter, d.found - d.expected) for d in drifts] == [("spend", 777)]
    assert (await counters(budget, world.ve.pk)).spend == 3_000_000
    assert await sync_to_async(budget.reconcile)(world.ve.pk) == []
    from billing.models_usage import DriftReport

    report = await DriftReport.objects.aget()
    assert (report.counter, report.drift) == ("spend", 777)


async def test_grants_reach_the_budget(biller, budget):
    # given counters already in use
    world = await sync_to_async(make_world)(credits="1")
    assert (await counters(budget, world.ve.pk)).budget == 1_000_000
    # when a grant is posted (console, API, Stripe webhook)
    if budget.name == "redis":
        from billing.ledger import on_posted

        on_posted(budget.grant_applied)
    await sync_to_async(factories.grant)(world.ve, "99")
    # then the next call sees it
    assert (await counters(budget, world.ve.pk)).budget == 100_000_000
    ctx = await sync_to_async(world.ctx)()
    assert (await biller.admit(ctx)).reserved > 0


async def test_counters_rebuilt_from_the_ledger_after_redis_loses_them(biller, budget):
    if budget.name != "redis":
        pytest.skip("SQL counters live in the database; nothing to lose")
    # given charged calls, some not yet flushed to the ledger
    world = await sync_to_async(make_world)()
    for i in range(3):
        ctx = await sync_to_async(world.ctx)()
        await biller.settle(ctx, await biller.admit(ctx), served(ctx, 10, 10))
    before = await counters(budget, world.ve.pk)
    # when Redis restarts empty
    assert await sync_to_async(budget.delete_all_keys)() > 0
    ctx = await sync_to_async(world.ctx)()
    admission = await biller.admit(ctx)  # rebuilds from the ledger (flushing this process first)
    await biller.settle(ctx, admission, served(ctx, 10, 10))
    await biller.flush()
    # then no charge was lost
    after = await counters(budget, world.ve.pk)
    (ledger_budget, ledger_spend), charges = await sync_to_async(_sums)(world.ve.pk)
    assert before.spend == 9_000_000
    assert (after.budget, after.spend, after.reserved) == (ledger_budget, ledger_spend, 0) == (
        1_000_000_000, 12_000_000, 0)
    assert charges == 4


async def test_clamped_call_never_falls_back_to_a_route_it_cannot_pay(biller, budget):
    # given an expensive first tier (20 USD/M output) and a cheap second tier (2 USD/M)
    def world_with_two_tiers():
        world = make_world(credits="12", output_cost="20")
        cheap = factories.make_physical_model(world.physical.provider, "cheap-model", input_cost_per_mtok=1,
                                              output_cost_per_mtok=2)
        from routing.models import Route

        Route.objects.create(logical_model=world.model, physical_model=cheap, priority=1)
        return world, cheap

    world, cheap = await sync_to_async(world_with_two_tiers)()
    ctx = await sync_to_async(world.ctx)(max_tokens=2000)
    # when 12 credits cannot pay 16 output tokens at the expensive route (prompt + 32 credits)
    admission = await biller.admit(ctx)
    # then only the cheap route may serve, with output clamped to what the hold pays there
    cheap_route = next(r for r in ctx.model.routes if r.physical_model.id == cheap.pk)
    assert admission.allowed_route_ids == frozenset({cheap_route.id})
    assert 16 <= admission.max_tokens < 600
    await biller.settle(ctx, admission, Outcome(route=None))


async def test_a_model_priced_at_zero_on_purpose_is_free_and_admitted(biller, budget):
    world = await sync_to_async(make_world)(credits="0", model_kw={"input_price_per_mtok": 0,
                                                                   "output_price_per_mtok": 0})
    ctx = await sync_to_async(world.ctx)()
    admission = await biller.admit(ctx)
    settlement = await biller.settle(ctx, admission, served(ctx, 10, 10))
    assert (admission.reserved, settlement.charge) == (0, 0)
    assert not await LedgerEntry.objects.filter(kind="charge").aexists()


async def test_sql_reconcile_repairs_key_counters(biller, budget):
    if budget.name != "sql":
        pytest.skip("key counters of the Redis budget are rebuilt by its own script (test_reconcile_repairs...)")
    world = await sync_to_async(make_world)()
    ctx = await sync_to_async(world.ctx)()
    await biller.settle(ctx, await biller.admit(ctx), served(ctx, 10, 10))
    await AccessKey.objects.filter(pk=world.key.pk).aupdate(credit_spend=1, credit_reserved=5)
    await sync_to_async(budget.reconcile)(world.ve.pk)
    assert await budget.key_counters(world.key.pk) == (3_000_000, 0)


async def test_budget_store_down_refuses_with_503_not_500(transactional_db):
    # given a Redis budget whose server does not answer
    from billing.biller import RealBiller
    from billing.budget_redis import RedisBudget
    from billing.pricing import RateBook
    from billing.ratelimit import MemoryLimiter
    from billing.requestlog import LogWriter
    from gateway.errors import GatewayError

    world = await sync_to_async(make_world)()
    biller = RealBiller(budget=RedisBudget("redis://127.0.0.1:1/0", "down:"), limiter=MemoryLimiter(),
                        writer=LogWriter(), rates=RateBook())
    ctx = await sync_to_async(world.ctx)()
    # when / then
    with pytest.raises(GatewayError) as raised:
        await biller.admit(ctx)
    assert raised.value.status == 503 and raised.value.code == "billing_unavailable"


async def test_n_choices_hold_n_times_the_output(biller, budget):
    world = await sync_to_async(make_world)()
    one = await biller.admit(await sync_to_async(world.ctx)(max_tokens=100))
    four = await biller.admit(await sync_to_async(world.ctx)(max_tokens=100, n=4))
    # 100 output tokens at 0.2 credit each, four times over
    assert four.reserved - one.reserved == 3 * 100 * 200_000


def test_prompt_bound_is_never_below_the_tiktoken_estimate():
    # given prompts in several scripts, with names, parts and tool calls
    from billing.biller import prompt_bound, prompt_tokens
    from billing.gate import CallContext

    texts = ["Say hello", "naïve café ünïcödé " * 30, "日本語のテキストです。" * 20, "🙂🚀 emoji " * 40,
             "1234567890" * 50, "<|endoftext|> special-looking text", "a" * 3000]
    for text in texts:
        body = {"messages": [{"role": "system", "content": text}, {"role": "user", "name": "bob", "content": [
            {"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": "data:x", "detail": "low"}}]},
            {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": text}}]}]}
        ctx = CallContext(request_id="r", endpoint="chat.completions", ve=None, key=None, model=None, body=body)
        # when / then: the byte bound holds at least what tiktoken counts (with its margin)
        assert prompt_bound(ctx) >= prompt_tokens(ctx)
        emb = CallContext(request_id="r", endpoint="embeddings", ve=None, key=None, model=None,
                          body={"input": [text, text]})
        assert prompt_bound(emb) >= prompt_tokens(emb)
