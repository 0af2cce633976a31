"""Anthropic Messages API (POST /v1/messages) <-> OpenAI chat completions.

Usage: Anthropic's input_tokens already excludes cache reads and cache writes, so the
three map one-to-one onto Usage. In a stream, message_start carries the input side and
message_delta carries CUMULATIVE totals (output_tokens is the count so far, and it may
repeat the input side): we always keep the latest value of each field, never add.
"""

from __future__ import annotations

import json

from gateway.adapters import shapes
from gateway.adapters.usage import count, read_usage
from gateway.adapters.base import (
    TRANSIENT_STATUSES,
    Adapter,
    HttpCall,
    SSEEvent,
    StreamDecoder,
    UpstreamError,
    Usage,
    register,
)
from routing.snapshot import PhysicalModelSnap

ANTHROPIC_VERSION = "2023-06-01"

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
TOOL_CHOICES = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
USAGE_FIELDS = {
    "input_tokens": "input_tokens",
    "cache_read_input_tokens": "cached_input_tokens",
    "cache_creation_input_tokens": "cache_creation_tokens",
    "output_tokens": "output_tokens",
}
# response_format json_schema / json_object goes to Anthropic as this tool, forced, whose input
# schema is the client's schema; its input comes back to the client as the message content.
STRUCTURED_TOOL = "structured_output"
MIN_THINKING_BUDGET = 1024  # Anthropic refuses a smaller thinking.budget_tokens
# Anthropic error types whose status alone would not say "another route may work".
TRANSIENT_TYPES = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})


def messages_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


