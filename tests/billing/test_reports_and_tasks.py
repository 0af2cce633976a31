"""Reports API, usage rollups, crash recovery of unposted charges, and Celery tasks run
by a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from billing.gate import Outcome
from billing.ledger import ledger_sums
from billing.models import LedgerEntry
from billing.models_usage import DriftReport, UsageRollup
from billing.usage import rollup_recent
from gateway.adapters.base import Usage
from routing.models import VirtualEndpoint
from routing.services import management_token_create
from tests.api.conftest import ApiClient
from tests.billing.conftest import make_world

pytestmark = pytest.mark.django_db(transaction=True)


async def _call(biller, world, run_id="", output=10):
    ctx = await sync_to_async(world.ctx)()
    ctx.run_id = run_id
    admission = await biller.admit(ctx)
    outcome = Outcome(route=ctx.model.routes[0], usage=Usage(input_tokens=10, output_tokens=output),
                      attempts=[{"physical_model_id": world.physical.pk, "status": 200}])
    return ctx, await biller.settle(ctx, admission, outcome)


async def test_reports_api_ledger_requests_usage(biller):
    # given two charged calls on one run and one on another
    world = await sync_to_async(make_world)()
    for run_id in ("run-a", "run-a", "run-b"):
        await _call(biller, world, run_id)
    await biller.flush()
    _, secret = await sync_to_async(management_token_create)(organization=world.org)
    api = ApiClient(secret)

    def get(path):
        response = api.get(path)
        assert response.status_code == 200, response.content
        return response.json()

    # when / then: the ledger, newest first, amounts in credits
    ledger = await sync_to_async(get)(f"/virtual-endpoints/{world.ve.public_id}/ledger")
    assert [row["kind"] for row in ledger] == ["charge", "charge", "charge", "grant"]
    assert ledger[0]["amount"] == "3" and ledger[-1]["amount"] == "1000"
    # requests of one run, with their attempts
    rows = await sync_to_async(get)(f"/requests?ve={world.ve.public_id}&run_id=run-a")
    assert len(rows) == 2 and rows[0]["attempts"][0]["status"] == 200 and rows[0]["charge"] == "3"
    # usage with margin (cost 3 credits, charge 3: markup 1)
    usage = await sync_to_async(get)(f"/usage?ve={world.ve.public_id}&group_by=logical_model")
    assert usage == [{"group": "chat", "requests": 3, "input_tokens": 30, "cached_input_tokens": 0,
                      "cache_creation_tokens": 0, "output_tokens": 30, "cost": "9", "charge": "9", "margin": "0"}]
    by_day = await sync_to_async(get)("/usage?group_by=day&from=2000-01-01T00:00:00Z")
    assert len(by_day) == 1 and by_day[0]["requests"] == 3
    # another organization sees nothing
    other = await sync_to_async(make_world)()
    _, other_secret = await sync_to_async(management_token_create)(organization=other.org)
    response = await sync_to_async(ApiClient(other_secret).get)(f"/virtual-endpoints/{world.ve.public_id}/ledger")
    assert response.status_code == 404


async def test_rollup_is_idempotent(biller):
    world = await sync_to_async(make_world)()
    for _ in range(2):
        await _call(biller, world)
    await biller.flush()
    # when rolled up twice (a retried task)
    await sync_to_async(rollup_recent)()
    await sync_to_async(rollup_recent)()
    # then one row per bucket and dimensions, not doubled
    hour = await UsageRollup.objects.aget(period="hour", requests__gt=0)
    assert (hour.requests, hour.charge, hour.output_tokens) == (2, 6_000_000, 20)
    assert hour.logical_model_id == world.model.pk and hour.physical_model_id == world.physical.pk
    assert await UsageRollup.objects.filter(period="day", requests=2).acount() == 1


async def test_charge_of_a_crashed_process_is_posted_from_redis(biller, budget):
    if budget.name != "redis":
        pytest.skip("SQL settle writes the ledger entry in the same transaction: nothing to recover")
    from billing import reconcile
    from billing.budget import set_budget
    from billing.budget_redis import RETAIN

    # given a charged call whose process died before its batch was written
    world = await sync_to_async(make_world)()
    ctx, settlement = await _call(biller, world)
    biller.writer._charges.clear()
    biller.writer._rows.clear()
    assert not await LedgerEntry.objects.filter(kind="charge").aexists()
    # when the reconciliation runs later
    set_budget(budget)
    try:
        posted = await sync_to_async(reconcile.post_unposted_charges)(time.time() + RETAIN + 1)
        drifts = await sync_to_async(reconcile.reconcile_all)()
    finally:
        set_budget(None)
    # then the charge is in the ledger once, and counters agree with it
    assert posted == 1 and drifts == []
    entry = await LedgerEntry.objects.aget(kind="charge")
    assert (entry.idempotency_key, entry.amount) == (ctx.request_id, settlement.charge)
    counters = await budget.counters(world.ve.pk)
    assert (counters.budget, counters.spend) == await sync_to_async(ledger_sums)(world.ve.pk)


async def test_reconcile_skips_redis_counters_of_a_ve_the_database_lacks(budget):
    if budget.name != "redis":
        pytest.skip("only Redis can outlive a VE's rows")
    from billing import reconcile
    from billing.budget import set_budget
    from billing.budget_redis import RETAIN

    # given Redis remembers an unposted charge for a VE the database does not have
    # (a restored database, or a Redis shared with an older deployment)
    missing = 987654321
    budget._sync.sadd(f"{budget.p}ves", missing)
    budget._sync.hset(f"{budget.k_ve(missing)}:unposted", "req_orphan", f":5000:{int(time.time()) - RETAIN - 5}")
    # when the reconciliation runs
    set_budget(budget)
    try:
        posted = await sync_to_async(reconcile.post_unposted_charges)()
        drifts = await sync_to_async(reconcile.reconcile_all)()
    finally:
        set_budget(None)
    # then nothing is posted, and nothing fails
    assert posted == 0 and drifts == []
    assert not await LedgerEntry.objects.filter(idempotency_key="req_orphan").aexists()


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def test_reconcile_task_runs_in_a_real_celery_worker(tmp_path: Path):
    # given counters that drifted from the ledger
    from tests import factories

    org = factories.make_org()
    ve = factories.make_ve(org, credits="10")
    VirtualEndpoint.objects.filter(pk=ve.pk).update(credit_budget=11_000_000)
    queue = f"test-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, DATABASE_URL=_database_url(), TOKENBILL_DATA_DIR=str(tmp_path),
               REDIS_PREFIX=settings.REDIS_PREFIX, DJANGO_SETTINGS_MODULE="tokenbill.settings")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tokenbill", "worker", "--pool=solo", "-Q", queue, "--without-gossip",
         "--without-mingle", "--without-heartbeat", "--loglevel=INFO"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # when the task is sent through the broker (filesystem in tmp, or Redis)
        _sender(tmp_path).send_task("billing.reconcile_counters", queue=queue)
        deadline = time.monotonic() + 60
        while not DriftReport.objects.exists() and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.25)
        # then the worker ran it: the drift is repaired and reported with its amount
        report = DriftReport.objects.get()
        assert (report.counter, report.found, report.expected) == ("budget", 11_000_000, 10_000_000)
        assert VirtualEndpoint.objects.get(pk=ve.pk).credit_budget == 10_000_000
    finally:
        worker.terminate()
        output = worker.communicate(timeout=20)[0].decode(errors="replace")
    assert "billing.reconcile_counters" in output and "succeeded" in output, output[-3000:]


def _sender(tmp_path: Path):
    from celery import Celery

    if settings.REDIS_URL:
        return Celery("sender", broker=settings.REDIS_URL)
    folder = str(tmp_path / "celery" / "queue")
    os.makedirs(folder, exist_ok=True)
    return Celery("sender", broker="filesystem://", broker_transport_options={
        "data_folder_in": folder, "data_folder_out": folder})


def test_a_replayed_batch_posts_each_charge_once():
    # given a batch of charges, one of them twice (a retried flush after a lost commit reply)
    from billing.requestlog import PendingCharge, post_charges
    from tests import factories

    org = factories.make_org()
    ve = factories.make_ve(org, credits="100")
    key, _ = factories.make_key(ve)
    batch = [PendingCharge(ve.pk, key.pk, 1_000_000, f"req-{i}", {}) for i in range(3)]
    # when
    post_charges(batch + batch[:1])
    post_charges(batch)
    # then
    assert LedgerEntry.objects.filter(kind="charge").count() == 3
    ve.refresh_from_db()
    key.refresh_from_db()
    assert (ve.credit_spend, key.credit_spend) == (3_000_000, 3_000_000)
    assert ledger_sums(ve.pk) == (100_000_000, 3_000_000)


async def test_a_listeners_coroutine_runs_on_the_flushing_loop_not_a_new_one(biller):
    # given a listener that returns a coroutine (as the console's live feed does)
    import asyncio
    import threading

    from billing import requestlog

    seen = []

    def listener(rows):
        async def send():
            seen.append((asyncio.get_running_loop(), threading.current_thread(), len(rows)))
        return send()

    requestlog.on_written(listener)
    try:
        world = await sync_to_async(make_world)()
        await _call(biller, world)
        # when the gateway's loop flushes
        await biller.flush()
        # and a sync caller (a Celery task) flushes another batch
        await _call(biller, world)
        await sync_to_async(biller.flush_sync)()
    finally:
        requestlog._written_listeners.remove(listener)
    # then the first ran on this loop, in this thread; the sync flush ran its own to completion
    assert seen[0] == (asyncio.get_running_loop(), threading.current_thread(), 1)
    assert len(seen) == 2 and seen[1][2] == 1


async def test_written_batches_reach_listeners(biller):
    from billing import requestlog

    seen = []
    requestlog.on_written(seen.append)
    try:
        world = await sync_to_async(make_world)()
        ctx, _ = await _call(biller, world, "run-x")
        await biller.flush()
    finally:
        requestlog._written_listeners.remove(seen.append)
    assert [row["request_id"] for batch in seen for row in batch] == [ctx.request_id]
