"""The contract every upstream wire format implements.

An adapter is pure translation: it never does I/O. The gateway (gateway/upstream.py)
builds the HTTP call the adapter describes, sends it with the process's pooled client,
and hands the answer back to the adapter:

    call = adapter.chat_request(target, body, stream=...)        -> HttpCall
    non-stream 2xx:   adapter.chat_response(target, payload)     -> (OpenAI chat.completion dict, Usage)
    stream 2xx:       dec = adapter.stream_decoder(target, include_usage)
                      for each SSE event: dec.feed(event)       -> list of OpenAI chunk dicts to send
                      dec.close()                                -> final chunks (if any); dec.usage
    any non-2xx:      adapter.error_from(status, body, headers)  -> UpstreamError (transient or not)
    embeddings:       adapter.embeddings_request / embeddings_response (OpenAI shape in and out)

`body` is the client's OpenAI-format request with "model" already replaced by the
physical model's upstream name. Adapters raise UpstreamError(transient=True) for a
malformed answer (the gateway may then fall back, if nothing was sent to the client yet).
Like healthchecks' transports: shared steps here, one subclass per format overriding
only what differs, a registry from provider kind to adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from routing.snapshot import PhysicalModelSnap

# Upstream statuses that mean "this route, not the request, is the problem": fall back.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})


@dataclass(slots=True)
class Usage:
    """Normalized usage. input_tokens counts ALL prompt tokens except cached reads and
    cache writes; cached_input_tokens and cache_creation_tokens are kept apart so each is
    priced at its own rate. Thinking/reasoning tokens count as output."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    # Part of output_tokens (billed as output), shown apart: OpenAI's
    # completion_tokens_details.reasoning_tokens, Gemini's thoughtsTokenCount, Anthropic's thinking.
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.cache_creation_tokens + self.output_tokens


@dataclass(slots=True)
class HttpCall:
    method: str
    url: str
    headers: dict[str, str]
    json: Any = None
    data: bytes | None = None  # a raw body (multipart uploads) when json is None


@dataclass(slots=True)
class SSEEvent:
    data: str
    event: str = ""


class UpstreamError(Exception):
    """An upstream failure. transient=True: try another route (if nothing was sent to the
    client yet). transient=False: the client's fault (400, 413, context length): return
    it as it is, in OpenAI shape. `message` must never contain a credential or a URL."""

    def __init__(self, status: int, message: str, *, transient: bool, type: str = "upstream_error",
                 code: str | None = None, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.transient = transient
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after


class StreamDecoder:
    """Turns one upstream stream into OpenAI chat.completion.chunk dicts.

    `usage` holds the latest normalized usage (for a cut stream the gateway estimates
    what is missing from `text` with tiktoken). Chunks carrying usage are only returned
    to the client when include_usage is true (the client asked for it)."""

    def __init__(self, target: PhysicalModelSnap, include_usage: bool):
        self.target = target
        self.include_usage = include_usage
        self.usage: Usage | None = None
        self.text_parts: list[str] = []
        self.done = False

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def feed(self, event: SSEEvent) -> list[dict]:
        raise NotImplementedError

    def close(self) -> list[dict]:
        return []


@dataclass(slots=True)
class Adapter:
    kind: str = ""
    extra: dict = field(default_factory=dict)

    def chat_request(self, target: PhysicalModelSnap, body: dict, *, stream: bool) -> HttpCall:
        raise NotImplementedError

    def chat_response(self, target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
        raise NotImplementedError

    def stream_decoder(self, target: PhysicalModelSnap, include_usage: bool) -> StreamDecoder:
        raise NotImplementedError

    def embeddings_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        raise UpstreamError(400, f"{self.kind} models do not serve embeddings", transient=False,
                            type="invalid_request_error", code="unsupported_endpoint")

    def embeddings_response(self, target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
        raise NotImplementedError

    def error_from(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        raise NotImplementedError

    # Media (gateway/media.py): the OpenAI wire format serves them; other kinds refuse with a 400.
    def images_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        raise self.unsupported("image generation")

    def images_response(self, target: PhysicalModelSnap, payload: dict) -> dict:
        return payload  # the OpenAI shape: {"created", "data": [{"url" | "b64_json"}]}

    def speech_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        raise self.unsupported("speech")

    def audio_request(self, target: PhysicalModelSnap, endpoint: str, data: bytes, content_type: str) -> HttpCall:
        raise self.unsupported("transcription")

    def unsupported(self, what: str) -> UpstreamError:
        return UpstreamError(400, f"{what.capitalize()} is not supported for this provider kind ({self.kind}).",
                             transient=False, type="invalid_request_error", code="unsupported_endpoint")


# kind -> Adapter instance; each adapter module registers itself (gateway/adapters/__init__.py imports them).
REGISTRY: dict[str, Adapter] = {}


def register(*kinds: str):
    def wrap(cls):
        for kind in kinds:
            REGISTRY[kind] = cls(kind=kind)
        return cls

    return wrap
