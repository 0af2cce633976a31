"""Anthropic Messages API (POST /v1/messages, /v1/messages/count_tokens) over the chat path.

Wire format: https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming (event order: message_start,
content_block_start / content_block_delta / content_block_stop per block, message_delta
with cumulative usage, message_stop; ping; error). Errors:
https://docs.anthropic.com/en/api/errors ({"type": "error", "error": {"type", "message"}}).

Every upstream kind is reached through the chat adapters (an Anthropic upstream too: the
request is translated to chat and back by gateway/adapters/anthropic.py). What that loses
on an Anthropic-to-Anthropic call: thinking blocks in the answer and cache_control marks
(the system text and content are kept); see README.
"""

from __future__ import annotations

import json
import time

from gateway import errors
from gateway.apis.sse import FrameReader, event, is_sse, set_length

ENDPOINT = "messages"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


# --- errors ------------------------------------------------------------------------------
def error_body(exc: errors.GatewayError) -> bytes:
    kind = ERROR_TYPES.get(exc.status) or ("overloaded_error" if exc.status == 503 else "api_error")
    error = {"type": kind, "message": exc.message}
    if exc.code == "budget_exhausted" and "checkout_url" in exc.extra:
        error["checkout_url"] = exc.extra["checkout_url"]
    return json.dumps({"type": "error", "error": error}).encode()


def stream_error(obj: dict) -> bytes:
    inner = obj.get("error") or {}
    kind = "overloaded_error" if inner.get("code") == "upstream_unavailable" else "api_error"
    return event("error", {"type": "error", "error": {"type": kind, "message": inner.get("message") or "error"}})


# --- request: Anthropic -> chat ----------------------------------------------------------
def _bad(message: str, param: str | None = None) -> errors.GatewayError:
    return errors.bad_request(message, param=param)


def _text_of(blocks, param: str) -> str:
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad(f"'{param}' must be a string or an array of content blocks.", param)
    parts = []
    for block in blocks:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise _bad(f"'{param}' may hold only text blocks here.", param)
        parts.append(block["text"])
    return "\n".join(parts)


def _image_part(block: dict, param: str) -> dict:
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "base64":
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
    elif isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _bad(f"An image block in '{param}' needs a base64 or url source.", param)
    return {"type": "image_url", "image_url": {"url": url}}


def _message(message, i: int) -> list[dict]:
    param = f"messages[{i}].content"
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise _bad("Each message must be an object whose role is 'user' or 'assistant'.", "messages")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content blocks.", param)
    out: list[dict] = []
    parts: list[dict] = []
    calls: list[dict] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _bad(f"A text block of '{param}' must have a string 'text'.", param)
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and role == "user":
            parts.append(_image_part(block, param))
        elif kind == "tool_use" and role == "assistant":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            result = block.get("content")
            text = _text_of([b for b in result if b.get("type") == "text"] if isinstance(result, list) else
                            (result or ""), param)
            if block.get("is_error"):
                text = "Error: " + text
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # a previous turn's reasoning: not replayable through other providers
        else:
            raise _bad(f"Unsupported content block type {kind!r} in '{param}'.", param)
    if role == "assistant":
        text = "".join(p["text"] for p in parts)
        entry: dict = {"role": "assistant", "content": text or None}
        if calls:
            entry["tool_calls"] = calls
        out.append(entry)
    elif parts:
        out.append({"role": "user", "content": parts})
    return out


