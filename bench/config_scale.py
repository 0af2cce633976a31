"""Configuration at tenant scale (issue 16): 1,000 organizations, 10,000 VEs, 100,000 keys,
20,000 routes in PostgreSQL, one gateway process (real sockets, billing off) and this one
creating keys, against PostgreSQL and Redis on this machine.

Usage: DATABASE_URL=postgres://root@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \\
       .venv/bin/python bench/config_scale.py
It creates (and at the end drops) its own database, tb_bench_scale_<pid>; a Redis prefix of its
own. Prints one JSON object of figures:

- build_s, rss_mb: a fresh process's snapshot build (start-up) and its RSS after it;
- create_to_call_ms: a key created here (the service returned, as the API answers) to its
  first 200 in the gateway process (median and max of 30);
- cold_ms / warm_ms: the latency of a key's first call and of later calls (medians);
- rps_quiet / rps_churn: c=16 requests per second with no changes, then with a key created
  every 100 ms (same run);
- flood: 10,000 unknown keys at c=16: the PostgreSQL transactions the gateway made for them
  (pg_stat_database of the bench database) and another tenant's median latency before/during.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ORGS, VES_PER_ORG, KEYS_PER_VE, MODELS_PER_ORG, ROUTES_PER_MODEL = 1000, 10, 10, 10, 2
base_url = os.environ.get("DATABASE_URL", "postgres://root@127.0.0.1:5432/postgres")
parts = urlsplit(base_url)
DB = f"tb_bench_scale_{os.getpid()}"
DB_URL = f"{parts.scheme}://{parts.netloc}/{DB}"
PREFIX = f"tbscale{os.getpid()}:"


def psql(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"postgresql://{parts.netloc}/postgres", autocommit=True) as conn:
        conn.execute(sql)


def setup_django() -> None:
    os.environ.update(DATABASE_URL=DB_URL, REDIS_PREFIX=PREFIX, DJANGO_SETTINGS_MODULE="tokenbill.settings")
    import django

    django.setup()


def populate(upstream: str) -> list[tuple[str, str]]:
    """Bulk rows (the services' per-row work is not what is measured). Returns (VE public id, key secret) samples."""
    from django.core.management import call_command

    from routing.models import (AccessKey, ConfigVersion, LogicalModel, Organization, PhysicalModel, Provider,
                                Route, VirtualEndpoint, hash_secret)

    call_command("migrate", verbosity=0)
    orgs = Organization.objects.bulk_create(Organization(name=f"org {i}", slug=f"org-{i}") for i in range(ORGS))
    providers = []
    for org in orgs:
        p = Provider(organization=org, name="up", kind="openai_compatible", base_url=upstream)
        p.set_credentials("sk-fake")
        providers.append(p)
    providers = Provider.objects.bulk_create(providers)
    pms = PhysicalModel.objects.bulk_create(
        PhysicalModel(provider=p, upstream_model=f"m{j}", input_cost_per_mtok="0.1", output_cost_per_mtok="0.2")
        for p in providers for j in range(ROUTES_PER_MODEL))
    by_org = {}
    for pm in pms:
        by_org.setdefault(pm.provider.organization_id, []).append(pm)
    lms = LogicalModel.objects.bulk_create(LogicalModel(organization=o, name=f"chat{j}")
                                           for o in orgs for j in range(MODELS_PER_ORG))
    Route.objects.bulk_create(Route(logical_model=lm, physical_model=pm, priority=i)
                              for lm in lms for i, pm in enumerate(by_org[lm.organization_id]))
    ves = VirtualEndpoint.objects.bulk_create(VirtualEndpoint(organization=o, name=f"ve{j}")
                                              for o in orgs for j in range(VES_PER_ORG))
    lm_by_org = {}
    for lm in lms:
        lm_by_org.setdefault(lm.organization_id, []).append(lm)
    through = VirtualEndpoint.allowed_models.through
    through.objects.bulk_create(through(virtualendpoint_id=ve.pk, logicalmodel_id=lm.pk)
                                for ve in ves for lm in lm_by_org[ve.organization_id])
    samples, rows = [], []
    for ve in ves:
        for j in range(KEYS_PER_VE):
            secret = AccessKey.new_secret()
            rows.append(AccessKey(virtual_endpoint=ve, name=f"k{j}", prefix=secret[:10], key_hash=hash_secret(secret)))
            if j == 0 and len(samples) < 400:
                samples.append((ve.public_id, secret))
    AccessKey.objects.bulk_create(rows, batch_size=5000)
    ConfigVersion.objects.update_or_create(pk=1, defaults={"version": 1})
    return samples


def measure_build() -> tuple[float, float]:
    code = ("import os,time,django;django.setup();from routing.cache import routing_cache as c;"
            "t=time.perf_counter();s=c.refresh_now();b=time.perf_counter()-t;"
            "rss=[l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1];"
            "print(b,int(rss)/1024,len(s.keys_by_hash),len(s.endpoints_by_id),"
            "sum(len(m.routes) for m in s.logical_models.values()))")
    out = subprocess.check_output([sys.executable, "-c", code], env=dict(os.environ), cwd=ROOT, text=True)
    build, rss, keys, ves, routes = out.split()
    return float(build), float(rss), int(keys), int(ves), int(routes)


def start_gateway() -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, TB_NULL_BILLER="1", GATEWAY_GC_TUNING="1", UPSTREAM_ALLOW_PRIVATE="1")  # fake upstream: loopback
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.gateway_process"], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def wait_ready(base: str) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(base + "/v1/models", timeout=5)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("gateway did not start")


