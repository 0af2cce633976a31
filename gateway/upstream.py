"""The process's pooled upstream HTTP client and the SSE reader.

aiohttp.ClientSession directly, chosen by measurement (bench/client_compare.py; figures
in the README): on this 2-core machine, behind one uvicorn worker, the httpx API over
the aiohttp transport (httpx-aiohttp) costs roughly twice the CPU per call of a bare
aiohttp session. One session (and connection pool) per event loop, i.e. per process
in production; tests start several servers in threads, each with its own loop.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
from yarl import URL

from gateway.adapters.base import HttpCall, SSEEvent
from routing.snapshot import ProviderSnap

_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


def session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    s = _sessions.get(loop)
    if s is None or s.closed:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
        s = aiohttp.ClientSession(
            connector=connector, json_serialize=json.dumps, auto_decompress=True,
            skip_auto_headers=("User-Agent",),
        )
        _sessions[loop] = s
    return s


async def close() -> None:
    loop = asyncio.get_running_loop()
    s = _sessions.pop(loop, None)
    if s is not None:
        await s.close()


_timeouts: dict[tuple[float, float, float], aiohttp.ClientTimeout] = {}


def _timeout(provider: ProviderSnap, remaining: float) -> aiohttp.ClientTimeout:
    # Rounded so the cache stays small; ClientTimeout construction is not free on the hot path.
    total = round(min(remaining, 86400.0), 1)
    key = (provider.connect_timeout, provider.read_timeout, total)
    t = _timeouts.get(key)
    if t is None:
        if len(_timeouts) > 4096:
            _timeouts.clear()
        t = _timeouts[key] = aiohttp.ClientTimeout(
            total=total, sock_connect=provider.connect_timeout, sock_read=provider.read_timeout
        )
    return t


_urls: dict[str, URL] = {}


def _url(raw: str) -> URL:
    # Parsing a URL is a visible share of aiohttp's per-request cost; upstream URLs repeat.
    url = _urls.get(raw)
    if url is None:
        if len(_urls) > 4096:
            _urls.clear()
        url = _urls[raw] = URL(raw)
    return url


async def send(call: HttpCall, provider: ProviderSnap, remaining: float) -> aiohttp.ClientResponse:
    """Send the call; the caller reads and releases the response."""
    data = json.dumps(call.json).encode() if call.json is not None else call.data
    return await session().request(
        call.method, _url(call.url), data=data, headers=call.headers, timeout=_timeout(provider, remaining),
        allow_redirects=False,
    )


async def sse_events(resp: aiohttp.ClientResponse):
    """Yield SSEEvents as lines arrive (no buffering beyond one event)."""
    data_lines: list[str] = []
    event = ""
    async for raw in resp.content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data_lines:
                yield SSEEvent(data="\n".join(data_lines), event=event)
                data_lines = []
            event = ""
        elif line.startswith("data:"):
            data_lines.append(line[6:] if line.startswith("data: ") else line[5:])
        elif line.startswith("event:"):
            event = line[6:].strip()
        # comments (":...") and other fields are ignored
    if data_lines:
        yield SSEEvent(data="\n".join(data_lines), event=event)


def _event(block: bytes) -> SSEEvent | None:
    data_lines: list[str] = []
    event = ""
    for raw in block.split(b"\n"):
        if raw.startswith(b"data:"):
            data_lines.append(raw[6:].decode() if raw.startswith(b"data: ") else raw[5:].decode())
        elif raw.startswith(b"event:"):
            event = raw[6:].strip().decode()
    return SSEEvent(data="\n".join(data_lines), event=event) if data_lines else None


async def sse_batches(resp: aiohttp.ClientResponse):
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
