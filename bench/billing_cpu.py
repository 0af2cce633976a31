"""Billing's own CPU per call, in one process, without HTTP: a steadier figure than
latency on a shared machine (bench helper).

    python bench/billing_cpu.py [calls] [gap_ms]

Builds a throw-away world (SQLite, Redis counters under a private prefix), then runs the
gateway's billing steps for one call at a time, as the gateway does: admit, a made-up
upstream usage, settle (Redis settle script, request-log record, spool). Between calls it
sleeps `gap_ms` (default 0.5: like concurrency 1, Redis goes idle between calls). Prints
CPU microseconds per call of the whole process (all threads: replies, spool pushes,
timers included; not the drain of the spool into SQL, which is Celery's work) and wall microseconds of admit and settle, median of rounds.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare() -> str:
    from bench.bench import PY, bench_env

    tmp = tempfile.mkdtemp(prefix="tokenbill-bcpu-")
    env = bench_env(tmp)
    os.environ.update(env)
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    out = subprocess.run([PY, "bench/setup_world.py", "http://127.0.0.1:9/v1"], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


async def run(secret: str, calls: int, gap: float) -> None:
    import django

    django.setup()
    from billing.gate import CallContext, Outcome, get_biller
    from gateway import auth
    from gateway.adapters.base import Usage
    from routing.cache import routing_cache

    snapshot = await routing_cache.ensure_started()
    ve, key = auth.authenticate(snapshot, secret, None)
    model = auth.resolve_model(snapshot, ve, key, "bench")
    biller = get_biller()
    body = {"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}
    n = 0

    async def one() -> tuple[float, float]:
        nonlocal n
        n += 1
        ctx = CallContext(request_id=f"req_bcpu{os.getpid()}_{n}", endpoint="chat.completions", ve=ve, key=key,
                          model=model, body=body, started_at=time.time(), requested_model="bench")
        t0 = time.perf_counter()
        admission = await biller.admit(ctx)
        t1 = time.perf_counter()
        outcome = Outcome(route=model.routes[0], usage=Usage(input_tokens=12, output_tokens=9),
                          attempts=[{"physical_model_id": model.routes[0].physical_model.id, "status": 200}],
                          latency_ms=1, ttfb_ms=1)
        t2 = time.perf_counter()
        await biller.settle(ctx, admission, outcome)
        t3 = time.perf_counter()
        return t1 - t0, t3 - t2

    for _ in range(500):  # warm-up: rates, lease, connections
        await one()
        await asyncio.sleep(gap)
    rounds = []
    for _ in range(5):
        cpu0 = time.process_time()
        admit, settle = [], []
        for _ in range(calls):
            a, s = await one()
            admit.append(a)
            settle.append(s)
            await asyncio.sleep(gap)
        rounds.append(((time.process_time() - cpu0) / calls * 1e6, statistics.median(admit) * 1e6,
                       statistics.median(settle) * 1e6))
        await biller.flush()  # outside the measure: with Redis this drains the spool (Celery's work)
    cpu, admit, settle = (statistics.median(r[i] for r in rounds) for i in range(3))
    print(f"billing ({biller.budget.name} budget): {cpu:.1f} us CPU per call (all threads, gap {gap * 1000:.1f} ms); "
          f"admit p50 {admit:.1f} us, settle p50 {settle:.1f} us")
    # A loop that only sleeps, for the floor the gap itself costs.
    cpu0 = time.process_time()
    for _ in range(calls):
        await asyncio.sleep(gap)
    print(f"floor: {(time.process_time() - cpu0) / calls * 1e6:.1f} us CPU per empty gap")
    await biller.close()


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    gap = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0005
    secret = prepare()
    import uvloop

    try:
        uvloop.run(run(secret, calls, gap))
    finally:
        from bench.bench import cleanup_redis

        cleanup_redis(dict(os.environ))


if __name__ == "__main__":
    main()
