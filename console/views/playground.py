"""Playground: chat with one to three logical models side by side, through the gateway.

Design (no access-key secret is ever stored): each answer pane POSTs to `playground_stream`
with its slot (0-2). The view rotates a playground key of that VE for this user and slot
("Playground · <user> · <slot>"): a new random secret whose hash replaces the old one,
valid for 5 minutes. The secret lives only in a local variable while the view calls the
gateway over HTTP exactly like an API user would (so routing, billing, the ledger and the
request log see a normal call, attributed to that key), and relays the streamed deltas to
the browser as NDJSON. The merchant never handles a secret; between runs the key is
expired. Rows are kept (not deleted) because ledger entries and request logs written
after the stream, in batches, point at the key.

The gateway reads keys from its in-process snapshot, which follows config changes within
GATEWAY_CONFIG_POLL_SECONDS; a 401/404 is retried for up to 10 s to cover that (more under load). The gateway
base URL is settings.CONSOLE_GATEWAY_URL when set, else this request's origin (the
embedded default serves the gateway and the console from one ASGI server).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import httpx
from django.conf import settings
from django.db import transaction
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.utils import timezone

from billing.models import RequestLog
from billing.money import format_credits_human
from console.access import console_view, org_get
from console.views.common import render_page
from routing.models import AccessKey, LogicalModel, Role, VirtualEndpoint, hash_secret
from routing.services import config_changed, key_create

TEMPLATE = "console/playground.html"
KEY_TTL = timedelta(minutes=5)
REQUEST_ID_HEADER = "x-tokenbill-request-id"
STARTUP_RETRY_SECONDS = 10.0
# Unknown key (401) or VE/model (404): the gateway's snapshot may not have caught up yet.
NOT_YET_STATUSES = (401, 404)


@console_view(read=Role.DEVELOPER)
def playground(request):
    endpoints = list(VirtualEndpoint.objects.filter(organization=request.org).prefetch_related("allowed_models"))
    selected = next((ve for ve in endpoints if str(ve.pk) == request.GET.get("ve")), endpoints[0] if endpoints else None)
    models = list(selected.allowed_models.all()) if selected else []
    context = {"endpoints": endpoints, "selected": selected, "models": models,
               "base_url": request.build_absolute_uri(f"/{selected.public_id}/v1") if selected else "",
               "slots": range(3)}
    return render_page(request, TEMPLATE, context, partial="_models")


@console_view(read=Role.DEVELOPER, write=Role.DEVELOPER)
def playground_stream(request):
    if request.method != "POST":
        return HttpResponseBadRequest("POST only")
    ve = org_get(VirtualEndpoint.objects, request=request, pk=request.POST.get("ve") or 0)
    model = org_get(LogicalModel.objects, request=request, name=request.POST.get("model", ""))
    message = (request.POST.get("message") or "").strip()[:8000]
    if not message:
        return HttpResponseBadRequest("Type a message first.")
    slot = request.POST.get("slot", "0")
    key_pk, secret = rotate_playground_key(ve, request.user, int(slot) if slot in ("0", "1", "2") else 0)
    url = gateway_base(request) + f"/{ve.public_id}/v1/chat/completions"
    body = {"model": model.name, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": message}]}
    # Under ASGI an async iterator streams chunk by chunk (a sync one would be buffered
    # whole by Django); under WSGI (the dev/test server) the sync one streams.
    relay = _arelay if isinstance(request, ASGIRequest) else _relay
    response = StreamingHttpResponse(relay(url, secret, body), content_type="application/x-ndjson")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


def rotate_playground_key(ve: VirtualEndpoint, user, slot: int) -> tuple[int, str]:
    """(key id, fresh secret) for this user's playground slot on this VE."""
    name = f"Playground · {user.get_username()} · {slot + 1}"[:120]
    expires = timezone.now() + KEY_TTL
    with transaction.atomic():
        # Row lock: two tabs rotating the same slot serialize; the later secret wins.
        key = AccessKey.objects.select_for_update().filter(virtual_endpoint=ve, name=name).first()
        if key is None:
            key, secret = key_create(virtual_endpoint=ve, name=name, expires_at=expires)
            return key.pk, secret
        secret = AccessKey.new_secret()
        AccessKey.objects.filter(pk=key.pk).update(key_hash=hash_secret(secret), prefix=secret[:10],
                                                   expires_at=expires, enabled=True)
        config_changed()
    return key.pk, secret


