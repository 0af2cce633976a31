"""Issue 15: losing Redis must not let a VE spend twice.

Each test runs its OWN redis-server on a free port (never the shared one: these tests
FLUSHALL and restart it). Two "gateway processes" are two billers, each with its own
budget and spool (its own memory), on that one Redis and the test database.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time

import pytest
import redis
from asgiref.sync import sync_to_async

from billing import requestlog
from billing.biller import RealBiller
from billing.budget_redis import RedisBudget
from billing.gate import BudgetExhausted, Outcome
from billing.ledger import ledger_sums
from billing.logspool import RedisLogSpool
from billing.models import LedgerEntry, RequestLog
from billing.pricing import RateBook
from billing.ratelimit import MemoryLimiter
from gateway.adapters.base import Usage
from tests.billing.conftest import close_sync_thread_connections, make_world

if shutil.which("redis-server") is None:  # pragma: no cover - the dev image has it
    pytest.fail("redis-server is needed for the fault-injection tests", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(500):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.01)
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def flushall(self) -> None:
        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def restart_empty(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def own_redis(tmp_path, transactional_db, settings):
    settings.BILLING_REDIS_LOSS_GRACE = 0.5  # a short grace: the gateways tick every 0.02 s here
    server = OwnRedis(tmp_path)
    yield server
    server.stop()
    close_sync_thread_connections()


def _process(url: str) -> RealBiller:
    budget = RedisBudget(url, "t15:")
    spool = RedisLogSpool(budget._fast, budget._sync, budget.p, interval=0.02)
    return RealBiller(budget=budget, limiter=MemoryLimiter(), writer=spool, rates=RateBook())


async def _call(biller: RealBiller, world) -> bool:
    """One call of 10 input + 100 output tokens (21 credits); False when refused."""
    ctx = await sync_to_async(world.ctx)()
    try:
        admission = await biller.admit(ctx)
    except BudgetExhausted:
        return False
    outcome = Outcome(route=ctx.model.routes[0], usage=Usage(input_tokens=10, output_tokens=100),
                      attempts=[{"physical_model_id": world.physical.pk, "status": 200}])
    await biller.settle(ctx, admission, outcome)
    return True


async def _serve(biller, world, calls: int, concurrency: int = 3) -> int:
    served = 0
    for start in range(0, calls, concurrency):
        served += sum(await asyncio.gather(*[_call(biller, world) for _ in range(min(concurrency, calls - start))]))
    return served


async def _drain_all(*billers) -> None:
    for b in billers:
        await b.budget.release_leases()
        await b.writer.push()
    await sync_to_async(billers[0].writer.drain)()


async def _invariants(biller, world, served: int) -> None:
    budget, spend = await sync_to_async(ledger_sums)(world.ve.pk)
    charges = await LedgerEntry.objects.filter(virtual_endpoint_id=world.ve.pk, kind="charge").acount()
    assert spend <= budget, f"ledger spend {spend} over budget {budget}"
    assert charges == served, "every served call has one ledger charge"
    assert await RequestLog.objects.filter(virtual_endpoint_id=world.ve.pk).acount() == served
    counters = await biller.budget.counters(world.ve.pk)
    assert (counters.budget, counters.spend, counters.reserved) == (budget, spend, 0)


@pytest.mark.parametrize("fault", ["flushall", "restart_empty"])
async def test_a_redis_loss_does_not_let_a_ve_spend_its_budget_twice(own_redis, fault):
    # given a VE of 210 credits (ten calls of 21) and two gateway processes; eight calls
    # were served, their charges still on the way to the ledger (pushed, not drained)
    world = await sync_to_async(make_world)(credits="210")
    a, b = _process(own_redis.url), _process(own_redis.url)
    assert await _serve(a, world, 6) == 6
    assert await _serve(b, world, 2) == 2
    await a.budget.release_leases()
    await b.budget.release_leases()
    await a.writer.push()
    await b.writer.push()
    assert await LedgerEntry.objects.filter(kind="charge").acount() == 0
    # when Redis loses everything, and B goes on serving (its first call rebuilds the counters)
    getattr(own_redis, fault)()
    after = await _serve(b, world, 12)
    # then B served only what was left, and the money adds up once every spool drained
    assert after == 2
    await _drain_all(a, b)
    await _invariants(b, world, 10)


async def test_two_drainers_never_trim_records_neither_wrote(own_redis, monkeypatch):
    # given six calls' records in the list
    world = await sync_to_async(make_world)(credits="1000")
    a, b = _process(own_redis.url), _process(own_redis.url)
    assert await _serve(a, world, 4, concurrency=1) == 4
    await a.budget.release_leases()
    await a.writer.push()
    # when drainer 1 reads and writes a batch, and meanwhile (the lock lost, as a FLUSHALL
    # drops it) drainer 2 drains the list and more records arrive
    real_write = requestlog.write_batch
    loop = asyncio.get_running_loop()
    once = []

    async def meanwhile():
        own_redis_client = redis.Redis(port=own_redis.port)
        own_redis_client.delete(a.writer.lock_key)
        own_redis_client.close()
        await sync_to_async(b.writer.drain, thread_sensitive=False)()
        assert await _serve(a, world, 2, concurrency=1) == 2
        await a.budget.release_leases()
        await a.writer.push()

    def write_then_race(rows, charges):
        real_write(rows, charges)
        if not once:
            once.append(1)
            asyncio.run_coroutine_threadsafe(meanwhile(), loop).result(20)

    monkeypatch.setattr(requestlog, "write_batch", write_then_race)
    await sync_to_async(a.writer.drain, thread_sensitive=False)()
    monkeypatch.undo()
    # then the two late records were not trimmed unwritten: a final drain writes them
    await _drain_all(a, b)
    await _invariants(a, world, 6)


def test_reconcile_records_spend_above_budget_and_suspends_the_ve(own_redis):
    from billing import reconcile
    from billing.budget import set_budget
    from billing.ledger import post_entry
    from billing.models_usage import DriftReport

    # given a ledger that charged more than the VE was ever given (what a lost Redis left)
    world = make_world(credits="210")
    budget, _ = ledger_sums(world.ve.pk)
    post_entry(virtual_endpoint=world.ve, kind="charge", amount=budget + 5_000_000, idempotency_key="over-1",
               access_key=world.key, request_id="over-1", update_counters=False)
    # when reconcile runs (twice: the second finds it already recorded)
    set_budget(RedisBudget(own_redis.url, "t15:"))
    try:
        reconcile.reconcile_all()
        reconcile.reconcile_all()
    finally:
        set_budget(None)
    # then the overspend is on record once, and the VE is suspended (the gateway refuses it)
    report = DriftReport.objects.get(virtual_endpoint_id=world.ve.pk, counter="overspend")
    assert (report.found, report.expected) == (budget + 5_000_000, budget)
    world.ve.refresh_from_db()
    assert world.ve.status == "suspended"
    assert world.snap()[0].status == "suspended"


async def test_a_rate_limited_ve_gets_503_when_redis_is_down(own_redis):
    from billing.ratelimit import RedisLimiter
    from gateway.errors import GatewayError

    # given a VE with rate limits, on a Redis budget and limiter
    world = await sync_to_async(make_world)(credits="1000", ve_kw={"requests_per_minute": 100})
    budget = RedisBudget(own_redis.url, "t15:")
    biller = RealBiller(budget=budget, limiter=RedisLimiter(own_redis.url, "t15:"),
                        writer=RedisLogSpool(budget._fast, budget._sync, budget.p), rates=RateBook())
    assert await _call(biller, world)
    # when Redis goes away
    own_redis.stop()
    try:
        ctx = await sync_to_async(world.ctx)()
        # then the call is refused as the spec says (503 billing_unavailable), never a 500
        with pytest.raises(GatewayError) as refused:
            await biller.admit(ctx)
        assert (refused.value.status, refused.value.code) == (503, "billing_unavailable")
    finally:
        own_redis.start()


def test_a_failing_ledger_listener_does_not_fail_the_posted_grant(transactional_db, caplog):
    from billing import ledger

    # given a listener that fails (as grant_applied does when Redis is away)
    def broken(entry):
        raise ConnectionError("redis away")

    world = make_world(credits="10")
    ledger.on_posted(broken)
    try:
        # when a grant is posted, then the caller sees it posted (no exception to retry on) ...
        posted = ledger.post_entry(virtual_endpoint=world.ve, kind="grant", amount=7_000_000,
                                   idempotency_key="grant-listener-1")
    finally:
        ledger._listeners.remove(broken)
    assert posted.created and LedgerEntry.objects.filter(idempotency_key="grant-listener-1").exists()
    # ... and the failure is in the log
    assert "ledger listener" in caplog.text and "failed" in caplog.text
