"""OpenAI and OpenAI-compatible upstreams (DeepSeek, Qwen, Kimi, vLLM, Ollama, …): pass-through.

The client's body goes upstream as it is (unknown parameters included) with "model"
replaced. For streams we always ask for usage (stream_options.include_usage) so every
call can be priced, and drop the usage-only chunk again when the client did not ask.
"""

from __future__ import annotations

import json

from gateway.adapters.usage import read_usage
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

# Upstream statuses that say the route (our credential, our model name) is broken, not
# the client's request: fall back, and hide the upstream's message (it may quote the key).
ROUTE_FAULT_STATUSES = frozenset({401, 402, 403, 404})


def malformed(what: str) -> UpstreamError:
    return UpstreamError(502, f"The upstream model returned {what}.", transient=True, code="bad_upstream_answer")


def usage_from_openai(raw) -> Usage | None:
    read = read_usage(raw, "openai")  # the one reader (gateway/adapters/usage.py); None = unknown
    return read[0] if read else None


def retry_after_from(headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None


def _error_code(body: bytes) -> str | None:
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return None
    return (err.get("code") or err.get("type")) if isinstance(err, dict) else None


def openai_error(status: int, body: bytes, headers) -> UpstreamError:
    retry_after = retry_after_from(headers)
    if status == 429 and _error_code(body) == "insufficient_quota":
        # The provider account is out of money (not a rate limit): the route falls over and
        # cools down for GATEWAY_QUOTA_COOLDOWN, and the operator is alerted (gateway/fallback.py).
        return UpstreamError(429, "The upstream provider account is out of quota.", transient=True,
                             type="api_error", code="insufficient_quota")
    if status in TRANSIENT_STATUSES or status >= 500:
        return UpstreamError(status, "The upstream model is unavailable.", transient=True, type="api_error",
                             code="upstream_unavailable", retry_after=retry_after)
    if status in ROUTE_FAULT_STATUSES:
        return UpstreamError(status, "The upstream model refused the gateway's credentials or model.",
                             transient=True, type="api_error", code="upstream_route_error")
    message, type_, code, param = "The upstream model rejected the request.", "invalid_request_error", None, None
    try:
        err = json.loads(body).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            type_ = str(err.get("type") or type_)
            code, param = err.get("code"), err.get("param")
            if code is not None and not isinstance(code, str):
                code = str(code)  # vLLM sends the HTTP status as an integer; OpenAI's spec says string
        elif isinstance(err, str):
            message = err
    except (ValueError, AttributeError):
        pass
    return UpstreamError(status, message, transient=False, type=type_, code=code, param=param)


def _flatten_parts(delta: dict, content) -> str:
    """A delta whose content is a list of parts (Mistral's reasoning models stream
    [{"type": "thinking", "thinking": [{"type": "text", ...}]}, {"type": "text", "text": ...}],
    https://docs.mistral.ai/capabilities/reasoning/): the text parts become the string OpenAI
    clients append, the thinking parts reasoning_content. Edits the delta in place."""
    if not isinstance(content, list):
        raise malformed("a stream chunk whose content is neither text nor parts")
    text, thinking = [], []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif part.get("type") == "thinking":
            inner = part.get("thinking")
            thinking.append(inner if isinstance(inner, str) else "".join(
                p.get("text") or "" for p in inner or () if isinstance(p, dict)))
    delta["content"] = "".join(text)
    if thinking:
        delta["reasoning_content"] = "".join(thinking)
    return delta["content"]


class OpenAIStreamDecoder(StreamDecoder):
    def feed(self, event: SSEEvent) -> list[dict]:
        data = event.data
        if data == "[DONE]":
            self.done = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            raise malformed("a malformed stream chunk") from None
        if not isinstance(chunk, dict):
            raise malformed("a malformed stream chunk")
        if "error" in chunk:
            raise UpstreamError(502, "The upstream model failed while streaming.", transient=True,
                                type="api_error", code="upstream_stream_error")
        choices = chunk.get("choices")
        if choices:
            for choice in choices:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    if type(content) is not str:
                        content = _flatten_parts(delta, content)
                    self.text_parts.append(content)
        raw_usage = chunk.get("usage")
        if raw_usage:
            self.usage = usage_from_openai(raw_usage)
        if not self.include_usage and "usage" in chunk:
            if not choices:
                return []  # the usage-only chunk we asked for on the client's behalf
            del chunk["usage"]
        return [chunk]


@register("openai", "openai_compatible")
class OpenAIAdapter(Adapter):
    def headers(self, target: PhysicalModelSnap) -> dict[str, str]:
        return {"Authorization": "Bearer " + target.provider.api_key, "Content-Type": "application/json"}

    def url(self, target: PhysicalModelSnap, endpoint: str) -> str:
        return f"{target.provider.base_url}/{endpoint}"

    def chat_request(self, target: PhysicalModelSnap, body: dict, *, stream: bool) -> HttpCall:
        if stream:
            options = body.get("stream_options")
            body["stream_options"] = {**options, "include_usage": True} if isinstance(options, dict) else {
                "include_usage": True}
        return HttpCall("POST", self.url(target, "chat/completions"), self.headers(target), body)

    def chat_response(self, target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise malformed("an answer without choices")
        return payload, usage_from_openai(payload.get("usage"))

    def stream_decoder(self, target: PhysicalModelSnap, include_usage: bool) -> StreamDecoder:
        return OpenAIStreamDecoder(target, include_usage)

    def embeddings_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        return HttpCall("POST", self.url(target, "embeddings"), self.headers(target), body)

    def embeddings_response(self, target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise malformed("an embeddings answer without data")
        return payload, usage_from_openai(payload.get("usage"))

    def error_from(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return openai_error(status, body, headers)

    # Media: the body goes as it is (model replaced); Azure inherits these with its own url().
    def images_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        return HttpCall("POST", self.url(target, "images/generations"), self.headers(target), body)

    def speech_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        return HttpCall("POST", self.url(target, "audio/speech"), self.headers(target), body)

    def audio_request(self, target: PhysicalModelSnap, endpoint: str, data: bytes, content_type: str) -> HttpCall:
        headers = {**self.headers(target), "Content-Type": content_type}
        return HttpCall("POST", self.url(target, f"audio/{endpoint}"), headers, data=data)
