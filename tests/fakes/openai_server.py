"""Fake OpenAI and Azure OpenAI upstreams (real HTTP on 127.0.0.1, see server.py).

By default they answer like gateway/fake_upstream.py (echo the last user message, with
usage; streams honour stream_options.include_usage). Azure serves the same answers under
/openai/deployments/<deployment>/... and checks the api-key header and api-version.

    with OpenAIFake(api_key="sk-1") as up:
        up.script(fail(503), stream(drop_after=2))
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from gateway import fake_upstream
from tests.fakes.server import FAKE, RECORDED, Behaviour, FakeServer, json_reply, raw_reply, sse_reply, stall, drop  # noqa: F401


def _body(request) -> dict:
    return request[RECORDED].json or {}


# OpenAI's reasoning models refuse max_tokens. The error body as OpenAI returns it, quoted in
# https://github.com/griptape-ai/ComfyUI-Griptape/issues/312 (gpt-5) and
# https://github.com/ITSpecialist111/ai_automation_suggester/issues/38 (o1); the API
# reference (https://platform.openai.com/docs/api-reference/chat/create) marks max_tokens
# "not compatible with o-series models" in favour of max_completion_tokens.
REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
UNSUPPORTED_MAX_TOKENS = {"error": {
    "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
               "Use 'max_completion_tokens' instead.",
    "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}


class OpenAIFake(FakeServer):
    """An OpenAI-format upstream; base URL for a provider: `fake.base_url` (ends in /v1)."""

    def __init__(self, api_key: str = "sk-fake"):
        super().__init__()
        self.api_key = api_key
        self.cancelled = 0  # requests whose client went away before the answer ended

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def authorized(self, request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def endpoint(self, request) -> str:
        return request.path.rsplit("/", 1)[-1] if request.path.startswith("/v1/") else ""

    def model_name(self, request) -> str:
        return str(_body(request).get("model") or "")

    async def default(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return web.json_response({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                                 "code": "invalid_api_key", "param": None}}, status=401)
        endpoint = self.endpoint(request)
        if endpoint == "completions":
            if "max_tokens" in _body(request) and self.model_name(request).startswith(REASONING_PREFIXES):
                return web.json_response(UNSUPPORTED_MAX_TOKENS, status=400)
            return await stream()(request) if _body(request).get("stream") else await reply()(request)
        if endpoint == "embeddings":
            return web.json_response(fake_upstream.embeddings(_body(request)))
        return web.json_response({"error": {"message": "not found", "type": "invalid_request_error"}}, status=404)


class AzureFake(OpenAIFake):
    """Azure OpenAI: {base}/openai/deployments/{deployment}/chat/completions?api-version=..."""

    @property
    def base_url(self) -> str:
        return self.url

    def authorized(self, request) -> bool:
        return request.headers.get("api-key") == self.api_key and bool(request.query.get("api-version"))

    async def default(self, request: web.Request) -> web.StreamResponse:
        # api-versions before 2024-09-01-preview have no stream_options and refuse it
        # (error text as reported in openai/openai-python#1469 and Azure/azure-sdk-for-java#40198).
        version = request.query.get("api-version") or ""
        if self.authorized(request) and "stream_options" in _body(request) and version[:10] < "2024-09-01":
            return web.json_response({"error": {"message": "Unrecognized request argument supplied: stream_options",
                                                "type": "invalid_request_error", "param": None, "code": None}},
                                     status=400)
        return await super().default(request)

    def endpoint(self, request) -> str:
        parts = request.path.strip("/").split("/")
        if len(parts) >= 4 and parts[:2] == ["openai", "deployments"]:
            return parts[-1]
        return ""

    def model_name(self, request) -> str:  # Azure: the deployment (named after its model here)
        parts = request.path.strip("/").split("/")
        return parts[2] if len(parts) >= 4 else ""


# --- behaviours -------------------------------------------------------------------------------
def reply(answer: str | None = None, *, usage: dict | None | bool = True) -> Behaviour:
    async def behave(request):
        payload = fake_upstream.completion(_body(request), answer)
        if usage is False:
            payload.pop("usage")
        elif isinstance(usage, dict):
            payload["usage"] = usage
        return web.json_response(payload)

    return behave


def fail(status: int, *, retry_after: str | None = None, message: str = "upstream says no",
         code: str | None = None) -> Behaviour:
    headers = {"Retry-After": retry_after} if retry_after else None
    return json_reply({"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error",
                                 "code": code, "param": None}}, status=status, headers=headers)


def malformed() -> Behaviour:
    return raw_reply(b'{"choices": [ this is not json')


def insufficient_quota() -> Behaviour:
    """The provider account is out of money: 429 with type and code insufficient_quota
    (https://platform.openai.com/docs/guides/error-codes, "429 - You exceeded your current
    quota, please check your plan and billing details"; body as quoted in OpenHands/OpenHands#998)."""
    return json_reply({"error": {"message": "You exceeded your current quota, please check your plan and billing "
                                            "details. For more information on this error, read the docs: "
                                            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
                                 "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}, status=429)


def stream(answer: str | None = None, *, pieces: int = 4, delay: float = 0.0, drop_after: int | None = None,
           stall_after: int | None = None, malformed_at: int | None = None) -> Behaviour:
    """A streamed answer; frames are role, content pieces, finish, [usage], [DONE]."""

    async def behave(request):
        frames = fake_upstream.stream_events(_body(request), answer, pieces=pieces)
        events = [(None, f[len(b"data: "):-2].decode()) for f in frames]
        if malformed_at is not None:
            events[malformed_at] = (None, '{"choices": [ broken')
        return await sse_reply(events, delay=delay, drop_after=drop_after, stall_after=stall_after)(request)

    return behave


def thinking_stream(seconds: float = 10.0) -> Behaviour:
    """Sends nothing for `seconds` (a reasoning model before its first token), then a
    stream; counts a client that went away meanwhile as a cancellation."""

    async def behave(request):
        fake = request[FAKE]
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            while asyncio.get_running_loop().time() < deadline:
                transport = request.transport
                if transport is None or transport.is_closing():
                    fake.cancelled += 1
                    return web.Response(status=499)
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:  # aiohttp cancels the handler of a connection that closed
            fake.cancelled += 1
            raise
        return await stream()(request)

    return behave


def endless_stream(interval: float = 0.02) -> Behaviour:
    """Streams a piece every `interval` until the client goes away; counts the cancellation."""

    async def behave(request):
        fake = request[FAKE]
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
        frame = b"data: " + json.dumps(chunk).encode() + b"\n\n"
        try:
            for _ in range(int(30 / interval)):
                await resp.write(frame)
                await asyncio.sleep(interval)
        except (asyncio.CancelledError, ConnectionResetError):
            fake.cancelled += 1
            raise
        return resp

    return behave
