"""A fake Gemini API (generativelanguage v1beta), faithful to the wire format:
POST /v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse (each SSE
`data:` a whole GenerateContentResponse with CUMULATIVE usageMetadata), :embedContent,
:batchEmbedContents; key in x-goog-api-key (a missing key is 403 PERMISSION_DENIED, a
wrong one 400 INVALID_ARGUMENT with reason API_KEY_INVALID, as Google answers); errors
{"error": {"code", "message", "status", "details"}}.

    upstream.script(reply(text="Hi", usage=usage(prompt=120, cached=100, candidates=8, thoughts=30)))
    upstream.script(stream(text=["Hel", "lo"], usage=usage(prompt=20, candidates=5, thoughts=7)))
    upstream.script(error(429, "RESOURCE_EXHAUSTED", retry_delay="3s"))
"""

from __future__ import annotations

import json
import uuid

from aiohttp import web

from tests.fakes.server import RECORDED, Behaviour, FakeServer, json_reply, raw_reply, sse_reply

MODEL = "gemini-fake-2.5"


def usage(prompt: int = 20, cached: int = 0, candidates: int = 8, thoughts: int = 0) -> dict:
    """usageMetadata as Gemini reports it: promptTokenCount INCLUDES cachedContentTokenCount."""
    meta = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates + thoughts}
    if cached:
        meta["cachedContentTokenCount"] = cached
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    return meta


def candidate(*, text: str | None = "Hello from Gemini.", function_calls=(), finish: str | None = "STOP",
              thought: str | None = None, index: int = 0, signature: str | None = None) -> dict:
    parts = [{"text": thought, "thought": True}] if thought else []
    if text is not None:
        parts.append({"text": text})
    for name, args in function_calls:
        part = {"functionCall": {"name": name, "args": args}}
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    out = {"content": {"role": "model", "parts": parts}, "index": index}
    if finish:
        out["finishReason"] = finish
    return out


def response(*, candidates: list[dict] | None = None, usage_: dict | None = None, model: str = MODEL, **kw) -> dict:
    return {"candidates": candidates or [candidate(**kw)], "usageMetadata": usage_ or usage(),
            "modelVersion": model, "responseId": uuid.uuid4().hex[:22]}


def reply(**kw) -> Behaviour:
    if "usage" in kw:
        kw["usage_"] = kw.pop("usage")
    return json_reply(response(**kw))


def stream_chunks(*, text: list[str] = ("Hello", " from", " Gemini."), function_calls=(), usage_: dict | None = None,
                  finish: str = "STOP", thought: str | None = None, signature: str | None = None,
                  model: str = MODEL) -> list[dict]:
    """One GenerateContentResponse per piece. Every chunk carries usageMetadata, cumulative:
    candidatesTokenCount grows, the last chunk has the totals and the finishReason."""
    final = usage_ or usage()
    response_id = uuid.uuid4().hex[:22]
    pieces: list[dict] = []
    if thought:
        pieces.append({"text": thought, "thought": True})
    pieces += [{"text": t} for t in text]
    for name, args in function_calls:
        part = {"functionCall": {"name": name, "args": args}}
        if signature:
            part["thoughtSignature"] = signature
        pieces.append(part)
    chunks = []
    for i, part in enumerate(pieces):
        last = i == len(pieces) - 1
        so_far = dict(final) if last else {
            "promptTokenCount": final["promptTokenCount"],
            "candidatesTokenCount": max(1, final["candidatesTokenCount"] * (i + 1) // (len(pieces) + 1)),
        }
        cand = {"content": {"role": "model", "parts": [part]}, "index": 0}
        if last:
            cand["finishReason"] = finish
        chunks.append({"candidates": [cand], "usageMetadata": so_far, "modelVersion": model,
                       "responseId": response_id})
    return chunks


def stream(*, delay: float = 0.0, drop_after: int | None = None, stall_after: int | None = None,
           chunks: list | None = None, **kw) -> Behaviour:
    if "usage" in kw:
        kw["usage_"] = kw.pop("usage")
    chunks = chunks if chunks is not None else stream_chunks(**kw)
    events = [(None, c if isinstance(c, str) else json.dumps(c)) for c in chunks]
    return sse_reply(events, delay=delay, drop_after=drop_after, stall_after=stall_after)


def error(status: int, google_status: str = "INTERNAL", message: str = "An internal error has occurred.",
          details: list | None = None, retry_after: str | None = None, retry_delay: str | None = None) -> Behaviour:
    details = list(details or ())
    if retry_delay:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    body = {"error": {"code": status, "message": message, "status": google_status}}
    if details:
        body["error"]["details"] = details
    return json_reply(body, status=status, headers={"retry-after": retry_after} if retry_after else None)


def malformed() -> Behaviour:
    return raw_reply(b'{"candidates": [{"content": ', status=200)


def embedding_values(text: str, dims: int = 8) -> list[float]:
    seed = sum(text.encode()) or 1
    return [((seed * (i + 7)) % 97) / 97 for i in range(dims)]


class GeminiFake(FakeServer):
    def __init__(self, api_key: str = "AIza-fake-gemini-key"):
        super().__init__()
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        """What a provider's base URL is set to (like https://generativelanguage.googleapis.com)."""
        return self.url

    async def default(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.path.removeprefix("/v1beta/models/").partition(":")
        rejected = self.reject(request, model)
        if rejected:
            return await rejected(request)
        body = request[RECORDED].json or {}
        if method == "generateContent":
            return await reply(model=model)(request)
        if method == "streamGenerateContent":
            if request.query.get("alt") == "sse":
                return await stream(model=model)(request)
            return await json_reply(stream_chunks(model=model))(request)  # without alt=sse: one JSON array
        if method == "embedContent":
            return await json_reply({"embedding": {"values": embedding_values(_text(body))}})(request)
        if method == "batchEmbedContents":
            vectors = [{"values": embedding_values(_text(r))} for r in body.get("requests") or ()]
            return await json_reply({"embeddings": vectors})(request)
        return await error(404, "NOT_FOUND", f"Method {method} not found")(request)

    def reject(self, request: web.Request, model: str) -> Behaviour | None:
        if request.method != "POST" or not request.path.startswith("/v1beta/models/") or not model:
            return error(404, "NOT_FOUND", "Requested entity was not found.")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
        if key != self.api_key:
            return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                         details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                   "domain": "googleapis.com"}])
        if request[RECORDED].json is None:
            return error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        return _reject_schema(((request[RECORDED].json or {}).get("generationConfig") or {}).get("responseSchema"))


def _reject_schema(schema, where: str = "generation_config.response_schema") -> Behaviour | None:
    """responseSchema is an OpenAPI subset (https://ai.google.dev/api/caching#Schema): a JSON
    Schema keyword outside it is refused as the API does (error text as quoted in
    QuantumNous/new-api#1037 and googleapis/python-genai#1815: Unknown name "$schema" / "additional_properties"
    at 'generation_config.response_schema': Cannot find field)."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("additionalProperties", "$schema", "strict"):
                return error(400, "INVALID_ARGUMENT", f'Invalid JSON payload received. Unknown name "{key}" at '
                                                      f"'{where}': Cannot find field.")
            inner = _reject_schema(value, where) if key in ("properties", "items") or isinstance(value, dict) else None
            if inner:
                return inner
    return None


def _text(request_body: dict) -> str:
    return "".join(p.get("text") or "" for p in ((request_body.get("content") or {}).get("parts") or ()))
