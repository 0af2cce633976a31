"""Images, speech and transcription: the metered calls that are not billed by tokens.

    POST /v1/images/generations   JSON -> JSON            per image returned, by size and quality
    POST /v1/audio/speech         JSON -> audio stream    per second of audio produced
    POST /v1/audio/transcriptions multipart -> passthrough per second of the uploaded audio
    POST /v1/audio/translations   multipart -> passthrough (same)

Same path as chat (gateway/proxy.py): resolve the model (of this endpoint's modality, else
400) -> admit (billing reserves the units put in ctx.extra["reserve_units"]) -> fallback
over routes (gateway/fallback.py) -> settle with Outcome.units, exactly once.

Reservations: images n x price(size, quality), exact; transcription the upload's
measured seconds, exact (measured here, before any upstream call); speech an upper
bound from the input text (billing/pricing_media.speech_cap_seconds). Uploads: the size
limit (413) and the type check (400) come before anything is sent upstream.
"""

from __future__ import annotations

import asyncio
import json
import time

from django.conf import settings

from billing import pricing_media
from billing.gate import CallContext, Outcome
from gateway import audio, auth, errors, fallback, multipart, proxy, upstream
from gateway.adapters.base import REGISTRY, UpstreamError, Usage
from gateway.responses import rid_headers, send_json
from routing.snapshot import RouteSnap

IMAGES, SPEECH = "/v1/images/generations", "/v1/audio/speech"
TRANSCRIPTIONS, TRANSLATIONS = "/v1/audio/transcriptions", "/v1/audio/translations"
ROUTES = {("POST", IMAGES): "images", ("POST", SPEECH): "speech",
          ("POST", TRANSCRIPTIONS): "transcriptions", ("POST", TRANSLATIONS): "translations"}
# route -> (CallContext.endpoint, the logical model's modality)
KINDS = {"images": ("images.generations", "image"), "speech": ("audio.speech", "speech"),
          "transcriptions": ("audio.transcriptions", "transcription"),
          "translations": ("audio.translations", "transcription")}
UPLOAD_EXTENSIONS = frozenset({"flac", "mp3", "mp4", "mpeg", "mpga", "m4a", "ogg", "oga", "opus", "wav", "webm"})
SPEECH_CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                        "wav": "audio/wav", "pcm": "audio/pcm"}
MAX_MEASURED_SPEECH_BYTES = 64 * 1024 * 1024  # beyond this a speech answer is measured by its length
OFF_LOOP_BYTES = 1024 * 1024


def upload_limit() -> int:
    return int(getattr(settings, "GATEWAY_MAX_UPLOAD_BYTES", 26 * 1024 * 1024))


async def handle(route: str, scope, snapshot, ve, key, req, receive, send) -> None:
    """Called by gateway/app.py once the key is authenticated."""
    from gateway.app import _metadata_run_id, _read_json

    if route in ("images", "speech"):
        body, form = await _read_json(receive, req), None
    else:
        form = await _read_form(scope, receive, req)
        body = {k: v for k, v in form.fields}
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise errors.bad_request("you must provide a model parameter", param="model")
    reserve, upload = await _validate(route, body, form)
    endpoint, modality = KINDS[route]
    ctx = CallContext(request_id=req.request_id, endpoint=endpoint, ve=ve, key=key, model=None, body=body,
                      stream=route == "speech", run_id=req.run_id or _metadata_run_id(body), started_at=time.time(), requested_model=name,
                      extra={"reserve_units": reserve})
    await _resolve(ctx, snapshot, modality)
    deadline = time.monotonic() + settings.GATEWAY_TOTAL_TIMEOUT
    if route == "images":
        await _images(ctx, send, deadline)
    elif route == "speech":
        await _speech(ctx, receive, send, deadline)
    else:
        await _transcribe(ctx, route, form, upload, send, deadline)


