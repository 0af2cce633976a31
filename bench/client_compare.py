"""Which upstream client costs the gateway less: aiohttp directly, or the httpx API over the
aiohttp transport (httpx-aiohttp)? Same fake upstream, same body, one process.

    python bench/client_compare.py <fake upstream base url, e.g. http://127.0.0.1:9100/v1>

Prints requests/s and client-side CPU ms per request at concurrency 1 and 16.
"""

import asyncio
import json
import sys
import time

import aiohttp
import httpx
import httpx_aiohttp

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}
HEADERS = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}


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
    for name, fn in (("aiohttp", with_aiohttp), ("httpx over aiohttp", with_httpx_aiohttp)):
        for conc in (1, 16):
            asyncio.run(fn(url, 200, conc))  # warm-up
            n = 3000
            wall, cpu = time.perf_counter(), time.process_time()
            asyncio.run(fn(url, n, conc))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{name:<20} c={conc:<3} {n / wall:>8,.0f} req/s  client CPU {cpu * 1000 / n:.3f} ms/req")


if __name__ == "__main__":
    main(sys.argv[1])