def rss_of(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


async def call(client, base, public_id, secret) -> tuple[int, float]:
    t = time.perf_counter()
    r = await client.post(f"{base}/{public_id}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
                          json={"model": "chat0", "messages": [{"role": "user", "content": "hi"}]})
    return r.status_code, (time.perf_counter() - t) * 1000


async def load(client, base, samples, seconds: float, concurrency: int = 16) -> tuple[int, int]:
    done = bad = 0
    stop = time.monotonic() + seconds

    async def worker(i):
        nonlocal done, bad
        n = i
        while time.monotonic() < stop:
            public_id, secret = samples[n % len(samples)]
            n += concurrency
            status, _ = await call(client, base, public_id, secret)
            done += 1
            bad += status != 200

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done, bad


def xacts() -> int:
    import psycopg

    with psycopg.connect(f"postgresql://{parts.netloc}/postgres", autocommit=True) as conn:
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                            (DB,)).fetchone()[0]


async def run(base, samples) -> dict:
    import httpx
    from asgiref.sync import sync_to_async

    from routing.models import VirtualEndpoint
    from routing.services import key_create

    figures = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        hot = samples[:64]
        for public_id, secret in hot:  # warm: these keys and VEs in the gateway's cache
            assert (await call(client, base, public_id, secret))[0] == 200
        warm = [(await call(client, base, *hot[i % len(hot)]))[1] for i in range(60)]
        cold = [(await call(client, base, *s))[1] for s in samples[200:260]]  # never called before
        figures["warm_ms"], figures["cold_ms"] = statistics.median(warm), statistics.median(cold)

        ves = await sync_to_async(lambda: list(VirtualEndpoint.objects.order_by("?")[:30]))()
        create = sync_to_async(lambda ve: key_create(virtual_endpoint=ve, name="fresh")[1], thread_sensitive=False)
        waits, refused = [], 0
        for ve in ves:
            secret = await create(ve)
            t = time.perf_counter()
            while (status := (await call(client, base, ve.public_id, secret))[0]) != 200:
                refused += 1
                assert status in (401, 404), status
            waits.append((time.perf_counter() - t) * 1000)
        figures["create_to_call_ms"] = {"median": statistics.median(waits), "max": max(waits), "refused": refused}

        seconds = 8.0
        quiet, bad_q = await load(client, base, hot, seconds)
        churning = True

        def churn():
            from django.db import connection

            while churning:
                key_create(virtual_endpoint=ves[0], name="churn")
                time.sleep(0.1)
            connection.close()

        thread = threading.Thread(target=churn)
        thread.start()
        busy, bad_b = await load(client, base, hot, seconds)
        churning = False
        thread.join()
        figures["rps_quiet"], figures["rps_churn"] = quiet / seconds, busy / seconds
        figures["rps_churn_vs_quiet"] = busy / quiet
        figures["errors"] = bad_q + bad_b
        print(json.dumps(figures, default=str), file=sys.stderr, flush=True)  # kept if the flood fails

        victim = hot[0]
        before = [(await call(client, base, *victim))[1] for _ in range(50)]
        x0 = xacts()
        unknown = [(victim[0] if i % 2 else s[0], f"tb-{secrets.token_urlsafe(30)}") for i, s in
                   zip(range(10_000), samples * 100)]
        during: list[float] = []

        async def measure_victim():
            while flooding:
                try:
                    during.append((await call(client, base, *victim))[1])
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.01)

        flooding = True
        vt = asyncio.ensure_future(measure_victim())
        t = time.perf_counter()
        sem = asyncio.Semaphore(16)

        statuses: dict = {}

        async def one(pair):
            async with sem:
                try:
                    status = (await call(client, base, *pair))[0]
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(one(p) for p in unknown))
        flood_s = time.perf_counter() - t
        flooding = False
        await vt
        await asyncio.sleep(0.2)
        figures["flood"] = {"unknown_keys": len(unknown), "seconds": flood_s, "statuses": statuses,
                            "pg_transactions": xacts() - x0,
                            "victim_median_ms_before": statistics.median(before),
                            "victim_median_ms_during": statistics.median(during) if during else None}
    return figures


def main() -> None:
    sys.path.insert(0, ROOT)
    psql(f'CREATE DATABASE "{DB}"')
    proc = None
    try:
        setup_django()
        from tests.fakes.openai_server import OpenAIFake

        with OpenAIFake(api_key="sk-fake") as up:
            t = time.perf_counter()
            samples = populate(up.base_url)
            populate_s = time.perf_counter() - t
            build_s, fresh_rss, keys, ves, routes = measure_build()
            t = time.perf_counter()
            proc, base = start_gateway()
            wait_ready(base)
            figures_start = time.perf_counter() - t
            figures = {"populate_s": populate_s, "build_s": build_s, "rss_mb_after_build": fresh_rss,
                       "held": {"keys": keys, "ves": ves, "routes": routes},
                       "gateway_ready_s": figures_start, "gateway_rss_mb_ready": rss_of(proc.pid)}
            figures.update(asyncio.run(run(base, samples)))
            figures["gateway_rss_mb_end"] = rss_of(proc.pid)
        print(json.dumps(figures, indent=1, default=str))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        from django.db import connections

        connections.close_all()
        psql(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')


if __name__ == "__main__":
    main()