async def _resolve(ctx: CallContext, snapshot, modality: str) -> None:
    from gateway.app import _record_refusal

    try:
        ctx.model = auth.resolve_model(snapshot, ctx.ve, ctx.key, ctx.requested_model)
        if ctx.model.modality != modality:
            article = "an" if modality[0] in "aeiou" else "a"
            raise errors.bad_request(f"The model '{ctx.requested_model}' is not {article} {modality} model.",
                                     param="model", code="model_not_supported")
    except errors.GatewayError as exc:
        await _record_refusal(ctx, exc)  # refused before admission: still one request-log row
        raise


# --- validation ----------------------------------------------------------------------------------
async def _validate(route: str, body: dict, form):
    """(units to reserve, the uploaded file measured) or a 400."""
    if route == "images":
        return _validate_images(body), None
    if route == "speech":
        return _validate_speech(body), None
    return await _validate_upload(form)


def _validate_images(body: dict) -> dict:
    prompt, n = body.get("prompt"), body.get("n", 1)
    if not isinstance(prompt, str) or not prompt:
        raise errors.bad_request("'prompt' must be a non-empty string.", param="prompt")
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        raise errors.bad_request("'n' must be an integer from 1 to 10.", param="n")
    for field in ("size", "quality"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise errors.bad_request(f"'{field}' must be a string.", param=field)
    if body.get("response_format") not in (None, "url", "b64_json"):
        raise errors.bad_request("'response_format' must be 'url' or 'b64_json'.", param="response_format")
    if body.get("stream"):
        raise errors.bad_request("Streamed image generation is not supported.", param="stream")
    return pricing_media.image_units(n=n, size=body.get("size"), quality=body.get("quality"))


def _validate_speech(body: dict) -> dict:
    text, fmt, speed = body.get("input"), body.get("response_format") or "mp3", body.get("speed")
    if not isinstance(text, str) or not text:
        raise errors.bad_request("'input' must be a non-empty string.", param="input")
    if fmt not in audio.SPEECH_FORMATS:
        raise errors.bad_request(f"'response_format' must be one of {', '.join(sorted(audio.SPEECH_FORMATS))}.",
                                 param="response_format")
    if speed is not None and (isinstance(speed, bool) or not isinstance(speed, (int, float))
                              or not 0.25 <= speed <= 4.0):
        raise errors.bad_request("'speed' must be a number from 0.25 to 4.0.", param="speed")
    if body.get("stream_format") not in (None, "audio"):
        raise errors.bad_request("Only stream_format 'audio' is supported.", param="stream_format")
    return {"audio_seconds": pricing_media.speech_cap_seconds(text, speed)}


async def _validate_upload(form: multipart.Form):
    upload = form.files.get("file")
    if upload is None or not upload.data:
        raise errors.bad_request("'file' must be an uploaded audio file.", param="file")
    extension = upload.filename.rsplit(".", 1)[-1].lower() if "." in upload.filename else ""
    kind = audio.sniff(upload.data)
    if extension not in UPLOAD_EXTENSIONS or kind is None:
        raise errors.bad_request(
            f"Unsupported file format. Supported formats: {', '.join(sorted(UPLOAD_EXTENSIONS))}.", param="file",
            code="invalid_file_format")
    measured = await _off_loop(audio.measure, upload.data, kind)
    if measured.estimated or measured.seconds <= 0:
        # The reservation must be exact: a file whose length cannot be read is not sent.
        raise errors.bad_request("The audio file's duration could not be read; is the file complete?", param="file",
                                 code="invalid_file_format")
    return {"audio_seconds": measured.seconds}, upload


async def _read_form(scope, receive, req) -> multipart.Form:
    limit = upload_limit()
    if req.content_length > limit:
        raise errors.too_large(limit)  # before reading a byte of it
    content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
    try:
        multipart.boundary_of(content_type)
    except multipart.MultipartError as exc:
        raise errors.bad_request(str(exc), code="invalid_multipart") from None
    body = await proxy.read_body(receive, limit)
    try:
        return await _off_loop(multipart.parse, body, content_type)
    except multipart.MultipartError as exc:
        raise errors.bad_request(str(exc), code="invalid_multipart") from None


async def _off_loop(fn, data: bytes, *args):
    """Parsing a large upload takes tens of ms (a 25 MB mp3 frame walk: ~90 ms here): do it in a
    thread so other calls on this event loop are not held up; small ones inline (cheaper)."""
    if len(data) < OFF_LOOP_BYTES:
        return fn(data, *args)
    return await asyncio.to_thread(fn, data, *args)


# --- images --------------------------------------------------------------------------------------
async def _images(ctx: CallContext, send, deadline: float) -> None:
    admission = await proxy.admit(ctx, send)
    if admission is None:
        return
    outcome, payload = Outcome(route=None), None
    try:
        payload = await fallback.run(ctx.model, admission, outcome, _images_attempt(ctx), deadline=deadline)
    except errors.GatewayError as exc:
        proxy._fail(outcome, exc)
        raise
    finally:
        if payload is not None:
            # Only images that arrived are charged, never more than were asked for.
            spec = ctx.extra["reserve_units"]["images"][0]
            outcome.units = pricing_media.image_units(n=min(_image_count(payload), spec["n"]), size=spec["size"],
                                                      quality=spec["quality"])
            outcome.ttfb_ms = int((time.time() - ctx.started_at) * 1000)
        settlement = await proxy.settle(ctx, admission, outcome)
    await send_json(send, 200, json.dumps(payload).encode(), ctx.request_id, proxy.settlement_headers(settlement))


def _image_count(payload: dict) -> int:
    return sum(1 for item in payload["data"] if isinstance(item, dict) and (item.get("url") or item.get("b64_json")))


def _images_attempt(ctx: CallContext):
    async def attempt(route: RouteSnap, remaining: float) -> dict:
        pm = route.physical_model
        adapter = REGISTRY[pm.provider.kind]
        call = adapter.images_request(pm, {**ctx.body, "model": pm.upstream_model})
        resp = await upstream.send(call, pm.provider, remaining)
        async with resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise adapter.error_from(resp.status, raw, resp.headers)
        try:
            payload = adapter.images_response(pm, json.loads(raw))
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            raise UpstreamError(502, "The upstream model returned an invalid image answer.", transient=True,
                                code="bad_upstream_answer")
        return payload

    return attempt


# --- speech --------------------------------------------------------------------------------------
class _Audio:
    """An opened upstream audio answer and what has been relayed of it."""

    __slots__ = ("resp", "first", "kept", "length")

    def __init__(self, resp, first: bytes):
        self.resp, self.first = resp, first
        self.kept, self.length = bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.length += len(chunk)
        if len(self.kept) + len(chunk) <= MAX_MEASURED_SPEECH_BYTES:
            self.kept += chunk

    def measure(self, fmt: str) -> audio.Duration:
        if self.length > len(self.kept):
            return audio.estimate(self.length, fmt)
        return audio.measure(bytes(self.kept), fmt)


async def _speech(ctx: CallContext, receive, send, deadline: float) -> None:
    admission = await proxy.admit(ctx, send)
    if admission is None:
        return
    outcome, opened = Outcome(route=None), None
    fmt = ctx.body.get("response_format") or "mp3"
    try:
        try:
            opened = await fallback.run(ctx.model, admission, outcome, _speech_attempt(ctx), deadline=deadline)
        except errors.GatewayError as exc:
            proxy._fail(outcome, exc)
            raise
        outcome.ttfb_ms = int((time.time() - ctx.started_at) * 1000)
        await _relay_audio(ctx, receive, send, opened, outcome, fmt)
    finally:
        if opened is not None:
            opened.resp.close()
            # A cut answer (client gone, upstream failed) is charged for the audio that was produced.
            measured = opened.measure(fmt)
            outcome.units = {"audio_seconds": measured.seconds}
            outcome.usage = Usage(estimated=measured.estimated)
        await proxy.settle(ctx, admission, outcome)


def _speech_attempt(ctx: CallContext):
    async def attempt(route: RouteSnap, remaining: float) -> _Audio:
        pm = route.physical_model
        adapter = REGISTRY[pm.provider.kind]
        call = adapter.speech_request(pm, {**ctx.body, "model": pm.upstream_model})
        resp = await upstream.send(call, pm.provider, remaining)
        try:
            if resp.status >= 300:
                raise adapter.error_from(resp.status, await resp.read(), resp.headers)
            # Wait for the first bytes before answering: until then another route may still serve.
            first = await resp.content.readany()
            if not first:
                raise UpstreamError(502, "The upstream model returned no audio.", transient=True,
                                    code="bad_upstream_answer")
            return _Audio(resp, first)
        except BaseException:
            resp.close()
            raise

    return attempt


async def _relay_audio(ctx: CallContext, receive, send, opened: _Audio, outcome: Outcome, fmt: str) -> None:
    relay = asyncio.current_task()
    gone = asyncio.Event()
    watcher = asyncio.create_task(proxy._watch_disconnect(receive, relay, gone))
    content_type = opened.resp.headers.get("Content-Type") or SPEECH_CONTENT_TYPES[fmt]
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode("latin-1")), *rid_headers(ctx.request_id)]})
        opened.add(opened.first)
        await send({"type": "http.response.body", "body": opened.first, "more_body": True})
        async for chunk in opened.resp.content.iter_any():
            opened.add(chunk)  # counted before it is sent: a client gone mid-send still pays for it
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    except asyncio.CancelledError:
        if not gone.is_set():
            raise
        relay.uncancel()
        outcome.client_disconnected = True
        outcome.status = "disconnected"
    except Exception:  # after the first byte: no fallback; end the (binary) body where it stopped
        if gone.is_set():
            outcome.client_disconnected, outcome.status = True, "disconnected"
            return
        outcome.status, outcome.error_code = "upstream_error", "stream_interrupted"
        try:
            await send({"type": "http.response.body", "body": b""})
        except Exception:
            pass
    finally:
        watcher.cancel()


