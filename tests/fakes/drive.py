"""Drive an adapter against a fake upstream with a plain aiohttp client, the way the
gateway does (adapter builds the call; we send it; adapter translates the answer), so
adapter tests exercise real HTTP without the gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp

from gateway.adapters.base import Adapter, SSEEvent, StreamDecoder
from routing import output_limits
from routing.snapshot import PhysicalModelSnap, ProviderSnap


def target(kind: str, base_url: str, api_key: str, upstream_model: str = "fake-model",
           modality: str = "chat", max_output_tokens: int | None = None) -> PhysicalModelSnap:
    provider = ProviderSnap(id=1, name=f"{kind} test", kind=kind, base_url=base_url, api_key=api_key,
                            api_version="", currency="USD", connect_timeout=5.0, read_timeout=10.0)
    zero = Decimal("0")
    return PhysicalModelSnap(id=1, upstream_model=upstream_model, modality=modality, provider=provider,
                             input_cost_per_mtok=zero, cached_input_cost_per_mtok=zero,
                             cache_write_cost_per_mtok=zero, output_cost_per_mtok=zero, image_costs={},
                             audio_cost_per_second=zero,
                             limit_parameter=output_limits.parameter(kind, upstream_model, ""),
                             max_output_tokens=output_limits.cap(upstream_model, max_output_tokens))


@dataclass
class Streamed:
    chunks: list[dict] = field(default_factory=list)
    decoder: StreamDecoder | None = None

    @property
    def text(self) -> str:
        return "".join(c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c["choices"])


async def chat(adapter: Adapter, tgt: PhysicalModelSnap, body: dict):
    """Non-stream: (completion dict, Usage), or raises the adapter's UpstreamError."""
    call = adapter.chat_request(tgt, body, stream=False)
    async with aiohttp.ClientSession() as session:
        async with session.request(call.method, call.url, headers=call.headers, data=json.dumps(call.json)) as r:
            raw = await r.read()
            if r.status >= 300:
                raise adapter.error_from(r.status, raw, dict(r.headers))
            return adapter.chat_response(tgt, json.loads(raw))


async def chat_stream(adapter: Adapter, tgt: PhysicalModelSnap, body: dict, include_usage: bool,
                      out: Streamed | None = None) -> Streamed:
    """Stream: every chunk the decoder produced; raises UpstreamError (chunks so far in `out`)."""
    out = out or Streamed()
    call = adapter.chat_request(tgt, body, stream=True)
    out.decoder = adapter.stream_decoder(tgt, include_usage)
    async with aiohttp.ClientSession() as session:
        async with session.request(call.method, call.url, headers=call.headers, data=json.dumps(call.json)) as r:
            if r.status >= 300:
                raise adapter.error_from(r.status, await r.read(), dict(r.headers))
            async for event in sse_events(r):
                out.chunks += out.decoder.feed(event)
    out.chunks += out.decoder.close()
    return out


async def embeddings(adapter: Adapter, tgt: PhysicalModelSnap, request: dict, **kw):
    call = adapter.embeddings_request(tgt, request)
    async with aiohttp.ClientSession() as session:
        async with session.request(call.method, call.url, headers=call.headers, data=json.dumps(call.json)) as r:
            raw = await r.read()
            if r.status >= 300:
                raise adapter.error_from(r.status, raw, dict(r.headers))
            return adapter.embeddings_response(tgt, json.loads(raw), **kw)


async def sse_events(resp: aiohttp.ClientResponse):
    data: list[str] = []
    name = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield SSEEvent(data="\n".join(data), event=name)
            data, name = [], ""
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
        elif line.startswith("event:"):
            name = line[6:].strip()
    if data:
        yield SSEEvent(data="\n".join(data), event=name)
