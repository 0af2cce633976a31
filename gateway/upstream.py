"""The process's pooled upstream HTTP client and the SSE reader.

gateway/httpclient.py, chosen by measurement (bench/client_compare.py; figures in the
README): on this 2-core machine, behind one uvicorn worker, aiohttp's ClientSession cost
~165 us of CPU per call more than a plain protocol, and the httpx API over the aiohttp
transport (httpx-aiohttp) about twice a bare aiohttp session. One pool of keep-alive
connections per event loop, i.e. per process in production; tests start several servers
in threads, each with its own loop.
"""

from __future__ import annotations

import asyncio
import json

from django.conf import settings

from gateway.adapters.base import HttpCall, SSEEvent
from gateway.httpclient import Pool, Response
from routing.snapshot import ProviderSnap

_pools: dict[asyncio.AbstractEventLoop, Pool] = {}


def pool() -> Pool:
    loop = asyncio.get_running_loop()
    p = _pools.get(loop)
    if p is None:
        p = _pools[loop] = Pool(loop, max_per_host=settings.UPSTREAM_MAX_CONNECTIONS_PER_HOST,
                                max_answer_bytes=settings.UPSTREAM_MAX_ANSWER_BYTES, dns_ttl=settings.UPSTREAM_DNS_TTL,
                                happy_eyeballs_delay=settings.UPSTREAM_HAPPY_EYEBALLS_DELAY)
    return p


async def close() -> None:
    p = _pools.pop(asyncio.get_running_loop(), None)
    if p is not None:
        p.close()


async def send(call: HttpCall, provider: ProviderSnap, remaining: float) -> Response:
    """Send the call; the caller reads and closes the response (`async with resp`)."""
    data = json.dumps(call.json).encode() if call.json is not None else call.data
    # Until the answer's first byte: first_byte_timeout (a reasoning model thinks for
    # minutes first); after it, read_timeout is the longest silence between chunks.
    return await pool().request(call.method, call.url, call.headers, data, connect_timeout=provider.connect_timeout,
                                read_timeout=provider.first_byte_timeout, total=min(remaining, 86400.0),
                                idle_timeout=provider.read_timeout, proxy=provider.proxy,
                                allow_private=provider.allow_private or settings.UPSTREAM_ALLOW_PRIVATE)


def _event(block: bytes) -> SSEEvent | None:
    data_lines: list[str] = []
    event = ""
    for raw in block.split(b"\n"):
        if raw.startswith(b"data:"):
            data_lines.append(raw[6:].decode() if raw.startswith(b"data: ") else raw[5:].decode())
        elif raw.startswith(b"event:"):
            event = raw[6:].strip().decode()
    return SSEEvent(data="\n".join(data_lines), event=event) if data_lines else None


async def sse_batches(resp: Response):
    """Yield, per network read, the list of complete SSE events it brought. Events that
    arrived together are relayed together (one send to the client, not one per line):
    nothing waits for more data than what already arrived."""
    buf = b""
    async for data in resp.content.iter_any():
        buf += data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        if b"\n\n" not in buf:
            continue
        *blocks, buf = buf.split(b"\n\n")
        events = [e for e in map(_event, blocks) if e is not None]
        if events:
            yield events
    if buf.strip():
        event = _event(buf)
        if event is not None:
            yield [event]
