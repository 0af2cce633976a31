"""Which upstream client costs the gateway less: the gateway's own (gateway/httpclient.py),
aiohttp directly, or the httpx API over the aiohttp transport (httpx-aiohttp)? Same fake
upstream, same body, one process, uvloop as in production.

    python bench/client_compare.py <fake upstream base url, e.g. http://127.0.0.1:9100/v1>
    python bench/client_compare.py          # starts the fake upstream itself

Prints requests/s and client-side CPU ms per request at concurrency 1 and 16.
"""

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import httpx_aiohttp
import uvloop

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


async def with_httpclient(url, n, conc):
    from gateway.httpclient import Pool

    pool = Pool(asyncio.get_running_loop())

    async def one():
        async with await pool.request("POST", url, HEADERS, json.dumps(BODY).encode(), connect_timeout=10,
                                      read_timeout=60, total=60) as r:
            json.loads(await r.read())

    await drive(one, n, conc)
    pool.close()


async def with_aiohttp(url, n, conc):
    async with aiohttp.ClientSession() as session:
        async def one():
            async with session.post(url, data=json.dumps(BODY).encode(), headers=HEADERS) as r:
                json.loads(await r.read())
        await drive(one, n, conc)


async def with_httpx_aiohttp(url, n, conc):
    async with httpx.AsyncClient(transport=httpx_aiohttp.AiohttpTransport()) as client:
        async def one():
            r = await client.post(url, content=json.dumps(BODY).encode(), headers=HEADERS)
            json.loads(r.content)
        await drive(one, n, conc)


async def drive(one, n, conc):
    remaining = n

    async def worker():
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    await asyncio.gather(*(worker() for _ in range(conc)))


def main(base):
    url = base.rstrip("/") + "/chat/completions"
    clients = (("gateway.httpclient", with_httpclient), ("aiohttp", with_aiohttp),
               ("httpx over aiohttp", with_httpx_aiohttp))
    for name, fn in clients:
        for conc in (1, 16):
            uvloop.run(fn(url, 200, conc))  # warm-up
            n = 3000
            wall, cpu = time.perf_counter(), time.process_time()
            uvloop.run(fn(url, n, conc))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{name:<20} c={conc:<3} {n / wall:>8,.0f} req/s  client CPU {cpu * 1000 / n:.3f} ms/req")


def with_own_fake() -> None:
    from bench.bench import PY, bench_env, free_port, wait_port

    env = bench_env(tempfile.mkdtemp(prefix="tokenbill-cc-"))
    port = free_port()
    fake = subprocess.Popen([PY, "manage.py", "fake_upstream", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        main(f"http://127.0.0.1:{port}/v1")
    finally:
        fake.terminate()
        fake.wait(10)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        with_own_fake()
