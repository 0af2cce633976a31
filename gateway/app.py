"""The gateway: a plain ASGI application, mounted ahead of Django by tokenbill/routing.py.

No Django request machinery and no SQL on the hot path: the VE, key, logical model and
routes come from the in-process snapshot (routing/cache.py). Endpoints:

    POST /v1/chat/completions   (stream and not)
    POST /v1/embeddings
    GET  /v1/models             (the VE's allowed logical models, within the key's allow-list)
    POST /v1/images/generations, /v1/audio/speech, /v1/audio/transcriptions, /v1/audio/translations
                                (gateway/media.py: billed per image / per second of audio)

under /v1 (the key names its VE), /<ve_id>/v1, or any path on host <ve_id>.ve.<domain>.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import time

from django.conf import settings

from billing.gate import CallContext, Outcome, get_biller
from gateway import apis, auth, errors, media, proxy, upstream
from gateway.responses import send_assistant_message, send_error, send_json
from routing.cache import routing_cache

log = logging.getLogger(__name__)

CHAT, EMBEDDINGS, MODELS = "/v1/chat/completions", "/v1/embeddings", "/v1/models"
# Request ids: a random per-process prefix and a counter. Unique without a syscall per call
# (os.urandom is a getrandom() syscall, measurably slow in sandboxed kernels).
_ID_PREFIX = "req_" + os.urandom(6).hex()
_ids = itertools.count(1)


def _new_id_prefix() -> None:
    global _ID_PREFIX
    _ID_PREFIX = "req_" + os.urandom(6).hex()  # a forked worker must not repeat its parent's ids


os.register_at_fork(after_in_child=_new_id_prefix)

_ROUTES = {("POST", CHAT): "chat", ("POST", EMBEDDINGS): "embeddings", ("GET", MODELS): "models"}
_ROUTES.update(media.ROUTES)
_ROUTES.update(apis.ROUTES)


class Request:
    """What the hot path needs from the scope, read in one pass over the headers."""

    __slots__ = ("ve_public_id", "path", "method", "host", "authorization", "api_key", "x_api_key",
                 "content_length", "run_id", "request_id", "anthropic_version")

    def __init__(self, scope, ve_public_id, path):
        self.ve_public_id = ve_public_id
        self.path = path
        self.method = scope["method"]
        self.authorization = self.api_key = self.x_api_key = self.run_id = self.anthropic_version = ""
        self.content_length = -1
        for name, value in scope["headers"]:
            if name == b"authorization":
                self.authorization = value.decode("latin-1")
            elif name == b"api-key":
                self.api_key = value.decode("latin-1")
            elif name == b"x-api-key":
                self.x_api_key = value.decode("latin-1")
            elif name == b"content-length":
                self.content_length = int(value) if value.isdigit() else -1
            elif name == b"x-tokenbill-run-id":
                self.run_id = _header_text(value)[:200]
            elif name == b"anthropic-version":
                self.anthropic_version = value.decode("latin-1")
        self.request_id = f"{_ID_PREFIX}{next(_ids):012x}"


def _header_text(value: bytes) -> str:
    """UTF-8 when it is (so a run id sent as a header equals the same one in metadata.run_id), else latin-1."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _host(scope) -> str:
    for name, value in scope["headers"]:
        if name == b"host":
            return value.decode("latin-1")
    return ""


