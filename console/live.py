"""The live request feed: one channel-layer group per organization.

Billing (or the gateway's log writer) calls `publish_request(org_id, payload)` after a
request log row exists; every console tab of that organization connected to
console.consumers.LiveFeedConsumer receives it. With the in-memory channel layer
(embedded default) only consumers in the same process see it; with Redis every process.

The payload must be JSON-safe and contain nothing secret: use `request_payload(log)`.
`prepare_rows(rows)` takes a batch of the row dicts billing's log writer inserts and
returns the coroutine that sends it; console/apps.py registers it with
billing.requestlog.on_written(listener) (billing must not import console: the
dependency points this way). `publish_rows(rows)` is the same for sync callers.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from billing.money import format_credits_human

log = logging.getLogger(__name__)

EVENT_TYPE = "request.logged"
BATCH_EVENT_TYPE = "request.batch"


def requests_group(org_id: int) -> str:
    return f"org-{org_id}-requests"


def request_payload(row) -> dict:
    """A RequestLog row as the feed shows it (no key secret, no credential, no URL)."""
    return {
        "id": row.pk,
        "request_id": row.request_id,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "ve": getattr(row.virtual_endpoint, "name", "") if row.virtual_endpoint_id else "",
        "model": row.logical_model_name,
        "status": row.status,
        "http_status": row.http_status,
        "tokens": row.input_tokens + row.cached_input_tokens + row.output_tokens,
        "charge": format_credits_human(row.charge),
        "latency_ms": row.latency_ms,
    }


def publish_rows(rows: list[dict]) -> None:
    """A flushed batch of request-log rows to the feed, from sync code. Never raises."""
    coroutine = prepare_rows(rows)
    if coroutine is not None:
        try:
            async_to_sync(_guarded)(coroutine)
        except Exception as exc:  # pragma: no cover - _guarded does not raise
            log.warning("live feed: could not publish a batch (%s)", type(exc).__name__)


def prepare_rows(rows: list[dict]):
    """billing.requestlog's on_written listener: in the writer's thread, one query for the
    VE names and the payloads grouped by organization; returns the coroutine that sends
    one channel-layer message per organization, which the writer awaits on the gateway's
    event loop (its long-lived channel-layer connection), or None. Never raises: the feed
    is best-effort, and a message per row cost more CPU than the call it reported."""
    if not rows:
        return None
    try:
        from routing.models import VirtualEndpoint

        layer = get_channel_layer()
        if layer is None:
            return None
        ve_ids = {row.get("virtual_endpoint_id") for row in rows}
        names = dict(VirtualEndpoint.objects.filter(pk__in=ve_ids).values_list("pk", "name"))
        by_org: dict[int, list[dict]] = {}
        for row in rows:
            payload = _row_payload(row, names.get(row.get("virtual_endpoint_id"), ""))
            by_org.setdefault(row["organization_id"], []).append(payload)
    except Exception as exc:
        log.warning("live feed: could not publish a batch (%s)", type(exc).__name__)
        return None
    return _guarded(_send_batches(layer, by_org))


async def _guarded(coroutine) -> None:
    try:
        await coroutine
    except Exception as exc:
        log.warning("live feed: could not publish a batch (%s)", type(exc).__name__)


async def _send_batches(layer, by_org: dict[int, list[dict]]) -> None:
    for org_id, payloads in by_org.items():
        await layer.group_send(requests_group(org_id), {"type": BATCH_EVENT_TYPE, "payloads": payloads})


def _row_payload(row: dict, ve_name: str) -> dict:
    started = row.get("started_at")
    return {
        "id": None,
        "request_id": row.get("request_id", ""),
        "started_at": started.isoformat() if started else None,
        "ve": ve_name,
        "model": row.get("logical_model_name", ""),
        "status": row.get("status", "ok"),
        "http_status": row.get("http_status", 200),
        "tokens": sum(int(row.get(k) or 0) for k in ("input_tokens", "cached_input_tokens", "output_tokens")),
        "charge": format_credits_human(int(row.get("charge") or 0)),
        "latency_ms": row.get("latency_ms", 0),
    }


def publish_request(org_id: int, payload: dict) -> None:
    """Sync callers (Celery tasks, log writers). Never raises: the feed is best-effort."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(requests_group(org_id), {"type": EVENT_TYPE, "payload": payload})
    except Exception as exc:  # a feed outage must never fail billing
        log.warning("live feed: publish failed (%s)", type(exc).__name__)


async def apublish_request(org_id: int, payload: dict) -> None:
    """Async callers (the gateway's event loop)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(requests_group(org_id), {"type": EVENT_TYPE, "payload": payload})
    except Exception as exc:
        log.warning("live feed: publish failed (%s)", type(exc).__name__)
