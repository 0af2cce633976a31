"""Google Gemini API (generateContent / streamGenerateContent?alt=sse / embedContent)
<-> OpenAI chat completions and embeddings.

The key travels in the x-goog-api-key header, never in the URL (URLs end up in logs).

Usage: promptTokenCount INCLUDES cachedContentTokenCount, so input = prompt − cached;
thoughtsTokenCount (thinking) is output, like candidatesTokenCount. In a stream every
chunk's usageMetadata is cumulative: the latest replaces the previous, never adds.

Gemini 2.5+ attaches a thoughtSignature to a function call, and wants it back with the
call in the next turn. OpenAI clients only echo the tool call id, so the signature rides
inside the id (`call_<hex>` + SIGNATURE_MARK + signature) and is split out again.
"""

from __future__ import annotations

import json
import mimetypes
import uuid
from contextvars import ContextVar
from urllib.parse import quote

from gateway.adapters import gemini_images, shapes
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

SIGNATURE_MARK = "__ts__"
FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# JSON Schema keywords Gemini's function-declaration schema (an OpenAPI subset) rejects.
UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "$id", "$comment", "additionalProperties", "strict"})
# Google answers a wrong key with 400 INVALID_ARGUMENT; that is the route's fault, not the client's.
KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED"})

# Gemini reports no usage for embeddings and embeddings_response(target, payload) never sees
# the request, so embeddings_request counts the input and leaves the count here. A ContextVar
# is per asyncio task: the gateway builds the call and reads the answer in the same task, and
# concurrent calls (other tasks) cannot see or overwrite each other's count.
_input_tokens: ContextVar[int | None] = ContextVar("gemini_embedding_input_tokens", default=None)


def api_root(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith(("/v1beta", "/v1", "/v1alpha")) else f"{base}/v1beta"


def model_url(base_url: str, model: str, method: str) -> str:
    name = model.removeprefix("models/")
    return f"{api_root(base_url)}/models/{quote(name, safe='-._@')}:{method}"


@register("gemini")
class GeminiAdapter(Adapter):
    def headers(self, target: PhysicalModelSnap) -> dict[str, str]:
        return {"x-goog-api-key": target.provider.api_key, "content-type": "application/json"}

    def chat_request(self, target: PhysicalModelSnap, body: dict, *, stream: bool) -> HttpCall:
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        with shapes.client_request():
            payload = translate_request(body)
        return HttpCall("POST", model_url(target.provider.base_url, body["model"], method), self.headers(target),
                        payload)

    def chat_response(self, target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
        with shapes.upstream_answer("Gemini answer of an unexpected shape"):
            return translate_response(target, payload)

    def stream_decoder(self, target: PhysicalModelSnap, include_usage: bool) -> StreamDecoder:
        return GeminiStreamDecoder(target, include_usage)

    def embeddings_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        with shapes.client_request():
            method, payload = translate_embeddings_request(body)
        _input_tokens.set(count_input(target, body))
        return HttpCall("POST", model_url(target.provider.base_url, body["model"], method), self.headers(target),
                        payload)

    def embeddings_response(self, target: PhysicalModelSnap, payload: dict,
                            body: dict | None = None) -> tuple[dict, Usage | None]:
        count = count_input(target, body) if body is not None else _input_tokens.get()
        with shapes.upstream_answer("Gemini embeddings answer of an unexpected shape"):
            return translate_embeddings_response(target, payload, count)

    def error_from(self, status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
        return translate_error(status, body, headers)

    # Imagen models (gateway/adapters/gemini_images.py); speech and transcription stay unsupported.
    def images_request(self, target: PhysicalModelSnap, body: dict) -> HttpCall:
        return HttpCall("POST", model_url(target.provider.base_url, body["model"], "predict"), self.headers(target),
                        gemini_images.translate_request(body))

    def images_response(self, target: PhysicalModelSnap, payload: dict) -> dict:
        return gemini_images.translate_response(payload)


# --- request ------------------------------------------------------------------------------


def translate_request(body: dict) -> dict:
    system, contents = translate_messages(body.get("messages") or [])
    out: dict = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": system}]}
    config = generation_config(body)
    if config:
        out["generationConfig"] = config
    _copy_tools(body, out)
    return out


def generation_config(body: dict) -> dict:
    config: dict = {}
    pairs = (("temperature", "temperature"), ("top_p", "topP"), ("seed", "seed"),
             ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))
    for src, dst in pairs:
        if body.get(src) is not None:
            config[dst] = body[src]
    if shapes.max_output_tokens(body) is not None:
        config["maxOutputTokens"] = shapes.max_output_tokens(body)
    if shapes.stop_list(body.get("stop")):
        config["stopSequences"] = shapes.stop_list(body.get("stop"))
    if (body.get("n") or 1) > 1:
        config["candidateCount"] = body["n"]
    structured = shapes.json_schema_of(body)
    if structured is not None:
        # https://ai.google.dev/api/generate-content#generationconfig: responseSchema (an OpenAPI
        # subset) needs responseMimeType application/json; json_object sends the MIME type alone.
        config["responseMimeType"] = "application/json"
        if body["response_format"].get("type") == "json_schema":
            config["responseSchema"] = clean_schema(structured[1])
    budget = shapes.reasoning_budget(body)
    if budget is not None:
        # https://ai.google.dev/gemini-api/docs/thinking: thinkingConfig.thinkingBudget (0 = off)
        config["thinkingConfig"] = {"thinkingBudget": budget}
    return config


def _copy_tools(body: dict, out: dict) -> None:
    functions = [t["function"] for t in body.get("tools") or () if t.get("type", "function") == "function"]
    if functions:
        out["tools"] = [{"functionDeclarations": [function_declaration(f) for f in functions]}]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        config = {"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"]]}
    elif isinstance(choice, str) and choice in TOOL_MODES:
        config = {"mode": TOOL_MODES[choice]}
    else:
        return
    out["toolConfig"] = {"functionCallingConfig": config}


