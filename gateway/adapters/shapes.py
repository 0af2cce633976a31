"""OpenAI wire shapes and small parsing helpers shared by the translating adapters
(anthropic, gemini). Pure functions, no I/O."""

from __future__ import annotations

import email.utils
import json
from contextlib import contextmanager
import re
import time
import uuid

from gateway.adapters.base import StreamDecoder, UpstreamError, Usage
from routing.snapshot import PhysicalModelSnap

# Anything URL- or key-shaped is cut out of upstream error messages before they reach a
# client or a log: an upstream may echo the URL it was called on or part of a key.
_SECRETISH = re.compile(r"https?://\S+|\b(?:sk|key|AIza)[-_A-Za-z0-9]{12,}|\b[A-Za-z0-9_-]{32,}\b")
MAX_ERROR_MESSAGE = 500


def new_id(prefix: str = "chatcmpl-") -> str:
    return prefix + uuid.uuid4().hex[:24]


def content_text(content) -> str:
    """The text of a message's or delta's content: a string, or a list of parts (some
    OpenAI-compatible servers send [{"type": "text", "text": ...}]); anything else: ""."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def openai_usage(usage: Usage, reasoning_tokens: int | None = None) -> dict:
    """OpenAI's usage object: prompt_tokens includes cached reads (and, here, cache writes)."""
    prompt = usage.input_tokens + usage.cached_input_tokens + usage.cache_creation_tokens
    reasoning_tokens = reasoning_tokens or usage.reasoning_tokens
    out = {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }
    if reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return out


def completion(*, id: str, model: str, choices: list[dict], usage: dict) -> dict:
    return {"id": id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage}


def chunk(*, id: str, model: str, created: int, delta: dict, index: int = 0, finish_reason: str | None = None) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}]}


def usage_chunk(*, id: str, model: str, created: int, usage: dict) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage}


def parse_data_url(url: str) -> tuple[str, str] | None:
    """data:image/png;base64,AAAA -> ("image/png", "AAAA"); None when not a base64 data URL."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or ";base64" not in header:
        return None
    return header.split(";", 1)[0] or "application/octet-stream", data


def image_url_of(part: dict) -> str:
    image = part.get("image_url")
    return image.get("url", "") if isinstance(image, dict) else str(image or "")


def text_of(content) -> str:
    """The text of an OpenAI message content (a string, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")


def stop_list(stop) -> list[str] | None:
    if stop is None:
        return None
    stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]
    return stops or None


# reasoning_effort -> a thinking budget in tokens, the figures Google's OpenAI compatibility
# layer uses for Gemini (https://ai.google.dev/gemini-api/docs/openai, "low, medium and high
# map to 1K, 8K and 24K thinking tokens"; "none" turns thinking off).
REASONING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}


def reasoning_budget(body: dict) -> int | None:
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in REASONING_BUDGETS:
        raise bad_request(f"reasoning_effort must be one of {', '.join(REASONING_BUDGETS)}", param="reasoning_effort")
    return REASONING_BUDGETS[effort]