class GatewayApp:
    def claims(self, scope) -> bool:
        target = scope["tokenbill.gateway_target"] = auth.split_target(scope["path"], _host(scope))
        return target is not None

    def _target(self, scope):
        target = scope.get("tokenbill.gateway_target")  # computed by claims() for this request
        return target if target is not None else auth.split_target(scope["path"], _host(scope))

    async def lifespan(self, scope, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await routing_cache.ensure_started()
                except Exception as exc:  # no database yet (first run): the first call loads it
                    log.warning("gateway: routing snapshot not loaded at startup (%s)", type(exc).__name__)
                _tune_gc()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await _billing_shutdown()
                await routing_cache.stop()
                await upstream.close()
                await _close_db_connections()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def __call__(self, scope, receive, send):
        target = self._target(scope)
        req = Request(scope, *target)
        route = None
        try:
            route = _ROUTES.get((req.method, req.path)) or apis.route_of(req.method, req.path)
            if route is None:
                raise errors.not_found(f"Unknown path: {req.method} {req.path}", code="unknown_path")
            snapshot = await routing_cache.ensure_started()
            secret = auth.secret_from(req.authorization, req.api_key, req.x_api_key)
            try:
                ve, key = auth.authenticate(snapshot, secret, req.ve_public_id)
            except errors.GatewayError:  # not in this process yet? one SQL look (off the loop), then again
                if not await routing_cache.resolve_miss(auth.key_hash(secret), req.ve_public_id):
                    raise
                snapshot = routing_cache.snapshot
                ve, key = auth.authenticate(snapshot, secret, req.ve_public_id)
            routing_cache.touch_key(key.id)
            if route == "models":
                await self._models(snapshot, ve, key, req, send)
                return
            if route in media.KINDS:
                await media.handle(route, scope, snapshot, ve, key, req, receive, send)
                return
            if route in apis.KINDS:
                await apis.handle(self, route, snapshot, ve, key, req, receive, send)
                return
            body = await _read_json(receive, req)
            await self._metered(route, snapshot, ve, key, body, req, receive, send)
        except errors.GatewayError as exc:
            await apis.send_error(send, exc, req, route)
        except proxy.ClientGone:
            return
        except Exception:
            log.exception("gateway: unexpected error (request %s)", req.request_id)
            await send_error(send, errors.GatewayError(500, "Internal error.", type="api_error", code="internal_error"),
                             req.request_id)

    async def _models(self, snapshot, ve, key, req, send):
        if req.anthropic_version:
            await apis.send_models(send, auth.model_names(snapshot, ve, key), req)
            return
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tokenbill"}
                for name in auth.model_names(snapshot, ve, key)]
        await send_json(send, 200, json.dumps({"object": "list", "data": data}).encode(), req.request_id)

    async def _metered(self, route, snapshot, ve, key, body, req, receive, send, endpoint=None):
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise errors.bad_request("you must provide a model parameter", param="model")
        stream = _validate_chat(body) if route == "chat" else _validate_embeddings(body)
        endpoint = endpoint or ("chat.completions" if route == "chat" else "embeddings")
        ctx = CallContext(request_id=req.request_id, endpoint=endpoint,
                          ve=ve, key=key, model=None, body=body, stream=stream,
                          run_id=req.run_id or _metadata_run_id(body), started_at=time.time(), requested_model=name)
        try:
            ctx.model = auth.resolve_model(snapshot, ve, key, name)
            wanted = "chat" if route == "chat" else "embedding"
            if ctx.model.modality != wanted:
                article = "an" if wanted[0] in "aeiou" else "a"
                raise errors.bad_request(f"The model '{name}' is not {article} {wanted} model.", param="model",
                                         code="model_not_supported")
        except errors.GatewayError as exc:
            # Refused before admission: still one request-log row (billing.gate.Biller.record).
            await _record_refusal(ctx, exc)
            raise
        if route == "chat" and _is_magic(body):
            await _answer_magic(ctx, send)
            return
        deadline = time.monotonic() + settings.GATEWAY_TOTAL_TIMEOUT
        if stream:
            await proxy.stream(ctx, receive, send, deadline=deadline)
        else:
            await proxy.unary(ctx, send, deadline=deadline)


async def _record_refusal(ctx: CallContext, exc: errors.GatewayError) -> None:
    try:
        await get_biller().record(ctx, Outcome(route=None, status="client_error", http_status=exc.status,
                                               error_code=exc.code or exc.type))
    except Exception:
        log.exception("gateway: could not record a refused call")