@register("anthropic")
class AnthropicAdapter(Adapter):
    def chat_request(self, target: PhysicalModelSnap, body: dict, *, stream: bool) -> HttpCall:
        headers = {
            "x-api-key": target.provider.api_key,
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }
        with shapes.client_request():
            payload = translate_request(body, stream, target.max_output_tokens)
        return HttpCall("POST", messages_url(target.provider.base_url), headers, payload)

    def chat_response(self, target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
        with shapes.upstream_answer("Anthropic message of an unexpected shape"):
            return translate_response(target, payload)

    def stream_decoder(self, target: PhysicalModelSnap, include_usage: bool) -> StreamDecoder:
        return AnthropicStreamDecoder(target, include_usage)

    def error_from(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return translate_error(status, body, headers)


# --- request ------------------------------------------------------------------------------


def translate_request(body: dict, stream: bool, max_output_tokens: int) -> dict:
    """Anthropic requires max_tokens; OpenAI clients often leave it out: then the model's
    own output cap (PhysicalModel.max_output_tokens), so nothing is cut short."""
    if (body.get("n") or 1) > 1:
        raise shapes.bad_request("n > 1 is not supported by this model", param="n")
    system, messages = translate_messages(body.get("messages") or [])
    out: dict = {"model": body["model"], "messages": messages,
                 "max_tokens": shapes.max_output_tokens(body) or max_output_tokens}
    if system:
        out["system"] = system
    if stream:
        out["stream"] = True
    _copy_sampling(body, out)
    _copy_tools(body, out)
    _structured_output(body, out)
    _thinking(body, out)
    return out


def _structured_output(body: dict, out: dict) -> None:
    """A forced tool whose input is the schema (Anthropic's documented way to get JSON:
    https://docs.anthropic.com/en/docs/build-with-claude/tool-use, "JSON mode")."""
    found = shapes.json_schema_of(body)
    if found is None:
        return
    name, schema = found
    tool = {"name": STRUCTURED_TOOL, "description": f"Answer with the {name} JSON object.",
            "input_schema": schema if schema.get("type") == "object" else {"type": "object", "properties": {}}}
    out["tools"] = [*out.get("tools", ()), tool]
    out["tool_choice"] = {"type": "tool", "name": STRUCTURED_TOOL}


def _thinking(body: dict, out: dict) -> None:
    """reasoning_effort -> extended thinking. Anthropic wants MIN_THINKING_BUDGET <= budget_tokens
    < max_tokens, no temperature/top_p change and no forced tool with thinking
    (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking): the budget leaves
    at least MIN_THINKING_BUDGET tokens for the answer; with less room, or a forced tool, no thinking.
    Nor in a tool loop: Anthropic then wants the previous turn's signed thinking block back
    before its tool_use, which an OpenAI client never keeps."""
    budget = shapes.reasoning_budget(body)
    if not budget or any(m.get("role") == "tool" for m in body.get("messages") or ()):
        return
    budget = min(budget, out["max_tokens"] - MIN_THINKING_BUDGET)
    if budget < MIN_THINKING_BUDGET or out.get("tool_choice", {}).get("type") in ("any", "tool"):
        return
    out["thinking"] = {"type": "enabled", "budget_tokens": budget}
    out.pop("temperature", None)
    out.pop("top_p", None)


def _copy_sampling(body: dict, out: dict) -> None:
    if body.get("temperature") is not None:
        # OpenAI's range is 0..2, Anthropic's 0..1: clamp rather than fail a portable request.
        out["temperature"] = min(float(body["temperature"]), 1.0)
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stops = shapes.stop_list(body.get("stop"))
    if stops:
        out["stop_sequences"] = stops
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}


def _copy_tools(body: dict, out: dict) -> None:
    tools = [t for t in body.get("tools") or () if t.get("type", "function") == "function"]
    if tools:
        out["tools"] = [translate_tool(t["function"]) for t in tools]
    choice = translate_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice and (tools or choice["type"] == "none"):
        out["tool_choice"] = choice


def translate_tool(function: dict) -> dict:
    tool = {"name": function["name"],
            "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        tool["description"] = function["description"]
    return tool


def translate_tool_choice(choice, parallel) -> dict | None:
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    elif isinstance(choice, str) and choice in TOOL_CHOICES:
        out = dict(TOOL_CHOICES[choice])
    elif parallel is False:
        out = {"type": "auto"}
    else:
        return None
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


def translate_messages(messages: list[dict]) -> tuple[str, list[dict]]:
    """System prompts (all of them, joined) apart; the rest as alternating turns, with
    consecutive same-role turns merged (tool results after a tool call share one user turn)."""
    system: list[str] = []
    turns: list[dict] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(shapes.text_of(message.get("content")))
            continue
        if role not in ("user", "assistant", "tool"):
            raise shapes.bad_request(f"unsupported message role: {role!r}", param="messages")
        _append_turn(turns, "assistant" if role == "assistant" else "user", translate_blocks(message))
    return "\n\n".join(s for s in system if s), turns


def _append_turn(turns: list[dict], role: str, blocks: list[dict]) -> None:
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": blocks})


def translate_blocks(message: dict) -> list[dict]:
    if message["role"] == "tool":
        return [{"type": "tool_result", "tool_use_id": message.get("tool_call_id") or "",
                 "content": shapes.text_of(message.get("content"))}]
    blocks = content_blocks(message.get("content"))
    for call in message.get("tool_calls") or ():
        blocks.append({"type": "tool_use", "id": call.get("id") or shapes.new_id("toolu_"),
                       "name": (call.get("function") or {}).get("name") or "",
                       "input": shapes.tool_arguments(call)})
    return blocks


def content_blocks(content) -> list[dict]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and part.get("text"):
            blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(image_block(shapes.image_url_of(part)))
    return blocks


def image_block(url: str) -> dict:
    inline = shapes.parse_data_url(url)
    if inline:
        media_type, data = inline
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise shapes.bad_request("image_url must be an http(s) URL or a base64 data URL", param="messages")


# --- response -----------------------------------------------------------------------------


def usage_from(raw: dict | None, into: Usage | None = None) -> Usage | None:
    """Latest value of each field wins (Anthropic's stream usage is cumulative); None while
    no block said anything (unknown: the gateway estimates)."""
    read = read_usage(raw, "anthropic")
    if read is None:
        return into
    if into is None:
        return read[0]
    for src, dst in USAGE_FIELDS.items():
        if count(raw.get(src)) is not None:
            setattr(into, dst, getattr(read[0], dst))
    return into


def translate_response(target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
    if not isinstance(payload, dict) or not isinstance(payload.get("content"), list):
        raise shapes.malformed("Anthropic message without content")
    texts, calls, thinking, structured = [], [], [], False
    for block in payload["content"]:
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "thinking":
            thinking.append(block.get("thinking") or "")
        elif block.get("type") == "tool_use" and block.get("name") == STRUCTURED_TOOL:
            texts.append(json.dumps(block.get("input") or {}))
            structured = True
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"),
                                       "arguments": json.dumps(block.get("input") or {})}})
    message: dict = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                     "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:  # the field OpenAI-compatible servers (DeepSeek, vLLM) use for reasoning text
        message["reasoning_content"] = "".join(thinking)
    usage = usage_from(payload.get("usage"))  # None when the answer says nothing: the proxy estimates
    if usage is not None:
        usage.reasoning_tokens = thinking_tokens(target, "".join(thinking))
    reason = FINISH_REASONS.get(payload.get("stop_reason"), "stop")
    choice = {"index": 0, "message": message, "logprobs": None,
              "finish_reason": "stop" if reason == "tool_calls" and structured and not calls else reason}
    body = shapes.completion(id=_chat_id(payload.get("id")), model=payload.get("model") or target.upstream_model,
                             choices=[choice], usage=shapes.openai_usage(usage or Usage()))
    return body, usage