def to_chat(body: dict) -> dict:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: field required (a non-empty array)", "messages")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _bad("max_tokens: field required (a positive integer)", "max_tokens")
    chat: list[dict] = []
    if body.get("system"):
        chat.append({"role": "system", "content": _text_of(body["system"], "system")})
    for i, message in enumerate(messages):
        chat += _message(message, i)
    out: dict = {"model": body.get("model"), "messages": chat, "max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _bad("'tools' must be an array.", "tools")
        out["tools"] = [{"type": "function", "function": {
            "name": t.get("name"), "description": t.get("description") or "",
            "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}}
            for t in tools if isinstance(t, dict) and "input_schema" in t]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "any", "none"):
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        if choice.get("disable_parallel_tool_use") is True and out.get("tools"):
            out["parallel_tool_calls"] = False
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- answer: chat -> Anthropic -----------------------------------------------------------
def message_id(chat_id: str) -> str:
    raw = chat_id.removeprefix("chatcmpl-") if isinstance(chat_id, str) else ""
    return raw if raw.startswith("msg_") else "msg_" + raw


def usage_of(usage: dict | None) -> dict:
    usage = usage or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {"input_tokens": max(0, (usage.get("prompt_tokens") or 0) - cached),
            "output_tokens": usage.get("completion_tokens") or 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _arguments(raw) -> dict:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def from_chat(payload: dict, model: str) -> dict:
    choice = (payload.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": _arguments(function.get("arguments"))})
    return {"id": message_id(payload.get("id") or ""), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None, "usage": usage_of(payload.get("usage"))}


class StreamTranslator:
    """Chat chunks in, Anthropic events out."""

    def __init__(self, model: str):
        self.model = model
        self.started = False
        self.index = -1
        self.open: str | None = None  # "text" or the chat tool call index as "tool:<n>"
        self.stop_reason = "end_turn"
        self.usage: dict | None = None
        self.finished = False

    def _start(self, chunk: dict) -> bytes:
        self.started = True
        message = {"id": message_id(chunk.get("id") or ""), "type": "message", "role": "assistant",
                   "model": self.model, "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return event("message_start", {"type": "message_start", "message": message}) + \
            event("ping", {"type": "ping"})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _open(self, key: str, block: dict) -> bytes:
        out = self._close()
        self.index += 1
        self.open = key
        return out + event("content_block_start", {"type": "content_block_start", "index": self.index,
                                                    "content_block": block})

    def chunk(self, chunk: dict) -> bytes:
        out = b"" if self.started else self._start(chunk)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += event("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                      "delta": {"type": "text_delta", "text": delta["content"]}})
            for call in delta.get("tool_calls") or ():
                key = f"tool:{call.get('index', 0)}"
                function = call.get("function") or {}
                if self.open != key:
                    out += self._open(key, {"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                                            "input": {}})
                if function.get("arguments"):
                    out += event("content_block_delta", {
                        "type": "content_block_delta", "index": self.index,
                        "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}})
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return out

    def end(self) -> bytes:
        if self.finished:
            return b""
        self.finished = True
        out = b"" if self.started else self._start({})
        out += self._close()
        out += event("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                                       "usage": usage_of(self.usage)})
        return out + event("message_stop", {"type": "message_stop"})


def wrap_send(send, model: str):
    """The send() the chat path writes to: its answer leaves in Anthropic's format."""
    state: dict = {}

    async def translated(message):
        if message["type"] == "http.response.start":
            state["start"] = message
            state["sse"] = is_sse(message["headers"])
            if state["sse"]:
                state["reader"], state["tr"] = FrameReader(), StreamTranslator(model)
                await send(message)
            return
        body = message.get("body", b"")
        if not state.get("sse"):
            start = state["start"]
            if start["status"] == 200:
                body = json.dumps(from_chat(json.loads(body), model)).encode()
            else:
                obj = json.loads(body)
                inner = obj.get("error") or {}
                body = error_body(errors.GatewayError(start["status"], inner.get("message") or "error",
                                                      code=inner.get("code"), extra=inner))
            await send({**start, "headers": set_length(start["headers"], len(body))})
            await send({"type": "http.response.body", "body": body})
            return
        out = b""
        tr = state["tr"]
        for kind, value in state["reader"].feed(body):
            if kind == "data":
                out += stream_error(value) if "error" in value and "choices" not in value else tr.chunk(value)
            elif kind == "done":
                out += tr.end()
            else:
                out += value
        more = message.get("more_body", False)
        await send({"type": "http.response.body", "body": out, "more_body": more})

    return translated


# --- count_tokens ------------------------------------------------------------------------
def count_tokens(body: dict) -> dict:
    """Tokens of the request's input, counted locally (gateway/tokens.py). Exact for
    OpenAI-tokenized models; for any other model it is an estimate with the same
    tokenizer, marked so in the answer."""
    from gateway import tokens

    chat = to_chat({**body, "max_tokens": 1, "stream": False})
    model = chat.get("model") or ""
    count = tokens.count_messages(chat["messages"], model)
    if chat.get("tools"):
        count += tokens.count_text(json.dumps(chat["tools"]), model)
    return {"input_tokens": count}


def models_list(names: list[str]) -> dict:
    """https://docs.anthropic.com/en/api/models-list"""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(0))
    data = [{"type": "model", "id": name, "display_name": name, "created_at": created} for name in names]
    return {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
