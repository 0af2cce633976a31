"""The live request feed: one channel-layer group per organization.

Billing (or the gateway's log writer) calls `publish_request(org_id, payload)` after a
request log row exists; every console tab of that organization connected to
console.consumers.LiveFeedConsumer receives it. With the in-memory channel layer
(embedded default) only consumers in the same process see it; with Redis every process.

The payload must be JSON-safe and contain nothing secret: use `request_payload(log)`.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from billing.money import format_credits_human

log = logging.getLogger(__name__)

EVENT_TYPE = "request.logged"


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
