"""A fake Anthropic Messages API (POST /v1/messages), faithful to the wire format:
x-api-key auth, anthropic-version required, max_tokens required, JSON errors
{"type": "error", "error": {"type", "message"}}, and streams made of message_start
(input and cache usage) / content_block_* / ping / message_delta (CUMULATIVE output
usage) / message_stop events.

Script answers with the builders below:

    upstream.script(reply(text="Hi", usage=usage(input=25, output=10, cache_read=100)))
    upstream.script(stream(text=["Hel", "lo"], output_steps=[10, 30]))
    upstream.script(error(529, "overloaded_error", retry_after="2"))
"""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from tests.fakes.server import RECORDED, Behaviour, FakeServer, json_reply, raw_reply, sse_reply

MODEL = "claude-fake-4"


def usage(input: int = 25, output: int = 10, cache_read: int = 0, cache_write: int = 0) -> dict:
    return {"input_tokens": input, "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read, "output_tokens": output}


def message(*, text: str | None = "Hello from Claude.", tool_calls: list[tuple[str, dict]] = (),
            stop_reason: str | None = None, usage_: dict | None = None, model: str = MODEL,
            thinking: str | None = None) -> dict:
    # A thinking block comes first, with its signature (shape from
    # https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking, "Example response").
    content = [{"type": "thinking", "thinking": thinking, "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}] \
        if thinking else []
    content += [{"type": "text", "text": text}] if text is not None else []
    content += [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": name, "input": args}
                for name, args in tool_calls]
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason or ("tool_use" if tool_calls else "end_turn"),
            "stop_sequence": None, "usage": usage_ or usage()}


def reply(**kw) -> Behaviour:
    """A non-streamed answer (kw: see message(); usage=... is accepted as usage_)."""
    if "usage" in kw:
        kw["usage_"] = kw.pop("usage")
    return json_reply(message(**kw))


def stream_events(*, text: list[str] = ("Hello", " from", " Claude."), tool_calls: list[tuple[str, list[str]]] = (),
                  input_usage: dict | None = None, output_steps: list[int] = (12,), stop_reason: str | None = None,
                  repeat_input_in_delta: bool = False, thinking: str | None = None, model: str = MODEL) -> list:
    """The SSE events of one streamed message. tool_calls: (name, JSON argument pieces).
    output_steps: cumulative output_tokens of successive message_delta events (only the
    last carries the stop_reason), as Anthropic reports them."""
    start_usage = dict(input_usage or usage(output=0))
    start_usage["output_tokens"] = 1
    msg = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
           "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    events = [("message_start", {"type": "message_start", "message": msg}), ("ping", {"type": "ping"})]
    index = 0
    if thinking:
        events += _block(index, {"type": "thinking", "thinking": ""},
                         [{"type": "thinking_delta", "thinking": thinking}, {"type": "signature_delta",
                                                                             "signature": "c2lnbmF0dXJl"}])
        index += 1
    if text:
        events += _block(index, {"type": "text", "text": ""}, [{"type": "text_delta", "text": t} for t in text])
        index += 1
    for name, pieces in tool_calls:
        block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:20]}", "name": name, "input": {}}
        events += _block(index, block, [{"type": "input_json_delta", "partial_json": p} for p in pieces])
        index += 1
    reason = stop_reason or ("tool_use" if tool_calls else "end_turn")
    for i, out in enumerate(output_steps):
        last = i == len(output_steps) - 1
        delta_usage = {"output_tokens": out}
        if repeat_input_in_delta:
            delta_usage.update({k: v for k, v in start_usage.items() if k != "output_tokens"})
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason if last else None, "stop_sequence": None},
                                         "usage": delta_usage}))
    events.append(("message_stop", {"type": "message_stop"}))
    return [(name, json.dumps(data)) for name, data in events]


def _block(index: int, block: dict, deltas: list[dict]) -> list:
    out = [("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})]
    out += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}) for d in deltas]
    out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


def stream(*, delay: float = 0.0, drop_after: int | None = None, stall_after: int | None = None,
           events: list | None = None, **kw) -> Behaviour:
    return sse_reply(events if events is not None else stream_events(**kw), delay=delay, drop_after=drop_after,
                     stall_after=stall_after)


def stream_error_midway(error_type: str = "overloaded_error", after: int = 4, **kw) -> Behaviour:
    """A stream that starts normally, then sends an `error` event (as Anthropic does when
    it is overloaded mid-answer)."""
    events = stream_events(**kw)[:after]
    events.append(("error", json.dumps({"type": "error", "error": {"type": error_type, "message": "Overloaded"}})))
    return sse_reply(events)


def error(status: int, error_type: str = "api_error", message: str = "something went wrong",
          retry_after: str | None = None) -> Behaviour:
    headers = {"retry-after": retry_after} if retry_after else None
    body = {"type": "error", "error": {"type": error_type, "message": message},
            "request_id": f"req_{uuid.uuid4().hex[:20]}"}
    return json_reply(body, status=status, headers=headers)


def malformed() -> Behaviour:
    return raw_reply(b'{"id": "msg_1", "type": "message", "content": ', status=200)


class AnthropicFake(FakeServer):
    def __init__(self, api_key: str = "sk-ant-fake-key"):
        super().__init__()
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        """What a provider's base URL is set to (like https://api.anthropic.com, no /v1)."""
        return self.url

    async def default(self, request: web.Request) -> web.StreamResponse:
        rejected = self.reject(request)
        if rejected:
            return await rejected(request)
        if (request[RECORDED].json or {}).get("stream"):
            return await stream()(request)
        return await reply()(request)

    def reject(self, request: web.Request) -> Behaviour | None:
        """What the real API answers to a wrong path, key or a request missing a required field."""
        body = request[RECORDED].json
        if request.method != "POST" or request.path != "/v1/messages":
            return error(404, "not_found_error", f"Not found: {request.path}")
        if request.headers.get("x-api-key") != self.api_key:
            return error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return error(400, "invalid_request_error", "anthropic-version: header is required")
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
            return error(400, "invalid_request_error", "max_tokens: Field required")
        return self.reject_thinking(body)

    @staticmethod
    def reject_thinking(body: dict) -> Behaviour | None:
        """Extended thinking's documented constraints
        (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking: budget_tokens
        >= 1024 and < max_tokens; "Thinking isn't compatible with temperature or top_k
        modifications as well as forced tool use"). Messages as the API words them (quoted in
        mastra-ai/mastra#7507 and BerriAI/litellm#17129 for the tool_choice one)."""
        thinking = body.get("thinking")
        if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
            return None
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return error(400, "invalid_request_error",
                         "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024")
        if budget >= body["max_tokens"]:
            return error(400, "invalid_request_error", "`max_tokens` must be greater than `thinking.budget_tokens`")
        if body.get("temperature") not in (None, 1):
            return error(400, "invalid_request_error",
                         "`temperature` may only be set to 1 when thinking is enabled or in interleaved thinking mode.")
        if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
            return error(400, "invalid_request_error", "Thinking may not be enabled when tool_choice forces tool use.")
        return None
