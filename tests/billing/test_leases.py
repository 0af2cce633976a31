"""Credit leases (billing/leases.py): calls admitted from a process's slice of the balance,
with the same money rules as per-call holds. Redis only (the SQL budget has no leases)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from billing.biller import RealBiller
from billing.gate import BudgetExhausted, Outcome
from billing.ledger import ledger_sums
from billing.models import LedgerEntry, RequestLog
from billing.pricing import RateBook
from billing.ratelimit import MemoryLimiter
from billing.requestlog import LogWriter
from gateway.adapters.base import Usage
from routing.models import VirtualEndpoint
from tests.billing.conftest import close_sync_thread_connections, make_world

pytestmark = pytest.mark.django_db(transaction=True)

HOLD = 22_000_000  # what one call of make_world's ctx() holds (100 output tokens + prompt), about


def served(ctx, input_tokens=10, output_tokens=50) -> Outcome:
    return Outcome(route=ctx.model.routes[0], usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens))


def redis_budget(prefix: str, seconds: float = 2.0):
    if not settings.REDIS_URL:
        pytest.skip("credit leases live in Redis: run with REDIS_URL (the PostgreSQL + Redis configuration)")
    from billing.budget_redis import RedisBudget

    budget = RedisBudget(settings.REDIS_URL, prefix, leases=True)
    budget.leases.seconds = seconds
    return budget


def biller_on(budget) -> RealBiller:
    return RealBiller(budget=budget, limiter=MemoryLimiter(), writer=LogWriter(interval=0.05), rates=RateBook())


async def leased(prefix: str, seconds: float = 2.0):
    """A Redis budget with leases, its biller, and a VE with a balance large enough for them."""
    budget = redis_budget(prefix, seconds)
    world = await sync_to_async(make_world)(credits="1000000")
    return budget, biller_on(budget), world, await sync_to_async(world.snap)()


async def one_call(biller, world, snaps, output_tokens: int = 50):
    ctx = world.ctx(snaps=snaps)
    return await biller.settle(ctx, await biller.admit(ctx), served(ctx, 10, output_tokens))


@pytest.fixture
def prefix(transactional_db):
    prefix = f"{settings.REDIS_PREFIX}{uuid.uuid4().hex[:6]}:"
    yield prefix
    if settings.REDIS_URL:
        from billing.budget_redis import RedisBudget

        RedisBudget(settings.REDIS_URL, prefix, leases=False).delete_all_keys()
    close_sync_thread_connections()


class CountingFast:
    """Wraps the budget's pipelined client: counts the round trips a caller waits for
    (`evalsha`) and the commands only sent (`evalsha_now`)."""

    def __init__(self, fast):
        self.fast, self.awaited, self.sent = fast, 0, 0

    async def evalsha(self, *args):
        self.awaited += 1
        return await self.fast.evalsha(*args)

    def evalsha_now(self, *args):
        self.sent += 1
        return self.fast.evalsha_now(*args)


async def test_leased_calls_wait_for_no_redis_round_trip_and_count_every_credit(prefix):
    # given a VE with a large balance (a lease is 64 call estimates, far below 1/16 of it)
    budget, biller, world, snaps = await leased(prefix)
    first = world.ctx(snaps=snaps)
    await biller.settle(first, await biller.admit(first), served(first))  # takes the lease
    counting = CountingFast(budget._fast())
    budget._fast = lambda: counting
    # when 50 more calls run one after another
    balances = []
    for i in range(50):
        ctx = world.ctx(snaps=snaps)
        admission = await biller.admit(ctx)
        assert admission.reserved >= HOLD  # the full estimate, from the lease
        settlement = await biller.settle(ctx, admission, served(ctx, 10, 10 + i))
        balances.append((settlement.charge, settlement.balance))
    # then no call waited for Redis: each settle was written and not awaited
    assert counting.awaited == 0 and counting.sent == 50
    # each balance header is the previous one minus this charge (one process, exact)
    for (_, before), (charge, after) in zip(balances, balances[1:]):
        assert after == before - charge
    # and once the lease is back, counters, ledger and request log agree to the micro-credit
    await budget.release_leases()
    await biller.flush()
    counters = await budget.counters(world.ve.pk)
    ledger_budget, ledger_spend = await sync_to_async(ledger_sums)(world.ve.pk)
    assert (counters.budget, counters.spend, counters.reserved) == (ledger_budget, ledger_spend, 0)
    assert balances[-1][1] == ledger_budget - ledger_spend
    assert await LedgerEntry.objects.filter(virtual_endpoint_id=world.ve.pk, kind="charge").acount() == 51
    assert await RequestLog.objects.filter(virtual_endpoint_id=world.ve.pk).acount() == 51
    ve = await VirtualEndpoint.objects.aget(pk=world.ve.pk)
    assert ve.credit_spend == ledger_spend


async def test_the_lease_holds_its_slice_in_redis_and_returns_what_is_left(prefix):
    budget = redis_budget(prefix, seconds=0.1)
    biller = biller_on(budget)
    world = await sync_to_async(make_world)(credits="1000000")
    ctx = await sync_to_async(world.ctx)()
    admission = await biller.admit(ctx)
    # the slice is reserved in Redis as a whole: 64 estimates, at most 1/16 of the balance
    during = await budget.counters(world.ve.pk)
    assert during.reserved == 64 * admission.reserved <= during.available // 15
    await biller.settle(ctx, admission, served(ctx))
    # when the lease time passes with no call in flight, then the rest goes back
    await asyncio.sleep(0.3)
    await budget.leases.settled()
    after = await budget.counters(world.ve.pk)
    assert after.reserved == 0 and after.spend == 1_000_000 + 10_000_000


async def test_a_retired_lease_is_returned_by_its_last_call_in_flight(prefix):
    budget, biller, world, snaps = await leased(prefix, seconds=0.05)
    # given calls admitted from a lease that retires while they run
    calls = [world.ctx(snaps=snaps) for _ in range(3)]
    admissions = [await biller.admit(c) for c in calls]
    await asyncio.sleep(0.15)
    assert (await budget.counters(world.ve.pk)).reserved > 0  # still held: calls in flight
    # when they settle, then the last one returns the rest of the slice
    for c, a in zip(calls, admissions):
        await biller.settle(c, a, served(c))
    await budget.leases.settled()
    after = await budget.counters(world.ve.pk)
    assert (after.reserved, after.spend) == (0, 3 * 11_000_000)


async def test_small_balances_and_key_limits_are_held_per_call(prefix):
    budget = redis_budget(prefix)
    biller = biller_on(budget)
    # a balance below 64 call estimates: per-call holds, no slice
    small = await sync_to_async(make_world)(credits="1000")
    ctx = await sync_to_async(small.ctx)()
    admission = await biller.admit(ctx)
    assert (await budget.counters(small.ve.pk)).reserved == admission.reserved
    await biller.settle(ctx, admission, served(ctx))
    assert budget.leases._calls == {}
    # a key with its own credit limit, on a large balance: per call, against the key too
    limited = await sync_to_async(make_world)(credits="1000000", key_kw={"credit_limit": 100_000_000})
    ctx = await sync_to_async(limited.ctx)()
    admission = await biller.admit(ctx)
    assert await budget.key_counters(limited.key.pk) == (0, admission.reserved)
    assert (await budget.counters(limited.ve.pk)).reserved == admission.reserved
    await biller.settle(ctx, admission, served(ctx))
    assert await budget.key_counters(limited.key.pk) == (11_000_000, 0)


async def test_two_processes_with_leases_never_overspend(prefix):
    # given two gateway processes (two budgets, one Redis) and a VE whose balance starts
    # large enough for leases (~140 call estimates) and runs dry under load
    budgets = [redis_budget(prefix), redis_budget(prefix)]
    billers = [biller_on(b) for b in budgets]
    world = await sync_to_async(make_world)(credits="3100")
    snaps = await sync_to_async(world.snap)()
    outcome = {"charged": 0, "exhausted": 0, "leased": 0}

    async def call(i):
        biller = billers[i % 2]
        ctx = world.ctx(snaps=snaps)
        try:
            admission = await biller.admit(ctx)
        except BudgetExhausted:
            outcome["exhausted"] += 1
            return
        outcome["leased"] += ctx.request_id in biller.budget.leases._calls
        await asyncio.sleep(random.uniform(0.01, 0.05))
        most = admission.max_tokens or ctx.body["max_tokens"]  # None: not clamped, the client's limit stands
        settlement = await biller.settle(ctx, admission, served(ctx, 10, random.randint(16, most)))
        assert settlement.charge > 0
        outcome["charged"] += 1

    # when 400 calls run at once, half on each
    await asyncio.gather(*(call(i) for i in range(400)))
    for budget, biller in zip(budgets, billers):
        await budget.release_leases()
        await biller.flush()
    # then leases served part of it, every charge is in the ledger once, and the VE never
    # spent more than its budget
    assert outcome["leased"] > 0
    assert outcome["charged"] + outcome["exhausted"] == 400
    ledger_budget, ledger_spend = await sync_to_async(ledger_sums)(world.ve.pk)
    assert ledger_spend <= ledger_budget
    charges = await LedgerEntry.objects.filter(virtual_endpoint_id=world.ve.pk, kind="charge").acount()
    assert charges == outcome["charged"] >= 100
    counters = await budgets[0].counters(world.ve.pk)
    assert (counters.budget, counters.spend, counters.reserved) == (ledger_budget, ledger_spend, 0)
    # and what is left can be spent: no slice stayed behind
    if ledger_budget - ledger_spend >= HOLD:
        ctx = world.ctx(snaps=snaps)
        admission = await billers[1].admit(ctx)
        assert admission.reserved >= ledger_budget - ledger_spend or admission.reserved >= HOLD
        await billers[1].settle(ctx, admission, Outcome(route=None))


async def test_a_dead_process_lease_is_released_by_the_expired_holds_sweep(prefix, settings):
    settings.GATEWAY_TOTAL_TIMEOUT = -120  # holds (and slices) expire in the past
    budget = redis_budget(prefix, seconds=30)
    biller = biller_on(budget)
    world = await sync_to_async(make_world)(credits="1000000")
    ctx = await sync_to_async(world.ctx)()
    admission = await biller.admit(ctx)
    await biller.settle(ctx, admission, served(ctx))
    await budget.leases.settled()
    assert (await budget.counters(world.ve.pk)).reserved > 0
    # when the process is gone (its lease never returned) and the sweep runs
    other = redis_budget(prefix)
    released = await sync_to_async(other.release_expired)()
    # then the slice is free again; the charge settled before stays
    assert released == 1
    after = await other.counters(world.ve.pk)
    assert (after.reserved, after.spend) == (0, 11_000_000)


async def test_redis_losing_the_lease_stops_the_process_taking_from_it(prefix):
    budget, biller, world, snaps = await leased(prefix, seconds=60)
    await one_call(biller, world, snaps)  # takes the lease
    await biller.flush()
    # when Redis comes back empty while the process holds a lease
    assert budget.delete_all_keys() > 0
    ctx = world.ctx(snaps=snaps)
    admission = await biller.admit(ctx)  # still from the local lease
    await biller.settle(ctx, admission, served(ctx))
    await biller.flush()
    # then the settle learnt that the lease is gone: the next call gets a new hold from Redis
    assert budget.leases._state(world.ve.pk).lease is None
    third = world.ctx(snaps=snaps)
    await biller.settle(third, await biller.admit(third), served(third))
    await budget.release_leases()
    await biller.flush()
    # and the counters rebuilt from the ledger hold every charge, within the budget
    ledger_budget, ledger_spend = await sync_to_async(ledger_sums)(world.ve.pk)
    counters = await budget.counters(world.ve.pk)
    assert ledger_spend == 3 * 11_000_000 <= ledger_budget
    assert (counters.budget, counters.spend, counters.reserved) == (ledger_budget, ledger_spend, 0)


async def test_shutdown_returns_leases_and_records_every_call(prefix):
    budget = redis_budget(prefix, seconds=60)
    biller = biller_on(budget)
    biller.writer.interval = 3600  # nothing written on its own
    world = await sync_to_async(make_world)(credits="1000000")
    snaps = await sync_to_async(world.snap)()
    for _ in range(5):
        ctx = world.ctx(snaps=snaps)
        await biller.settle(ctx, await biller.admit(ctx), served(ctx))
    # when the process shuts down cleanly
    started = time.monotonic()
    await biller.close()
    # then the slice is back and every call is in the ledger and the log
    assert time.monotonic() - started < 5
    assert (await budget.counters(world.ve.pk)).reserved == 0
    assert await LedgerEntry.objects.filter(virtual_endpoint_id=world.ve.pk, kind="charge").acount() == 5
    assert await RequestLog.objects.filter(virtual_endpoint_id=world.ve.pk).acount() == 5


async def test_a_call_too_big_for_the_slice_is_held_per_call_and_the_slice_stays(prefix):
    budget, biller, world, snaps = await leased(prefix)
    small = world.ctx(snaps=snaps)
    small_admission = await biller.admit(small)
    lease = budget.leases._state(world.ve.pk).lease
    assert lease is not None and small.request_id in budget.leases._calls
    # when a call asks for far more output than the slice was sized for
    big = world.ctx(snaps=snaps, max_tokens=50_000)
    big_admission = await biller.admit(big)
    # then it holds its own estimate in Redis, and the slice keeps serving small calls
    assert big.request_id not in budget.leases._calls and big_admission.reserved * 4 > lease.granted
    assert budget.leases._state(world.ve.pk).lease is lease and lease.open
    during = await budget.counters(world.ve.pk)
    assert during.reserved == lease.granted + big_admission.reserved
    settlement = await biller.settle(big, big_admission, served(big, 10, 1000))
    await biller.settle(small, small_admission, served(small))
    await budget.release_leases()
    await biller.flush()
    counters = await budget.counters(world.ve.pk)
    ledger_budget, ledger_spend = await sync_to_async(ledger_sums)(world.ve.pk)
    assert (counters.spend, counters.reserved) == (ledger_spend, 0)
    assert settlement.balance == ledger_budget - ledger_spend + 11_000_000  # before the small one settled


async def test_a_settle_whose_reply_was_lost_is_sent_again_and_applied_once(prefix):
    budget, biller, world, snaps = await leased(prefix, seconds=60)
    await one_call(biller, world, snaps)  # takes the lease
    await biller.flush()
    # when the connection drops right after a settle was written (Redis ran it, the reply is lost)
    ctx = world.ctx(snaps=snaps)
    await biller.settle(ctx, await biller.admit(ctx), served(ctx))
    budget._fast()._proto.fail(ConnectionError("dropped by the test"))
    # and another settle never reaches Redis at all
    lost = world.ctx(snaps=snaps)
    admission = await biller.admit(lost)
    fast = budget._fast()
    real_send = fast.evalsha_now

    def never_sent(*args):
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(ConnectionError("not sent"))
        return fut

    fast.evalsha_now = never_sent
    await biller.settle(lost, admission, served(lost))
    fast.evalsha_now = real_send
    await biller.flush()
    # then each is in Redis and in the ledger exactly once
    counters = await budget.counters(world.ve.pk)
    assert counters.spend == 3 * 11_000_000
    ledger_budget, ledger_spend = await sync_to_async(ledger_sums)(world.ve.pk)
    assert ledger_spend == 3 * 11_000_000
    await budget.release_leases()
    assert (await budget.counters(world.ve.pk)).reserved == 0


async def test_usage_above_its_share_never_eats_the_other_calls_shares(prefix):
    # given a small slice (1/16 of 2,000 credits) serving two calls, and nothing free
    # besides it (other processes hold the rest)
    budget = redis_budget(prefix, seconds=60)
    biller = biller_on(budget)
    world = await sync_to_async(make_world)(credits="2000")
    snaps = await sync_to_async(world.snap)()
    a, b = world.ctx(snaps=snaps), world.ctx(snaps=snaps)
    admission_a, admission_b = await biller.admit(a), await biller.admit(b)
    assert a.request_id in budget.leases._calls and b.request_id in budget.leases._calls
    free = (await budget.counters(world.ve.pk)).available
    budget._sync.hincrby(budget.k_ve(world.ve.pk), "reserved", free)
    try:
        # when A reports far more usage than its hold
        settled_a = await biller.settle(a, admission_a, served(a, 10, 10_000))
        settled_b = await biller.settle(b, admission_b, served(b))
        await biller.flush()
    finally:
        budget._sync.hincrby(budget.k_ve(world.ve.pk), "reserved", -free)
    # then A is capped at its own share and B still pays in full from its own
    rows = {r.request_id: r async for r in RequestLog.objects.filter(virtual_endpoint_id=world.ve.pk)}
    assert rows[a.request_id].charge == admission_a.reserved < settled_a.charge
    assert rows[a.request_id].price_snapshot["uncollected"] > 0
    assert rows[b.request_id].charge == settled_b.charge == 11_000_000
    ledger_budget, ledger_spend = await sync_to_async(ledger_sums)(world.ve.pk)
    assert ledger_spend == admission_a.reserved + 11_000_000 <= ledger_budget


async def test_a_client_gone_during_a_rate_limited_admission_leaves_no_hold(prefix):
    class SlowLimiter:
        async def check(self, ve, key, tokens):
            await asyncio.sleep(10)

    budget = redis_budget(prefix, seconds=60)
    biller = RealBiller(budget=budget, limiter=SlowLimiter(), writer=LogWriter(interval=0.05), rates=RateBook())
    world = await sync_to_async(make_world)(credits="1000000", ve_kw={"requests_per_minute": 1000})
    ctx = await sync_to_async(world.ctx)()
    # when the call is cancelled while its rate limit is being checked
    task = asyncio.ensure_future(biller.admit(ctx))
    await asyncio.sleep(0.2)
    assert ctx.request_id in budget.leases._calls  # its share was taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    # then the share went back: nothing in flight, and the slice returns whole
    assert budget.leases._calls == {}
    await budget.release_leases()
    after = await budget.counters(world.ve.pk)
    assert (after.reserved, after.spend) == (0, 0)


async def test_reading_counters_waits_only_for_settles_sent_before(prefix):
    budget = redis_budget(prefix)
    world = await sync_to_async(make_world)(credits="1000000")
    await budget.counters(world.ve.pk)
    budget.leases._pending.add(budget.leases.sent + 1)  # a settle sent after the read began
    try:
        counters = await asyncio.wait_for(budget.counters(world.ve.pk), 2)
    finally:
        budget.leases._pending.clear()
    assert counters.budget == 1_000_000_000_000


def test_the_sweep_never_creates_counters_for_a_vanished_ve(prefix, settings):
    budget = redis_budget(prefix)
    settings.GATEWAY_TOTAL_TIMEOUT = -120
    world = make_world(credits="1000000")

    async def hold():
        ctx = world.ctx(snaps=snaps)
        return await budget.reserve(request_id=ctx.request_id, ve_id=world.ve.pk, key_id=world.key.pk,
                                    full=5_000_000, minimum=1, key_limit=5_000_000_000)  # a per-call hold

    snaps = world.snap()
    assert asyncio.run(hold()) == 5_000_000
    # when Redis loses the VE's counters (evicted) and the sweep releases the hold
    budget._sync.delete(budget.k_ve(world.ve.pk), budget.k_key(world.key.pk))
    assert budget.release_expired() == 1
    # then no counters with a negative reservation were made up: the next call rebuilds them
    assert not budget._sync.exists(budget.k_ve(world.ve.pk), budget.k_key(world.key.pk))


async def test_the_settle_command_is_byte_for_byte_what_pack_builds(prefix):
    # given a leased VE, with a key and without one
    from billing.leases import SETTLE_LEASE
    from billing.resp import pack, script_sha

    budget, biller, world, snaps = await leased(prefix)
    await one_call(biller, world, snaps)  # takes the lease
    fast = budget._fast()
    real_send, packed = fast.evalsha_now, []

    def capture(script, keys, args, data=None):
        packed.append(data)
        return real_send(script, keys, args, data)

    fast.evalsha_now = capture
    leases = budget.leases
    for key_id, request_id in ((world.key.pk, "req_plain"), (None, "req_ü€")):
        ctx = world.ctx(snaps=snaps)
        ctx.request_id = request_id
        admission = await biller.admit(ctx)
        state, lease, held = leases._calls[request_id]
        before = int(time.time())
        leases.settle(request_id=request_id, key_id=key_id, charge=123_456_789, on_confirmed=lambda c: None)
        # then the cached parts, the lease id and the call's numbers make the same bytes as
        # pack() of the script's keys and arguments (the second it was sent in: one of two)
        expected = []
        for ts in (before, int(time.time())):
            call = (state, lease, key_id, 123_456_789, ts, False, request_id, held, None, 0)
            keys, args = leases._keys_args(call)
            expected.append(pack([b"EVALSHA", script_sha(SETTLE_LEASE), len(keys), *keys, *args]))
        assert packed[-1] in expected
        assert admission.reserved == held
    fast.evalsha_now = real_send
    await budget.release_leases()
    await biller.flush()


async def test_rows_of_confirmed_settles_are_queued_together_after_the_answers(prefix):
    """A reply from Redis no longer builds its row at once (at concurrency 1 that work landed
    on the next call's path): the rows of RECORD_DELAY's replies are built in one batch."""
    from billing import biller as biller_module

    budget, biller, world, snaps = await leased(prefix)
    await one_call(biller, world, snaps)  # takes the lease
    await biller.flush()
    added = []
    original = biller.writer.add
    biller.writer.add = lambda **kw: (added.append(asyncio.get_running_loop().time()), original(**kw))[1]
    for _ in range(5):
        await one_call(biller, world, snaps)
    await budget.leases.settled()  # every reply is in ...
    assert added == [] and biller._unrecorded == 5  # ... and no row built yet
    await asyncio.sleep(biller_module.RECORD_DELAY * 3)
    assert len(added) == 5 and max(added) - min(added) < biller_module.RECORD_DELAY  # one batch
    assert biller._unrecorded == 0
    await budget.release_leases()
    await biller.flush()
    assert await RequestLog.objects.filter(virtual_endpoint_id=world.ve.pk).acount() == 6