def json_schema_of(body: dict) -> tuple[str, dict] | None:
    """response_format json_schema / json_object -> (name, JSON schema); None for text or none."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "json_schema":
        spec = fmt["json_schema"]
        return spec.get("name") or "response", spec.get("schema") or {"type": "object"}
    if kind == "json_object":
        return "response", {"type": "object"}
    if kind == "text":
        return None
    raise bad_request(f"unsupported response_format type: {kind!r}", param="response_format")


def max_output_tokens(body: dict) -> int | None:
    value = body.get("max_completion_tokens")
    return value if value is not None else body.get("max_tokens")


def tool_arguments(call: dict) -> dict:
    """An assistant tool call's JSON arguments as an object (the client's fault if invalid)."""
    raw = (call.get("function") or {}).get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise bad_request("tool_calls[].function.arguments is not valid JSON", param="messages") from None
    return args if isinstance(args, dict) else {"value": args}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> UpstreamError:
    return UpstreamError(400, message, transient=False, type="invalid_request_error", param=param, code=code)


def malformed(what: str) -> UpstreamError:
    """A malformed upstream answer: the route is broken, so the gateway may fall back."""
    return UpstreamError(502, f"malformed upstream answer: {what}", transient=True, code="bad_upstream_response")


# What a translation raises when a field has an unexpected type or shape.
SHAPE_ERRORS = (KeyError, TypeError, AttributeError, ValueError, IndexError)


@contextmanager
def client_request():
    """A request we cannot translate is the client's fault: a 400 that does not fall back
    (and does not count against the route's circuit breaker), never a 5xx."""
    try:
        yield
    except SHAPE_ERRORS as exc:
        raise bad_request(f"the request cannot be translated for this model ({type(exc).__name__}: "
                          f"{scrub(str(exc))[:120]})") from None


@contextmanager
def upstream_answer(what: str):
    """An answer of the wrong shape is the route's fault: transient, the gateway may fall back."""
    try:
        yield
    except SHAPE_ERRORS:
        raise malformed(what) from None


def load_json(data: bytes | str, what: str):
    try:
        return json.loads(data)
    except ValueError:
        raise malformed(what) from None


def retry_after(headers: dict[str, str]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if any."""
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    raw = (lowered.get("retry-after") or "").strip()
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def scrub(message: str) -> str:
    return _SECRETISH.sub("[redacted]", str(message or ""))[:MAX_ERROR_MESSAGE]


class TranslatingDecoder(StreamDecoder):
    """Shared stream bookkeeping for formats that are not OpenAI's.

    The role chunk is held back until the first real delta: the gateway sends response
    headers on the first chunk a decoder returns, and every failure before that point can
    still fall back to another route (an Anthropic stream may open with message_start and
    then fail with an `error` event).

    `usage` is what the upstream reported, while the stream is complete. For a stream cut
    before its end (done is False) the reported output is stale, so the output is the
    larger of the reported count and a tiktoken count of what arrived, marked estimated;
    None when the upstream reported nothing yet (the gateway then counts everything)."""

    def __init__(self, target: PhysicalModelSnap, include_usage: bool):
        super().__init__(target, include_usage)
        self.reported: Usage | None = None
        self.id = new_id()
        self.model = target.upstream_model
        self.created = int(time.time())
        self.role_sent: set[int] = set()
        self.tool_text: list[str] = []
        self.reasoning_tokens: int | None = None

    @property
    def usage(self) -> Usage | None:
        reported = self.reported
        if reported is None or self.done:
            return reported
        from gateway import tokens

        counted = tokens.count_text(self.text + "".join(self.tool_text), self.target.upstream_model)
        if counted <= reported.output_tokens:
            return reported
        return Usage(input_tokens=reported.input_tokens, cached_input_tokens=reported.cached_input_tokens,
                     cache_creation_tokens=reported.cache_creation_tokens, output_tokens=counted, estimated=True)

    @usage.setter
    def usage(self, value) -> None:  # the base class initializes it; we derive it
        pass

    def delta(self, delta: dict, index: int = 0, finish_reason: str | None = None) -> list[dict]:
        out = []
        if index not in self.role_sent:
            self.role_sent.add(index)
            out.append(chunk(id=self.id, model=self.model, created=self.created, index=index,
                             delta={"role": "assistant", "content": ""}))
        out.append(chunk(id=self.id, model=self.model, created=self.created, index=index, delta=delta,
                         finish_reason=finish_reason))
        return out

    def text_delta(self, text: str, index: int = 0) -> list[dict]:
        if not text:
            return []
        self.text_parts.append(text)
        return self.delta({"content": text}, index)

    def usage_chunks(self) -> list[dict]:
        if not self.include_usage or self.reported is None:
            return []
        usage = openai_usage(self.reported, self.reasoning_tokens)
        return [usage_chunk(id=self.id, model=self.model, created=self.created, usage=usage)]
