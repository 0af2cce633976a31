"""Redis mode's request-log spool (billing/logspool.py): the gateway pushes rows to a
Redis list, the drain (Celery's flush_request_logs) writes them to SQL exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import OperationalError

from billing.biller import RealBiller
from billing.gate import Outcome
from billing.ledger import ledger_sums
from billing import logspool
from billing.logspool import RedisLogSpool, decode, encode
from billing.models import LedgerEntry, RequestLog
from billing.pricing import RateBook
from billing.ratelimit import MemoryLimiter
from billing.requestlog import PendingCharge
from gateway.adapters.base import Usage
from tests.billing.conftest import make_budget, make_world

needs_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="the spool is Redis mode's writer: needs REDIS_URL "
                                                                 "(the PostgreSQL + Redis pass runs these)")


@pytest.fixture
def redis_budget(transactional_db):
    budget = make_budget("redis")
    yield budget
    budget.delete_all_keys()


@pytest.fixture
def spool(redis_budget):
    return RedisLogSpool(redis_budget._fast, redis_budget._sync, redis_budget.p, interval=0.05)


@pytest.fixture
def spool_biller(redis_budget, spool):
    return RealBiller(budget=redis_budget, limiter=MemoryLimiter(), writer=spool, rates=RateBook())


async def _call(biller, world, output=10):
    ctx = await sync_to_async(world.ctx)()
    admission = await biller.admit(ctx)
    outcome = Outcome(route=ctx.model.routes[0], usage=Usage(input_tokens=10, output_tokens=output),
                      attempts=[{"physical_model_id": world.physical.pk, "status": 200}])
    return ctx, await biller.settle(ctx, admission, outcome)


def test_a_record_round_trips_decimals_times_and_the_charge():
    row = {"request_id": "r1", "cost": Decimal("0.0000123456"), "audio_seconds": Decimal("1.250"),
           "started_at": datetime(2026, 11, 24, 5, 30, 1, 123456, tzinfo=UTC), "price_snapshot": {"rate": "100"},
           "attempts": [{"status": 200}], "charge": 7}
    charge = PendingCharge(3, None, 7, "r1", {"rate": "100"})
    assert decode(encode(row, charge)) == (row, charge)
    assert decode(encode(row, None)) == (row, None)
    # the biller's charge snapshot is the row's less "reserved": encoded once, decoded equal
    row["price_snapshot"] = {"rate": "100", "reserved": 900}
    assert decode(encode(row, charge)) == (row, charge)
    assert encode(row, charge).count('"rate"') == 1
    # a charge with a snapshot of its own keeps it
    other = PendingCharge(3, None, 7, "r1", {"rate": "101"})
    assert decode(encode(row, other)) == (row, other)


def _v1(row: dict, charge) -> str:
    """A record as the spool wrote them before rows became lists (some may still be queued)."""
    import json

    row = dict(row, cost=str(row["cost"]), audio_seconds=str(row["audio_seconds"]),
               started_at=row["started_at"].isoformat())
    snapshot = 0 if charge.rate_snapshot == {k: v for k, v in row["price_snapshot"].items() if k != "reserved"} \
        else charge.rate_snapshot
    return json.dumps([row, [charge.ve_id, charge.key_id, charge.amount, charge.request_id, snapshot]],
                      separators=(",", ":"))


def test_a_log_row_is_encoded_as_its_values_and_decodes_as_the_object_did(db):
    from billing.biller import log_row
    from billing.pricing import price_call, route_rates
    from tests.billing.conftest import make_world

    # given the row and charge the biller makes for a call (log_row's fields, in its order)
    world = make_world(credits="100")
    ctx = world.ctx()
    ctx.started_at = 1_790_000_000.123456
    route = ctx.model.routes[0]
    priced = price_call(route_rates(ctx.model, route, Decimal("1.5"), RateBook().rate(0, "CREDITS")),
                        units_from_tokens(12, 9))
    snapshot = dict(priced.snapshot)
    outcome = Outcome(route=route, usage=Usage(input_tokens=12, output_tokens=9),
                      attempts=[{"status": 200, "é": "\"x"}])
    row = log_row(ctx, outcome, priced, priced.charge, snapshot, 1234)
    charge = PendingCharge(world.ve.pk, world.key.pk, priced.charge, ctx.request_id, snapshot)
    assert tuple(row) == logspool._ROW_FIELDS
    # when it is encoded
    raw = encode(row, charge)
    # then as a list of values, and it decodes to what the object form decoded to: the same
    # values, types and key order, the charge's snapshot included
    assert raw.startswith('[["') and '"request_id"' not in raw
    new_row, new_charge = decode(raw)
    old_row, old_charge = decode(_v1(row, charge))
    assert new_row == old_row == row and list(new_row) == list(old_row) == list(row)
    assert [type(v) for v in new_row.values()] == [type(v) for v in old_row.values()]
    assert new_charge == old_charge == charge and list(new_charge.rate_snapshot) == list(old_charge.rate_snapshot)
    # and a row of other fields is still an object
    other = {"request_id": "x", "cost": Decimal("1")}
    assert decode(encode(other, None)) == (other, None) and encode(other, None).startswith('[{"request_id"')
    # and a list of the wrong length is refused, not misnamed
    with pytest.raises(ValueError):
        decode('[["a", 1], null]')


def units_from_tokens(input_tokens: int, output_tokens: int):
    from billing.pricing import Units

    return Units(input=input_tokens, output=output_tokens)


@needs_redis
async def test_calls_reach_sql_only_through_the_drain_and_exactly_once(spool_biller, spool):
    # given three settled calls
    world = await sync_to_async(make_world)()
    ids = [(await _call(spool_biller, world))[0].request_id for _ in range(3)]
    # when the gateway loop's push task has run (no flush asked for)
    for _ in range(100):
        if await sync_to_async(spool.queued)() == 3:
            break
        await asyncio.sleep(0.02)
    # then the rows wait in Redis, none in SQL
    assert await sync_to_async(spool.queued)() == 3
    assert await RequestLog.objects.acount() == 0
    # when Celery's task drains (twice: the second finds nothing)
    from billing import requestlog, tasks

    requestlog._writer, saved = spool, requestlog._writer
    try:
        written = await sync_to_async(tasks.flush_request_logs)()
        again = await sync_to_async(tasks.flush_request_logs)()
    finally:
        requestlog._writer = saved
    # then rows and ledger entries are in SQL once, and the counters equal the ledger
    assert (written, again) == (3, 0)
    assert sorted([r async for r in RequestLog.objects.values_list("request_id", flat=True)]) == sorted(ids)
    charges = [e async for e in LedgerEntry.objects.filter(kind="charge").values_list("idempotency_key", "amount")]
    assert sorted(k for k, _ in charges) == sorted(ids) and all(a > 0 for _, a in charges)
    logged = {r.request_id: r.charge async for r in RequestLog.objects.all()}
    assert all(logged[k] == a for k, a in charges)
    counters = await spool_biller.budget.counters(world.ve.pk)
    assert (counters.budget, counters.spend) == await sync_to_async(ledger_sums)(world.ve.pk)
    assert await sync_to_async(spool.queued)() == 0


@needs_redis
async def test_a_drainer_that_died_before_trimming_leaves_nothing_doubled(spool_biller, spool, monkeypatch):
    world = await sync_to_async(make_world)()
    for _ in range(2):
        await _call(spool_biller, world)
    await spool.push()
    # given a drain that commits and dies before LTRIM
    real_eval = spool.sync.eval

    def dies_at_trim(script, *args):
        if script == logspool._TRIM:
            raise ConnectionError("killed")
        return real_eval(script, *args)

    monkeypatch.setattr(spool.sync, "eval", dies_at_trim)
    with pytest.raises(ConnectionError):
        await sync_to_async(spool.drain)()
    monkeypatch.setattr(spool.sync, "eval", real_eval)
    # when the next drain writes the same batch again
    written = await sync_to_async(spool.drain)()
    # then each call is one row and one ledger entry; the list is empty
    assert written == 2
    assert await RequestLog.objects.acount() == 2
    assert await LedgerEntry.objects.filter(kind="charge").acount() == 2
    spend = sum([a async for a in LedgerEntry.objects.filter(kind="charge").values_list("amount", flat=True)])
    assert (await spool_biller.budget.counters(world.ve.pk)).spend == spend
    assert await sync_to_async(spool.queued)() == 0


@needs_redis
async def test_a_database_error_keeps_the_rows_in_redis(spool_biller, spool, monkeypatch):
    world = await sync_to_async(make_world)()
    await _call(spool_biller, world)
    await spool.push()

    def down(rows, charges):
        raise OperationalError("database is down")

    monkeypatch.setattr("billing.requestlog.write_batch", down)
    with pytest.raises(OperationalError):
        await sync_to_async(spool.drain)()
    assert await sync_to_async(spool.queued)() == 1
    monkeypatch.undo()
    assert await sync_to_async(spool.drain)() == 1
    assert await RequestLog.objects.acount() == 1


@needs_redis
async def test_one_drainer_at_a_time(spool_biller, spool):
    world = await sync_to_async(make_world)()
    await _call(spool_biller, world)
    await spool.push()
    # given another drainer holds the lock
    await sync_to_async(spool.sync.set)(spool.lock_key, "someone-else", ex=30)
    # then this one writes nothing and leaves the lock alone
    assert await sync_to_async(spool.drain)() == 0
    assert await sync_to_async(spool.sync.get)(spool.lock_key) == b"someone-else"
    assert await sync_to_async(spool.queued)() == 1
    await sync_to_async(spool.sync.delete)(spool.lock_key)
    assert await sync_to_async(spool.drain)() == 1


@needs_redis
async def test_rows_wait_in_memory_while_redis_is_away(spool_biller, spool, monkeypatch):
    world = await sync_to_async(make_world)()
    await _call(spool_biller, world)
    real_fast = spool.fast

    def away():
        raise ConnectionError("Redis is away")

    spool.fast = away
    with pytest.raises(ConnectionError):
        await spool.push()
    assert spool.pending() == 1
    # when Redis is back, the next push delivers the row
    spool.fast = real_fast
    assert await spool.push() == 1
    assert await sync_to_async(spool.queued)() == 1


@needs_redis
async def test_the_exit_hook_hands_rows_to_redis_without_sql(spool_biller, spool):
    from billing.requestlog import _flush_at_exit

    world = await sync_to_async(make_world)()
    await _call(spool_biller, world)
    task = spool._tasks.get(asyncio.get_running_loop())
    task.cancel()  # the loop is gone at exit: only the hook is left
    await sync_to_async(_flush_at_exit)(spool)
    assert spool.pending() == 0 and await sync_to_async(spool.queued)() == 1
    assert await RequestLog.objects.acount() == 0


def _restart_redis(budget) -> None:
    """What a Redis restarted without persistence looks like to us: our keys are gone
    (the spool's list, totals and epoch are under the budget's prefix in these tests)."""
    assert budget.delete_all_keys() > 0


@needs_redis
async def test_a_redis_restart_before_the_drain_loses_no_charge(spool_biller, spool, redis_budget):
    # given calls pushed to Redis and not drained yet
    world = await sync_to_async(make_world)()
    before = [(await _call(spool_biller, world))[0].request_id for _ in range(3)]
    await spool.push()
    # when Redis comes back empty, and calls go on (the first one rebuilds the counters)
    _restart_redis(redis_budget)
    after = [(await _call(spool_biller, world))[0].request_id for _ in range(2)]
    await spool.push()  # sees the new epoch: what it kept goes again
    await sync_to_async(spool.drain)()
    # then every call is in the log and every charge in the ledger, once
    logged = sorted([r async for r in RequestLog.objects.values_list("request_id", flat=True)])
    assert logged == sorted(before + after)
    charged = sorted([k async for k in LedgerEntry.objects.filter(kind="charge").values_list("idempotency_key",
                                                                                           flat=True)])
    assert charged == sorted(before + after)


@needs_redis
async def test_what_was_drained_is_not_kept_in_memory(spool_biller, spool):
    world = await sync_to_async(make_world)()
    await _call(spool_biller, world)
    await spool.push()
    assert sum(len(r) for _, r in spool._retained) == 1
    await sync_to_async(spool.drain)()
    # when the next push learns the drained total
    await _call(spool_biller, world)
    await spool.push()
    # then only the undrained record is kept
    assert sum(len(r) for _, r in spool._retained) == 1


@needs_redis
async def test_a_drain_never_trims_records_pushed_after_a_restart(spool_biller, spool, redis_budget, monkeypatch):
    world = await sync_to_async(make_world)()
    await _call(spool_biller, world)
    await spool.push()
    # given Redis restarts while a drainer writes its batch, and a new record arrives
    from billing import requestlog

    real_write = requestlog.write_batch

    async def newcomer():
        await _call(spool_biller, world)
        await spool.push()

    restarted = []

    def write_then_restart(rows, charges):
        real_write(rows, charges)
        if not restarted:  # once (the newcomer's rebuild drains too)
            restarted.append(1)
            _restart_redis(redis_budget)
            asyncio.run_coroutine_threadsafe(newcomer(), loop).result(10)

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(requestlog, "write_batch", write_then_restart)
    await sync_to_async(spool.drain, thread_sensitive=False)()
    monkeypatch.undo()
    # then the newcomer (and the first call, pushed again) wait in the new list
    assert await sync_to_async(spool.queued)() >= 1
    await sync_to_async(spool.drain)()
    assert await RequestLog.objects.acount() == 2


@needs_redis
def test_records_are_encoded_when_pushed_and_a_bad_one_does_not_sink_the_batch(spool, caplog):
    # given a good record and one JSON cannot encode, buffered as the gateway adds them
    good = {"request_id": "good-1", "price_snapshot": {}}
    spool.add(row={"request_id": "bad-1", "price_snapshot": {"x": object()}})
    spool.add(row=good)
    assert spool.pending() == 2
    # when the buffer is pushed
    spool.push_sync()
    # then the good one is in Redis, the bad one was dropped loudly
    queued = [decode(raw)[0]["request_id"] for raw in spool.sync.lrange(spool.key, 0, -1)]
    assert queued == ["good-1"]
    assert "bad-1" in caplog.text and "cannot be encoded" in caplog.text


def test_a_record_pushed_before_reasoning_tokens_still_decodes():
    import json

    from billing import logspool

    row = {name: 0 for name in logspool._ROW_FIELDS}
    row.update(request_id="old-1", audio_seconds=Decimal(0), cost=Decimal("0.5"), attempts=[], price_snapshot={},
               started_at=datetime(2026, 12, 1, tzinfo=UTC), reasoning_tokens=7)
    values, charge = json.loads(logspool.encode(row, None))
    assert logspool.decode(json.dumps([values, charge]))[0]["reasoning_tokens"] == 7
    legacy = json.dumps([values[:-1], charge])  # what a gateway of the previous release pushed
    decoded = logspool.decode(legacy)[0]
    assert decoded["request_id"] == "old-1" and decoded["reasoning_tokens"] == 0