def function_declaration(function: dict) -> dict:
    declaration = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    if function.get("parameters"):
        declaration["parameters"] = clean_schema(function["parameters"])
    return declaration


def clean_schema(schema):
    if isinstance(schema, dict):
        return {k: clean_schema(v) for k, v in schema.items() if k not in UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(schema, list):
        return [clean_schema(v) for v in schema]
    return schema


def translate_messages(messages: list[dict]) -> tuple[str, list[dict]]:
    """System prompts joined apart; user/assistant/tool turns as user/model contents, with
    consecutive same-role turns merged."""
    system: list[str] = []
    contents: list[dict] = []
    call_names: dict[str, str] = {}  # tool_call id -> function name (functionResponse needs the name)
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(shapes.text_of(message.get("content")))
        elif role == "user":
            _append(contents, "user", content_parts(message.get("content")))
        elif role == "assistant":
            _append(contents, "model", assistant_parts(message, call_names))
        elif role == "tool":
            _append(contents, "user", [function_response(message, call_names)])
        else:
            raise shapes.bad_request(f"unsupported message role: {role!r}", param="messages")
    return "\n\n".join(s for s in system if s), contents


def _append(contents: list[dict], role: str, parts: list[dict]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def content_parts(content) -> list[dict]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and part.get("text"):
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            parts.append(image_part(shapes.image_url_of(part)))
    return parts


def image_part(url: str) -> dict:
    inline = shapes.parse_data_url(url)
    if inline:
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    if url.startswith(("http://", "https://", "gs://")):
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise shapes.bad_request("image_url must be an http(s) URL or a base64 data URL", param="messages")


def assistant_parts(message: dict, call_names: dict[str, str]) -> list[dict]:
    parts = content_parts(message.get("content"))
    for call in message.get("tool_calls") or ():
        name = (call.get("function") or {}).get("name") or ""
        call_id = call.get("id") or ""
        call_names[call_id] = name
        part: dict = {"functionCall": {"name": name, "args": shapes.tool_arguments(call)}}
        _, _, signature = call_id.partition(SIGNATURE_MARK)
        if signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def function_response(message: dict, call_names: dict[str, str]) -> dict:
    text = shapes.text_of(message.get("content"))
    try:
        result = json.loads(text)
    except ValueError:
        result = text
    name = call_names.get(message.get("tool_call_id") or "") or message.get("name") or ""
    return {"functionResponse": {"name": name,
                                 "response": result if isinstance(result, dict) else {"result": result}}}


# --- response -----------------------------------------------------------------------------


def usage_from(meta: dict | None) -> tuple[Usage | None, int]:
    """(Usage, thinking tokens) from usageMetadata; (None, 0) when it says nothing (unknown)."""
    return read_usage(meta, "gemini") or (None, 0)


def _int(value) -> int:
    return value if isinstance(value, int) else 0


def translate_response(target: PhysicalModelSnap, payload: dict) -> tuple[dict, Usage]:
    if not isinstance(payload, dict):
        raise shapes.malformed("Gemini answer is not an object")
    candidates = payload.get("candidates")
    if not candidates:
        if not (payload.get("promptFeedback") or {}).get("blockReason"):
            raise shapes.malformed("Gemini answer without candidates")
        candidates = [{"index": 0, "finishReason": "SAFETY", "content": {"parts": []}}]
    choices = [translate_candidate(c, i) for i, c in enumerate(candidates)]
    usage, thoughts = usage_from(payload.get("usageMetadata"))
    body = shapes.completion(id=_chat_id(payload), model=payload.get("modelVersion") or target.upstream_model,
                             choices=choices, usage=shapes.openai_usage(usage or Usage(), thoughts))
    return body, usage


def _chat_id(payload: dict) -> str:
    return f"chatcmpl-{payload['responseId']}" if payload.get("responseId") else shapes.new_id()


def translate_candidate(candidate: dict, position: int) -> dict:
    if not isinstance(candidate, dict):
        raise shapes.malformed("Gemini candidate is not an object")
    texts, calls, thoughts = [], [], []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if "functionCall" in part:
            calls.append(tool_call(part))
        elif part.get("text") and part.get("thought"):
            thoughts.append(part["text"])  # thought summaries (thinkingConfig.includeThoughts)
        elif part.get("text"):
            texts.append(part["text"])
    message: dict = {"role": "assistant", "content": "".join(texts) if texts or not calls else None,
                     "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    return {"index": candidate.get("index", position), "message": message, "logprobs": None,
            "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls))}


def finish_reason(reason: str | None, has_calls: bool) -> str:
    if has_calls and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(reason or "STOP", "stop")


def tool_call(part: dict) -> dict:
    call = part.get("functionCall") or {}
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    if part.get("thoughtSignature"):
        call_id += SIGNATURE_MARK + part["thoughtSignature"]
    return {"id": call_id, "type": "function",
            "function": {"name": call.get("name") or "", "arguments": json.dumps(call.get("args") or {})}}


# --- stream -------------------------------------------------------------------------------


class GeminiStreamDecoder(shapes.TranslatingDecoder):
    """Each SSE data line is a whole GenerateContentResponse: its candidates' parts become
    deltas, its usageMetadata (cumulative) replaces the last one. The stream has no end
    marker but the finishReason; the usage chunk goes out in close()."""

    def __init__(self, target: PhysicalModelSnap, include_usage: bool):
        super().__init__(target, include_usage)
        self.tool_counts: dict[int, int] = {}  # candidate index -> tool calls so far
        self.finished: set[int] = set()
        self.seen: set[int] = set()

    def feed(self, event: SSEEvent) -> list[dict]:
        if not event.data or event.data == "[DONE]":
            return []
        data = shapes.load_json(event.data, "Gemini stream chunk is not JSON")
        if not isinstance(data, dict):
            raise shapes.malformed("Gemini stream chunk is not an object")
        with shapes.upstream_answer("Gemini stream chunk of an unexpected shape"):
            return self._response(data)

    def _response(self, data: dict) -> list[dict]:
        if "error" in data:
            raise _stream_error(data["error"])
        if data.get("responseId"):
            self.id = f"chatcmpl-{data['responseId']}"
        self.model = data.get("modelVersion") or self.model
        if data.get("usageMetadata"):
            reported, thoughts = usage_from(data["usageMetadata"])
            if reported is not None:
                self.reported, self.reasoning_tokens = reported, thoughts
        out = []
        for position, candidate in enumerate(data.get("candidates") or ()):
            out += self._candidate(candidate, position)
        if not data.get("candidates") and (data.get("promptFeedback") or {}).get("blockReason"):
            out += self._finish(0, "content_filter")
        self.done = bool(self.finished) and self.finished >= self.seen
        return out

    def _candidate(self, candidate: dict, position: int) -> list[dict]:
        index = candidate.get("index", position)
        self.seen.add(index)
        out = []
        for part in (candidate.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                out += self._tool_call(part, index)
            elif part.get("text") and part.get("thought"):
                self.tool_text.append(part["text"])  # counted as output if the stream is cut
                out += self.delta({"reasoning_content": part["text"]}, index)
            elif part.get("text"):
                out += self.text_delta(part["text"], index)
        if candidate.get("finishReason"):
            out += self._finish(index, finish_reason(candidate["finishReason"], index in self.tool_counts))
        return out

    def _tool_call(self, part: dict, index: int) -> list[dict]:
        call = tool_call(part)
        position = self.tool_counts.get(index, 0)
        self.tool_counts[index] = position + 1
        self.tool_text.append(call["function"]["name"] + call["function"]["arguments"])
        return self.delta({"tool_calls": [{"index": position, **call}]}, index)

    def _finish(self, index: int, reason: str) -> list[dict]:
        if index in self.finished:
            return []
        self.finished.add(index)
        self.seen.add(index)
        return self.delta({}, index, finish_reason=reason)

    def close(self) -> list[dict]:
        return self.usage_chunks() if self.done else []


def _stream_error(error) -> UpstreamError:
    error = error if isinstance(error, dict) else {}
    return UpstreamError(_int(error.get("code")) or 502,
                         f"upstream stream error: {shapes.scrub(error.get('message') or 'unknown')}",
                         transient=True, code=error.get("status"))


# --- embeddings ---------------------------------------------------------------------------


def translate_embeddings_request(body: dict) -> tuple[str, dict]:
    """(method, payload): embedContent for one string, batchEmbedContents for a list."""
    inputs = body.get("input")
    extra = {"outputDimensionality": body["dimensions"]} if body.get("dimensions") else {}
    if isinstance(inputs, str):
        return "embedContent", {"content": {"parts": [{"text": inputs}]}, **extra}
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise shapes.bad_request("input must be a string or a list of strings for this model", param="input")
    model = "models/" + body["model"].removeprefix("models/")
    return "batchEmbedContents", {"requests": [{"model": model, "content": {"parts": [{"text": text}]}, **extra}
                                               for text in inputs]}


def count_input(target: PhysicalModelSnap, body: dict) -> int:
    from gateway import tokens

    return tokens.count_content(body.get("input"), target.upstream_model)


def translate_embeddings_response(target: PhysicalModelSnap, payload: dict,
                                  input_tokens: int | None) -> tuple[dict, Usage | None]:
    """Gemini reports no usage for embeddings: the input is counted with tiktoken (marked
    estimated); None when no count is known (the gateway then estimates)."""
    if not isinstance(payload, dict):
        raise shapes.malformed("Gemini embeddings answer is not an object")
    vectors = [payload["embedding"]] if isinstance(payload.get("embedding"), dict) else payload.get("embeddings")
    if not isinstance(vectors, list) or not all(isinstance((v or {}).get("values"), list) for v in vectors):
        raise shapes.malformed("Gemini embeddings answer without values")
    data = [{"object": "embedding", "index": i, "embedding": v["values"]} for i, v in enumerate(vectors)]
    out = {"object": "list", "data": data, "model": target.upstream_model}
    if input_tokens is None:
        return out, None
    out["usage"] = {"prompt_tokens": input_tokens, "total_tokens": input_tokens}
    return out, Usage(input_tokens=input_tokens, estimated=True)


# --- errors -------------------------------------------------------------------------------


def translate_error(status: int, body: bytes, headers: dict[str, str]) -> UpstreamError:
    """Google's {"error": {"code", "message", "status", "details"}}. INVALID_ARGUMENT (400),
    FAILED_PRECONDITION and payload-size errors are the client's; a rejected key (400 with
    reason API_KEY_INVALID, 401, 403) and 404 (this route's model) are transient, so another
    route may serve the call; 429 RESOURCE_EXHAUSTED and 5xx are transient."""
    error = _error_object(body)
    google_status = error.get("status") if isinstance(error.get("status"), str) else None
    message = shapes.scrub(error.get("message") or "upstream request failed")
    if status in (401, 403) or _key_rejected(error):
        return UpstreamError(status, "the upstream rejected this route's credentials", transient=True,
                             code=google_status or "upstream_auth_error")
    if status == 404:
        return UpstreamError(status, "the upstream does not know this route's model", transient=True,
                             code=google_status or "upstream_not_found")
    if status in TRANSIENT_STATUSES or status >= 500:
        return UpstreamError(status, f"upstream error: {message}", transient=True, code=google_status,
                             retry_after=shapes.retry_after(headers) or _retry_delay(error))
    code = "context_length_exceeded" if "token count" in message.lower() and "exceeds" in message.lower() \
        else google_status
    return UpstreamError(status, message, transient=False, type="invalid_request_error", code=code)


def _error_object(body: bytes) -> dict:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return {}
    if isinstance(parsed, list) and parsed:  # the streaming endpoint wraps errors in a list
        parsed = parsed[0]
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def _key_rejected(error: dict) -> bool:
    return any(isinstance(d, dict) and d.get("reason") in KEY_REASONS for d in error.get("details") or ())


def _retry_delay(error: dict) -> float | None:
    """google.rpc.RetryInfo: {"@type": ".../google.rpc.RetryInfo", "retryDelay": "17s"}."""
    for detail in error.get("details") or ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return float(delay[:-1])
            except ValueError:
                return None
    return None
