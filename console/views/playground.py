"""Playground: chat with one to three logical models side by side, through the gateway.

Design (no access-key secret is ever stored): each answer pane POSTs to `playground_stream`.
That view mints a short-lived access key on the chosen VE (expires in 5 minutes, name
"playground · <user>"), keeps its secret only in a local variable, calls the gateway over
HTTP exactly like an API user would (so routing, billing, the ledger and the request log
all see a normal call), relays the streamed deltas to the browser as NDJSON, and deletes
the key when the stream ends. The merchant never handles a secret, and a crash leaves at
worst a key that expires by itself minutes later.

The gateway reloads keys from its in-process snapshot, which follows config changes within
GATEWAY_CONFIG_POLL_SECONDS; the first call retries a 401 for up to ~3 s to cover that.
The gateway base URL is settings.CONSOLE_GATEWAY_URL when set, else this request's origin
(the embedded default serves the gateway and the console from one ASGI server).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
from django.conf import settings
from django.http import HttpResponseBadRequest, StreamingHttpResponse
from django.utils import timezone

from console.access import console_view, org_get
from console.views.common import render_page
from routing.models import AccessKey, LogicalModel, Role, VirtualEndpoint
from routing.services import config_changed, key_create

TEMPLATE = "console/playground.html"
KEY_TTL = timedelta(minutes=5)
STARTUP_RETRY_SECONDS = 3.0


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
    key, secret = key_create(virtual_endpoint=ve, name=f"playground · {request.user.get_username()}"[:120],
                             expires_at=timezone.now() + KEY_TTL)
    url = gateway_base(request) + f"/{ve.public_id}/v1/chat/completions"
    body = {"model": model.name, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": message}]}
    response = StreamingHttpResponse(_relay(url, secret, body, key.pk), content_type="application/x-ndjson")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


def gateway_base(request) -> str:
    configured = getattr(settings, "CONSOLE_GATEWAY_URL", "")
    return (configured or f"{request.scheme}://{request.get_host()}").rstrip("/")


def _relay(url: str, secret: str, body: dict, key_pk: int):
    """Yield NDJSON lines: {"delta"}, then {"usage", "request_id"} or {"error"}."""
    headers = {"Authorization": f"Bearer {secret}", "X-TokenBill-Run-Id": "console-playground"}
    try:
        deadline = time.monotonic() + STARTUP_RETRY_SECONDS
        with httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as client:
            while True:
                with client.stream("POST", url, json=body, headers=headers) as upstream:
                    if upstream.status_code == 401 and time.monotonic() < deadline:
                        time.sleep(0.25)  # the gateway's snapshot has not seen the new key yet
                        continue
                    yield from _lines(upstream)
                    return
    except httpx.HTTPError as exc:
        yield _ndjson({"error": f"Could not reach the gateway ({type(exc).__name__})."})
    finally:
        _drop_key(key_pk)


def _lines(upstream: httpx.Response):
    request_id = upstream.headers.get("x-request-id", "")
    if upstream.status_code >= 400:
        upstream.read()
        try:
            message = upstream.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {upstream.status_code}"
        yield _ndjson({"error": message, "status": upstream.status_code})
        return
    usage = None
    for line in upstream.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        usage = chunk.get("usage") or usage
        request_id = request_id or chunk.get("id", "")
        for choice in chunk.get("choices") or []:
            delta = (choice.get("delta") or {}).get("content")
            if delta:
                yield _ndjson({"delta": delta})
    yield _ndjson({"done": True, "usage": usage or {}, "request_id": request_id})


def _ndjson(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _drop_key(key_pk: int) -> None:
    AccessKey.objects.filter(pk=key_pk).delete()
    config_changed()
