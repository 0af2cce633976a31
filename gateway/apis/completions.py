"""Legacy completions (POST /v1/completions: prompt in, text out) over the chat path: the
prompt becomes one user message, so chat-only upstreams serve it too.

Wire format: https://platform.openai.com/docs/api-reference/completions (the completion
object: {"id", "object": "text_completion", "created", "model", "choices": [{"text",
"index", "logprobs", "finish_reason"}], "usage"}; streamed chunks have the same shape).
"""

from __future__ import annotations

import json

from gateway import errors
from gateway.apis.sse import FrameReader, is_sse, set_length
from gateway.responses import sse_chunk

ENDPOINT = "completions"


def to_chat(body: dict) -> dict:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise errors.bad_request("'prompt' must be a non-empty string (one prompt per request).", param="prompt")
    for name in ("suffix", "echo", "best_of", "logprobs"):
        if body.get(name) not in (None, False, 1 if name == "best_of" else None):
            raise errors.bad_request(f"'{name}' is not supported.", param=name)
    out = {k: v for k, v in body.items() if k not in ("prompt", "suffix", "echo", "best_of", "logprobs")}
    out["messages"] = [{"role": "user", "content": prompt}]
    return out


def _id(chat_id) -> str:
    raw = chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) else ""
    return raw if raw.startswith("cmpl-") else "cmpl-" + raw


def from_chat(payload: dict, model: str) -> dict:
    choices = [{"text": (c.get("message") or {}).get("content") or "", "index": c.get("index", 0), "logprobs": None,
                "finish_reason": c.get("finish_reason")} for c in payload.get("choices") or ()]
    out = {"id": _id(payload.get("id")), "object": "text_completion", "created": payload.get("created", 0),
           "model": model, "choices": choices}
    if payload.get("usage") is not None:
        out["usage"] = payload["usage"]
    return out


def _chunk(chunk: dict, model: str) -> dict:
    choices = [{"text": (c.get("delta") or {}).get("content") or "", "index": c.get("index", 0), "logprobs": None,
                "finish_reason": c.get("finish_reason")} for c in chunk.get("choices") or ()]
    out = {"id": _id(chunk.get("id")), "object": "text_completion", "created": chunk.get("created", 0),
           "model": model, "choices": choices}
    if chunk.get("usage") is not None:
        out["usage"] = chunk["usage"]
    return out


def wrap_send(send, model: str):
    state: dict = {}

    async def translated(message):
        if message["type"] == "http.response.start":
            state["start"] = message
            state["sse"] = is_sse(message["headers"])
            if state["sse"]:
                state["reader"] = FrameReader()
                await send(message)
            return
        body = message.get("body", b"")
        if not state.get("sse"):
            start = state["start"]
            if start["status"] == 200:
                body = json.dumps(from_chat(json.loads(body), model)).encode()
            await send({**start, "headers": set_length(start["headers"], len(body))})
            await send({"type": "http.response.body", "body": body})
            return
        out = b""
        for kind, value in state["reader"].feed(body):
            if kind == "data":
                if "error" in value and "choices" not in value:
                    out += b"data: " + json.dumps(value).encode() + b"\n\n"
                elif value.get("choices") or value.get("usage") is not None:
                    out += sse_chunk(_chunk(value, model))
            elif kind == "done":
                out += b"data: [DONE]\n\n"
            else:
                out += value
        await send({"type": "http.response.body", "body": out, "more_body": message.get("more_body", False)})

    return translated