def gateway_base(request) -> str:
    configured = getattr(settings, "CONSOLE_GATEWAY_URL", "")
    return (configured or f"{request.scheme}://{request.get_host()}").rstrip("/")


def _relay(url: str, secret: str, body: dict):
    """Yield NDJSON lines: {"delta"}, then {"usage", "request_id"} or {"error"}."""
    headers = {"Authorization": f"Bearer {secret}", "X-TokenBill-Run-Id": "console-playground"}
    try:
        deadline = time.monotonic() + STARTUP_RETRY_SECONDS
        with httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as client:
            while True:
                with client.stream("POST", url, json=body, headers=headers) as upstream:
                    if upstream.status_code in NOT_YET_STATUSES and time.monotonic() < deadline:
                        time.sleep(0.25)  # the gateway's snapshot has not seen the new key yet
                        continue
                    yield from _lines(upstream)
                    return
    except httpx.HTTPError as exc:
        yield _ndjson({"error": f"Could not reach the gateway ({type(exc).__name__})."})


async def _arelay(url: str, secret: str, body: dict):
    headers = {"Authorization": f"Bearer {secret}", "X-TokenBill-Run-Id": "console-playground"}
    try:
        deadline = time.monotonic() + STARTUP_RETRY_SECONDS
        async with httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0)) as client:
            while True:
                async with client.stream("POST", url, json=body, headers=headers) as upstream:
                    if upstream.status_code in NOT_YET_STATUSES and time.monotonic() < deadline:
                        await asyncio.sleep(0.25)  # the gateway's snapshot has not seen the new key yet
                        continue
                    if upstream.status_code >= 400:
                        await upstream.aread()
                        yield _error_line(upstream)
                        return
                    parser = _SSE(upstream.headers.get(REQUEST_ID_HEADER, ""))
                    async for line in upstream.aiter_lines():
                        for out in parser.feed(line):
                            yield out
                    yield parser.close()
                    return
    except httpx.HTTPError as exc:
        yield _ndjson({"error": f"Could not reach the gateway ({type(exc).__name__})."})


def _lines(upstream: httpx.Response):
    if upstream.status_code >= 400:
        upstream.read()
        yield _error_line(upstream)
        return
    parser = _SSE(upstream.headers.get(REQUEST_ID_HEADER, ""))
    for line in upstream.iter_lines():
        yield from parser.feed(line)
    yield parser.close()


def _error_line(upstream: httpx.Response) -> bytes:
    try:
        message = upstream.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {upstream.status_code}"
    return _ndjson({"error": message, "status": upstream.status_code})


class _SSE:
    """OpenAI chat chunks (SSE lines) -> NDJSON deltas, remembering usage and the id."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.usage: dict = {}
        self.charge: str | None = None
        self.finished = False

    def feed(self, line: str) -> list[bytes]:
        if line.startswith(": x-tokenbill-charge="):  # the stream's charge, just before [DONE]
            self.charge = _comment_charge(line)
            return []
        if self.finished or not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.finished = True
            return []
        try:
            chunk = json.loads(data)
        except ValueError:
            return []
        self.usage = chunk.get("usage") or self.usage
        deltas = [(choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or []]
        return [_ndjson({"delta": d}) for d in deltas if d]

    def close(self) -> bytes:
        done = {"done": True, "usage": self.usage, "request_id": self.request_id}
        if self.charge is not None:
            done["charge"] = self.charge
        return _ndjson(done)


def _comment_charge(line: str) -> str | None:
    """': x-tokenbill-charge=0.0123 x-tokenbill-balance=…' -> '0.01' (the page's format)."""
    from decimal import InvalidOperation

    from billing.money import MoneyError, format_credits_human, to_micros

    value = line.split("x-tokenbill-charge=", 1)[1].split()[0] if "x-tokenbill-charge=" in line else ""
    try:
        return format_credits_human(to_micros(value))
    except (MoneyError, InvalidOperation, ValueError):
        return None


def _ndjson(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()



@console_view(read=Role.DEVELOPER)
def playground_result(request):
    """The charge of a finished playground call, once its request log row is written
    (off the gateway's hot path, in batches): 404 until then, the page polls."""
    row = (RequestLog.objects.filter(organization=request.org, request_id=request.GET.get("request_id", ""))
           .values("charge", "input_tokens", "output_tokens", "status").first())
    if row is None:
        return JsonResponse({"pending": True}, status=404)
    return JsonResponse({"charge": format_credits_human(row["charge"]), "input_tokens": row["input_tokens"],
                         "output_tokens": row["output_tokens"], "status": row["status"]})
