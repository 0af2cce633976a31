"""The live request feed: one channel-layer group per organization.

Billing (or the gateway's log writer) calls `publish_request(org_id, payload)` after a
request log row exists; every console tab of that organization connected to
console.consumers.LiveFeedConsumer receives it. With the in-memory channel layer
(embedded default) only consumers in the same process see it; with Redis every process.

The payload must be JSON-safe and contain nothing secret: use `request_payload(log)`.
`publish_rows(rows)` takes a batch of the row dicts billing's log writer bulk-creates;
console/apps.py registers it with billing.requestlog.on_written(listener) when billing
offers that hook (billing must not import console: the dependency points this way).
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
    """A flushed batch of request-log rows (the dicts billing's log writer bulk-creates)
    to the feed: one query for the VE names and one channel-layer message per
    organization for the whole batch (this runs in the gateway process, next to its
    event loop: a message per row cost more CPU than the call it reported). Never raises."""
    if not rows:
        return
    try:
        from routing.models import VirtualEndpoint

        ve_ids = {row.get("virtual_endpoint_id") for row in rows}
        names = dict(VirtualEndpoint.objects.filter(pk__in=ve_ids).values_list("pk", "name"))
        by_org: dict[int, list[dict]] = {}
        for row in rows:
            payload = _row_payload(row, names.get(row.get("virtual_endpoint_id"), ""))
            by_org.setdefault(row["organization_id"], []).append(payload)
        layer = get_channel_layer()
        if layer is None:
            return
        async_to_sync(_send_batches)(layer, by_org)
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