def thinking_tokens(target: PhysicalModelSnap, text: str) -> int:
    """Anthropic bills thinking inside output_tokens and reports no separate count: the
    thinking text is counted (for display only; the charge uses output_tokens)."""
    if not text:
        return 0
    from gateway import tokens

    return min(tokens.count_text(text, target.upstream_model), 2**31)


def _chat_id(message_id: str | None) -> str:
    return f"chatcmpl-{message_id}" if message_id else shapes.new_id()


# --- stream -------------------------------------------------------------------------------


class AnthropicStreamDecoder(shapes.TranslatingDecoder):
    """text_delta -> content; tool_use blocks -> tool_calls deltas (numbered in order of
    appearance); message_delta -> finish chunk; message_stop -> usage chunk (when the
    client asked) and done. message_start only records id, model and input usage."""

    def __init__(self, target: PhysicalModelSnap, include_usage: bool):
        super().__init__(target, include_usage)
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self.structured: set[int] = set()  # block indexes of the structured-output tool: content
        self.thinking: list[str] = []
        self.finished = False

    def feed(self, event: SSEEvent) -> list[dict]:
        if not event.data or event.data == "[DONE]":
            return []
        data = shapes.load_json(event.data, "Anthropic stream event is not JSON")
        if not isinstance(data, dict):
            raise shapes.malformed("Anthropic stream event is not an object")
        handler = self.HANDLERS.get(data.get("type") or event.event)
        # Unknown event types are skipped, as Anthropic asks clients to do.
        with shapes.upstream_answer("Anthropic stream event of an unexpected shape"):
            return handler(self, data) if handler else []

    def on_message_start(self, data: dict) -> list[dict]:
        message = data.get("message") or {}
        if message.get("id"):
            self.id = _chat_id(message["id"])
        self.model = message.get("model") or self.model
        self.reported = usage_from(message.get("usage"), self.reported)
        return []

    def on_block_start(self, data: dict) -> list[dict]:
        block = data.get("content_block") or {}
        if block.get("type") == "text":
            return self.text_delta(block.get("text") or "")
        if block.get("type") != "tool_use":
            return []
        if block.get("name") == STRUCTURED_TOOL:
            self.structured.add(data.get("index", 0))
            return []
        index = self.tool_index[data.get("index", 0)] = len(self.tool_index)
        self.tool_text.append(block.get("name") or "")
        call = {"index": index, "id": block.get("id"), "type": "function",
                "function": {"name": block.get("name"), "arguments": ""}}
        return self.delta({"tool_calls": [call]})

    def on_block_delta(self, data: dict) -> list[dict]:
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            return self.text_delta(delta.get("text") or "")
        if delta.get("type") == "thinking_delta" and delta.get("thinking"):
            self.thinking.append(delta["thinking"])
            self.tool_text.append(delta["thinking"])  # counted as output if the stream is cut
            return self.delta({"reasoning_content": delta["thinking"]})
        if delta.get("type") == "input_json_delta" and data.get("index") in self.structured:
            return self.text_delta(delta.get("partial_json") or "")
        if delta.get("type") == "input_json_delta" and data.get("index") in self.tool_index:
            piece = delta.get("partial_json") or ""
            self.tool_text.append(piece)
            return self.delta({"tool_calls": [{"index": self.tool_index[data["index"]],
                                               "function": {"arguments": piece}}]})
        return []  # signature_delta: not part of the OpenAI answer

    def on_message_delta(self, data: dict) -> list[dict]:
        self.reported = usage_from(data.get("usage"), self.reported)
        reason = (data.get("delta") or {}).get("stop_reason")
        if not reason:
            return []
        reason = FINISH_REASONS.get(reason, "stop")
        structured_only = self.structured and not self.tool_index
        return self._finish("stop" if reason == "tool_calls" and structured_only else reason)

    def _finish(self, reason: str) -> list[dict]:
        if self.finished:
            return []
        self.finished = True
        return self.delta({}, finish_reason=reason)

    def on_message_stop(self, data: dict) -> list[dict]:
        out = self._finish("stop")
        self.done = True
        if self.reported is not None:
            self.reasoning_tokens = thinking_tokens(self.target, "".join(self.thinking)) or None
        return out + self.usage_chunks()

    def on_error(self, data: dict) -> list[dict]:
        error = data.get("error") or {}
        status = 529 if error.get("type") == "overloaded_error" else 502
        raise UpstreamError(status, f"upstream stream error: {shapes.scrub(error.get('message') or 'unknown')}",
                            transient=True, code=error.get("type"))

    HANDLERS = {
        "message_start": on_message_start,
        "content_block_start": on_block_start,
        "content_block_delta": on_block_delta,
        "message_delta": on_message_delta,
        "message_stop": on_message_stop,
        "error": on_error,
    }


# --- errors -------------------------------------------------------------------------------


def translate_error(status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
    """400/413 are the client's (do not fall back). 401/403/404 are transient on purpose:
    they say this route's credential, account or model name is wrong, and another route
    of the same logical model may well work. 408/409/429/5xx/529 are transient."""
    kind, message = _error_fields(body)
    if status in (401, 403):
        return UpstreamError(status, "the upstream rejected this route's credentials", transient=True,
                             code=kind or "upstream_auth_error")
    if status == 404:
        return UpstreamError(status, "the upstream does not know this route's model", transient=True,
                             code=kind or "upstream_not_found")
    if status in TRANSIENT_STATUSES or status >= 500 or kind in TRANSIENT_TYPES:
        return UpstreamError(status, f"upstream error: {message}", transient=True, code=kind,
                             retry_after=shapes.retry_after(headers))
    code = "context_length_exceeded" if "prompt is too long" in message.lower() else kind
    return UpstreamError(status, message, transient=False, type="invalid_request_error", code=code)


def _error_fields(body: bytes) -> tuple[str | None, str]:
    try:
        error = json.loads(body or b"{}").get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return error.get("type"), shapes.scrub(error.get("message") or "upstream request failed")
