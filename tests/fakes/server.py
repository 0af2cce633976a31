"""A scriptable fake upstream: a real aiohttp.web server on 127.0.0.1 (a free port) in a
background thread, so the gateway talks to it over real sockets.

Each wire format (anthropic_server.py, gemini_server.py, ...) subclasses FakeServer and
supplies `default(request)`: the answer when nothing is scripted. A test scripts the next
answers with `server.script(behaviour, ...)`; a behaviour is an async function
`(request) -> web.StreamResponse` — see json_reply, sse_reply, stall, drop, raw_reply.
Every request is recorded (method, path, query, headers, JSON body) in `server.requests`.

    with AnthropicFake(api_key="k") as upstream:
        upstream.script(anthropic_server.error(529, "overloaded_error"))
        ... call upstream.url ...
        assert upstream.requests[0].headers["x-api-key"] == "k"
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]
RECORDED = web.RequestKey("recorded", object)  # the Recorded of this request
FAKE = web.RequestKey("fake", object)  # the FakeServer answering it


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any = field(default=None)


class FakeServer:
    def __init__(self):
        self.requests: list[Recorded] = []
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FakeServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name=type(self).__name__)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop and self._stopping:
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread:
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve(ready))
        self._loop.close()

    async def _serve(self, ready: threading.Event) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopping.wait()
        await runner.cleanup()

    # --- scripting ----------------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
        self.requests.clear()

    async def default(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "nothing scripted"}, status=500)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request[RECORDED] = rec = Recorded(request.method, request.path, dict(request.query),
                                             {k.lower(): v for k, v in request.headers.items()}, body, parsed)
        request[FAKE] = self
        self.requests.append(rec)
        with self._lock:
            behaviour = self._queue.popleft() if self._queue else None
        return await (behaviour or self.default)(request)

    async def wait_stopping(self, seconds: float) -> None:
        """Sleep, but wake up when the server stops (a stalled answer never outlives a test)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except asyncio.TimeoutError:
            pass


# --- behaviours ---------------------------------------------------------------------------


def json_reply(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Behaviour:
    async def behave(request):
        return web.json_response(payload, status=status, headers=headers)

    return behave


def raw_reply(body: bytes, status: int = 200, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> Behaviour:
    async def behave(request):
        return web.Response(body=body, status=status, content_type=content_type, headers=headers)

    return behave


def sse_reply(events: list[tuple[str | None, str]], *, delay: float = 0.0, drop_after: int | None = None,
              stall_after: int | None = None, stall_seconds: float = 30.0) -> Behaviour:
    """events: (event name or None, data string). drop_after=n: cut the connection after
    n events; stall_after=n: go silent after n events."""

    async def behave(request):
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        for i, (name, data) in enumerate(events):
            if i == drop_after:
                request.transport.abort()
                return resp
            if i == stall_after:
                await request[FAKE].wait_stopping(stall_seconds)
                return resp
            head = f"event: {name}\n" if name else ""
            await resp.write(f"{head}data: {data}\n\n".encode())
            if delay:
                await asyncio.sleep(delay)
        await resp.write_eof()
        return resp

    return behave


def stall(seconds: float = 30.0) -> Behaviour:
    """Accept the request and send nothing (until `seconds` pass or the server stops)."""

    async def behave(request):
        await request[FAKE].wait_stopping(seconds)
        return web.json_response({"error": "stalled"}, status=504)

    return behave


def drop() -> Behaviour:
    """Close the connection without answering."""

    async def behave(request):
        request.transport.abort()
        return web.Response()

    return behave