# --- transcription and translation ---------------------------------------------------------------
async def _transcribe(ctx: CallContext, route: str, form: multipart.Form, upload, send, deadline: float) -> None:
    admission = await proxy.admit(ctx, send)
    if admission is None:
        return
    outcome, answer = Outcome(route=None), None
    try:
        answer = await fallback.run(ctx.model, admission, outcome, _audio_attempt(route, form, upload),
                                    deadline=deadline)
    except errors.GatewayError as exc:
        proxy._fail(outcome, exc)
        raise
    finally:
        if answer is not None:
            # Every response_format is billed the same: the seconds measured (and held) up front.
            outcome.units = dict(ctx.extra["reserve_units"])
            outcome.ttfb_ms = int((time.time() - ctx.started_at) * 1000)
        settlement = await proxy.settle(ctx, admission, outcome)
    body, content_type = answer
    headers = [(b"content-type", content_type.encode("latin-1")), (b"content-length", str(len(body)).encode()),
               *rid_headers(ctx.request_id), *proxy.settlement_headers(settlement)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _audio_attempt(route: str, form: multipart.Form, upload):
    async def attempt(route_snap: RouteSnap, remaining: float) -> tuple[bytes, str]:
        pm = route_snap.physical_model
        adapter = REGISTRY[pm.provider.kind]
        fields = [(k, pm.upstream_model if k == "model" else v) for k, v in form.fields]
        data, content_type = multipart.encode(fields, [upload])
        call = adapter.audio_request(pm, route, data, content_type)
        resp = await upstream.send(call, pm.provider, remaining)
        async with resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise adapter.error_from(resp.status, raw, resp.headers)
            return raw, resp.headers.get("Content-Type") or "application/json"

    return attempt