def _tune_gc() -> None:
    """After startup: what was loaded (Django, the snapshot) moves to the permanent
    generation and young collections run less often. A full collection then no longer
    walks hundreds of thousands of startup objects under load; measured (make bench, c=16,
    billing on) it took the gateway's p99 from ~50 ms to ~13 ms, at the same RSS.
    GATEWAY_GC_TUNING=0 leaves the interpreter's defaults."""
    from django.conf import settings

    if not getattr(settings, "GATEWAY_GC_TUNING", True):
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def _billing_shutdown() -> None:
    """Let billing flush what it buffers (request logs, ledger rows) before the process ends."""
    try:
        from billing.biller import shutdown
    except ImportError:
        return
    try:
        await shutdown()
    except Exception:
        log.exception("gateway: billing shutdown failed")


async def _close_db_connections() -> None:
    """Close the database connections this process's gateway opened in its helper threads
    (Django keeps one per thread): the sync_to_async thread and the log writer's. Left
    open, they keep a session on PostgreSQL after shutdown (tests could not drop their
    database: "being accessed by other users")."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    try:
        await sync_to_async(connections.close_all)()
        from billing.requestlog import close_writer_connections

        await close_writer_connections()
    except Exception:
        log.exception("gateway: closing database connections failed")


async def _read_json(receive, req: Request) -> dict:
    limit = settings.GATEWAY_MAX_BODY_BYTES
    if req.content_length > limit:
        raise errors.too_large(limit)
    body = await proxy.read_body(receive, limit)
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise errors.bad_request("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(parsed, dict):
        raise errors.bad_request("The request body must be a JSON object.", code="invalid_json")
    return parsed


def _validate_chat(body: dict) -> bool:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.bad_request("'messages' must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise errors.bad_request("Each message must be an object with a 'role'.", param="messages")
        _validate_content(message.get("content"), f"messages[{i}].content")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise errors.bad_request("'stream' must be a boolean.", param="stream")
    for field, ceiling in _INT_FIELDS:
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= ceiling):
            raise errors.bad_request(f"'{field}' must be an integer from 1 to {ceiling}.", param=field)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise errors.bad_request("'stream_options' must be an object.", param="stream_options")
    return stream is True


_INT_FIELDS = (("max_tokens", 2**31 - 1), ("max_completion_tokens", 2**31 - 1), ("n", 128))


def _validate_content(content, param: str) -> None:
    """A string, null (assistant tool calls), or a list of typed parts; a text part's text
    is a string. Anything else is the client's mistake (400), not an upstream failure."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise errors.bad_request(f"'{param}' must be a string or an array of content parts.", param=param)
    for part in content:
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise errors.bad_request(f"Each part of '{param}' must be an object with a 'type'.", param=param)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise errors.bad_request(f"A text part of '{param}' must have a string 'text'.", param=param)


def _validate_embeddings(body: dict) -> bool:
    value = body.get("input")
    if not value or not isinstance(value, (str, list)):
        raise errors.bad_request("'input' must be a string or a non-empty array.", param="input")
    return False


def _metadata_run_id(body: dict) -> str:
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("run_id"), str):
        return metadata["run_id"][:200]
    return ""


def _is_magic(body: dict) -> bool:
    for message in reversed(body["messages"]):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = next((p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"), "")
            return isinstance(content, str) and content.lstrip().startswith("/tokenbill")
    return False


async def _answer_magic(ctx: CallContext, send) -> None:
    """`/tokenbill`: a free assistant message about this VE, written by gateway/magic.py."""
    from gateway import magic

    text = await magic.answer(ctx)
    options = ctx.body.get("stream_options")
    await send_assistant_message(send, request_id=ctx.request_id, model=ctx.requested_model, text=text,
                                 stream=ctx.stream, include_usage=isinstance(options, dict)
                                 and options.get("include_usage") is True)
