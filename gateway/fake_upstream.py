"""A fast OpenAI-compatible FAKE upstream: a development and test tool, not a model.

`python manage.py fake_upstream --port 9100` serves it for `make run` (the demo
provider) and for the benchmark. It answers deterministically by echoing the last user
message, with usage; streams honour stream_options.include_usage. The builders here
are reused by the scriptable test fakes in tests/fakes/.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

JSON = "application/json"


def last_user_text(body: dict) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


def count_words(text: str) -> int:
    return max(1, len(text.split()))


def usage_for(body: dict, answer: str) -> dict:
    prompt = sum(count_words(json.dumps(m.get("content", ""))) + 3 for m in body.get("messages") or [] if isinstance(m, dict))
    completion = count_words(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def answer_for(body: dict) -> str:
    return "Echo: " + last_user_text(body)


def completion(body: dict, answer: str | None = None) -> dict:
    answer = answer_for(body) if answer is None else answer
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop",
                     "logprobs": None}],
        "usage": usage_for(body, answer),
    }


def stream_events(body: dict, answer: str | None = None, pieces: int = 4) -> list[bytes]:
    """The SSE frames of a streamed answer, [DONE] included."""
    answer = answer_for(body) if answer is None else answer
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model", "fake")}
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    extra = {"usage": None} if include_usage else {}
    size = max(1, -(-len(answer) // pieces))
    parts = [answer[i:i + size] for i in range(0, len(answer), size)] or [""]
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], **extra}]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}], **extra} for p in parts]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **extra})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage_for(body, answer)})
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def embeddings(body: dict) -> dict:
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
    data = [{"object": "embedding", "index": i, "embedding": [round((len(str(x)) % 7) / 7, 3), 0.5, -0.25]}
            for i, x in enumerate(inputs)]
    tokens = sum(count_words(str(x)) for x in inputs)
    return {"object": "list", "data": data, "model": body.get("model", "fake"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def make_app(delay_ms: float = 0.0) -> web.Application:
    delay = delay_ms / 1000.0

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json(loads=json.loads)
        if delay:
            await asyncio.sleep(delay)
        if body.get("stream") is True:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            try:
                await resp.prepare(request)
                for frame in stream_events(body):
                    await resp.write(frame)
                await resp.write_eof()
            except ConnectionResetError:  # the client went away (a load generator stopping)
                pass
            return resp
        return web.Response(body=json.dumps(completion(body)).encode(), content_type=JSON)

    async def embed(request: web.Request) -> web.Response:
        body = await request.json(loads=json.loads)
        return web.Response(body=json.dumps(embeddings(body)).encode(), content_type=JSON)

    async def models(request: web.Request) -> web.Response:
        data = [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]
        return web.Response(body=json.dumps({"object": "list", "data": data}).encode(), content_type=JSON)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embed)
    app.router.add_get("/v1/models", models)
    return app


def serve(host: str, port: int, delay_ms: float = 0.0) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(delay_ms), host=host, port=port, access_log=None, print=None)
