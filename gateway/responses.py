"""Sending answers over ASGI: precomputed header lists, JSON bodies, SSE, and an
assistant message (non-stream or stream) that billing's "message" exhaustion mode and
the /tokenbill answer (gateway/magic.py) reuse."""

from __future__ import annotations

import json
import time

from gateway.adapters.base import Usage
from gateway.errors import GatewayError

CT_JSON = (b"content-type", b"application/json")
CT_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
SSE_HEADERS = [CT_SSE, (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
REQUEST_ID = b"x-tokenbill-request-id"
DONE = b"data: [DONE]\n\n"


def rid_header(request_id: str) -> tuple[bytes, bytes]:
    return (REQUEST_ID, request_id.encode())


def rid_headers(request_id: str) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """x-tokenbill-request-id and x-request-id (where the official SDKs read request ids)."""
    value = request_id.encode()
    return (REQUEST_ID, value), (b"x-request-id", value)


async def send_json(send, status: int, body: bytes, request_id: str, extra_headers=()) -> None:
    headers = [CT_JSON, (b"content-length", str(len(body)).encode()), *rid_headers(request_id), *extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send, error: GatewayError, request_id: str) -> None:
    await send_json(send, error.status, error.body(), request_id, error.headers)


async def start_sse(send, request_id: str, extra_headers=()) -> None:
    headers = [*SSE_HEADERS, *rid_headers(request_id), *extra_headers]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


def sse_chunk(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chat_completion(*, request_id: str, model: str, text: str, usage: Usage | None = None) -> dict:
    usage = usage or Usage()
    return {
        "id": "chatcmpl-" + request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "finish_reason": "stop",
                     "logprobs": None}],
        "usage": {"prompt_tokens": usage.input_tokens + usage.cached_input_tokens,
                  "completion_tokens": usage.output_tokens, "total_tokens": usage.total_tokens},
    }


async def send_assistant_message(send, *, request_id: str, model: str, text: str, stream: bool,
                                 include_usage: bool = False, extra_headers=()) -> None:
    """Answer with one assistant message, in the shape the client asked for (free: usage 0)."""
    if not stream:
        body = json.dumps(chat_completion(request_id=request_id, model=model, text=text)).encode()
        await send_json(send, 200, body, request_id, extra_headers)
        return
    base = {"id": "chatcmpl-" + request_id, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": 0,
                                                          "total_tokens": 0}})
    await start_sse(send, request_id, extra_headers)
    await send({"type": "http.response.body", "body": b"".join(map(sse_chunk, chunks)) + DONE})
