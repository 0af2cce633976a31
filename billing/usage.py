"""Usage rollups (hourly and daily, per VE, key, logical and physical model) and the
usage report. A bucket is recomputed whole from the request log in one transaction, so
re-running a rollup (a retried task, a late batch of log rows) never double counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import Count, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from billing.models import RequestLog
from billing.models_usage import UsageRollup

DIMENSIONS = ("virtual_endpoint_id", "access_key_id", "logical_model_id", "physical_model_id")
SUMS = ("input_tokens", "cached_input_tokens", "cache_creation_tokens", "output_tokens", "cost_credits", "charge")


def bucket_start(period: str, at: datetime) -> datetime:
    at = at.astimezone(UTC)
    start = at.replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if period == "day" else start


def rollup_bucket(period: str, start: datetime) -> int:
    end = start + (timedelta(days=1) if period == "day" else timedelta(hours=1))
    rows = (RequestLog.objects.filter(started_at__gte=start, started_at__lt=end).values(*DIMENSIONS)
            .annotate(requests=Count("id"), **{f"s_{f}": Sum(f) for f in SUMS}))
    rollups = [UsageRollup(period=period, bucket=start, requests=r["requests"],
                           **{d: r[d] for d in DIMENSIONS}, **{f: r[f"s_{f}"] or 0 for f in SUMS}) for r in rows]
    with transaction.atomic():
        UsageRollup.objects.filter(period=period, bucket=start).delete()
        UsageRollup.objects.bulk_create(rollups)
    return len(rollups)


def rollup_recent(now: datetime | None = None) -> dict:
    """The current and the previous hour and day (late log rows land in the previous one)."""
    now = now or timezone.now()
    done = {}
    for period, step in (("hour", timedelta(hours=1)), ("day", timedelta(days=1))):
        current = bucket_start(period, now)
        done[period] = rollup_bucket(period, current - step) + rollup_bucket(period, current)
    return done


GROUPS = {"day": "day", "logical_model": "logical_model_name", "physical_model": "physical_model__upstream_model",
          "key": "access_key__name"}


def usage_report(*, organization_id: int, group_by: str, ve_public_id: str | None = None,
                 since: datetime | None = None, until: datetime | None = None) -> list[dict]:
    """Units, cost, charge and margin (charge - cost, in credits) per group, from the log."""
    rows = RequestLog.objects.filter(organization_id=organization_id)
    if ve_public_id:
        rows = rows.filter(virtual_endpoint__public_id=ve_public_id)
    if since:
        rows = rows.filter(started_at__gte=since)
    if until:
        rows = rows.filter(started_at__lt=until)
    if group_by == "day":
        rows = rows.annotate(day=TruncDay("started_at"))
    field = GROUPS[group_by]
    result = []
    for r in rows.values(field).annotate(requests=Count("id"), **{f"s_{f}": Sum(f) for f in SUMS}).order_by(field):
        sums = {f: r[f"s_{f}"] or 0 for f in SUMS}
        key = r[field]
        result.append({"group": key.date().isoformat() if hasattr(key, "date") else (key or ""),
                       "requests": r["requests"], **sums, "margin": sums["charge"] - sums["cost_credits"]})
    return result
