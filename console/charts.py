"""Server-rendered SVG charts: stacked bars of a metric per period, split by a dimension.

No chart library: the page gets a finished <svg> (works without JS, prints, and costs
one aggregate query)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import Count, F, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncMonth, TruncWeek
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import mark_safe

from billing.models import RequestLog

PALETTE = ["#4f46e5", "#06b6d4", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#94a3b8"]
SPLITS = {
    "ve": ("Virtual Endpoint", "virtual_endpoint__name"),
    "key": ("Key", "access_key__name"),
    "logical": ("Logical model", "logical_model_name"),
    "physical": ("Physical model", "physical_model__upstream_model"),
    "provider": ("Provider", "provider__name"),
}
PERIODS = {"day": (TruncDay, 30, 1), "week": (TruncWeek, 12 * 7, 7), "month": (TruncMonth, 365, 31)}
METRICS = {"charge": "Charge (credits)", "requests": "Requests", "tokens": "Tokens"}
MAX_SERIES = 6


@dataclass
class Chart:
    svg: str
    legend: list[tuple[str, str]]
    empty: bool


def series(org, *, period: str, split: str, metric: str) -> tuple[list[date], dict[str, dict[date, int]]]:
    trunc, days, _ = PERIODS[period]
    field = SPLITS[split][1]
    since = timezone.now() - timedelta(days=days)
    value = {"charge": Sum("charge"), "requests": Count("id"),
             "tokens": Sum(F("input_tokens") + F("cached_input_tokens") + F("output_tokens"))}[metric]
    rows = (
        RequestLog.objects.filter(organization=org, started_at__gte=since)
        .annotate(bucket=trunc("started_at"), label=Coalesce(field, F("logical_model_name")))
        .values("bucket", "label").annotate(v=value).order_by("bucket")
    )
    data: dict[str, dict[date, int]] = {}
    for row in rows:
        bucket = row["bucket"].date() if isinstance(row["bucket"], datetime) else row["bucket"]
        data.setdefault(row["label"] or "—", {})[bucket] = int(row["v"] or 0)
    return _buckets(period, since), _top(data)


def _buckets(period: str, since: datetime) -> list[date]:
    today = timezone.localdate()
    start = timezone.localtime(since).date()
    if period == "day":
        return [start + timedelta(days=i) for i in range((today - start).days + 1)]
    if period == "week":
        monday = start - timedelta(days=start.weekday())
        return [monday + timedelta(weeks=i) for i in range((today - monday).days // 7 + 1)]
    first = start.replace(day=1)
    months = []
    while first <= today:
        months.append(first)
        first = (first + timedelta(days=32)).replace(day=1)
    return months


def _top(data: dict[str, dict[date, int]]) -> dict[str, dict[date, int]]:
    """The biggest series by total, the rest summed as 'Other'."""
    ranked = sorted(data.items(), key=lambda kv: -sum(kv[1].values()))
    top = dict(ranked[:MAX_SERIES])
    if len(ranked) > MAX_SERIES:
        other: dict[date, int] = {}
        for _, points in ranked[MAX_SERIES:]:
            for k, v in points.items():
                other[k] = other.get(k, 0) + v
        top["Other"] = other
    return top


def _axis_credits(micros: int) -> str:
    """Axis labels are exact (0.0025), where bar tooltips round to cents."""
    from billing.money import format_credits, format_credits_human

    return format_credits_human(micros) if micros % 1_000_000 == 0 else format_credits(micros)


def _nice_ceiling(peak: int, steps: int = 4) -> int:
    """The smallest axis top >= peak whose `steps` gridlines fall on round numbers
    (1, 2, 2.5 or 5 x a power of ten), so no two labels read the same."""
    raw = max(peak, 1) / steps
    magnitude = 10 ** max(len(str(int(raw))) - 1, 0)
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * magnitude
        if step >= raw:
            return int(step * steps)
    return int(10 * magnitude * steps)


def stacked_bars(buckets: list[date], data: dict[str, dict[date, int]], *, metric: str, period: str,
                 width: int = 760, height: int = 240) -> Chart:
    from billing.money import format_credits_human

    fmt = format_credits_human if metric == "charge" else (lambda v: f"{v:,}")
    axis_fmt = _axis_credits if metric == "charge" else fmt
    left, bottom, top = 64, 26, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    totals = [sum(points.get(b, 0) for points in data.values()) for b in buckets]
    peak = _nice_ceiling(max(totals, default=0))
    slot = plot_w / max(len(buckets), 1)
    bar_w = max(2.0, slot * 0.7)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(METRICS[metric])} by {period}" '
             f'xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="11">']
    for i in range(5):  # grid lines and y labels
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#667085">{escape(axis_fmt(peak * i // 4))}</text>')
    legend = []
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(data)}
    for j, bucket in enumerate(buckets):
        x = left + j * slot + (slot - bar_w) / 2
        y = top + plot_h
        for name, points in data.items():
            v = points.get(bucket, 0)
            if not v:
                continue
            h = plot_h * v / peak
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" rx="2" fill="{colors[name]}">'
                         f'<title>{escape(name)} · {bucket:%b %d}: {escape(fmt(v))}</title></rect>')
        every = max(1, len(buckets) // 8)
        if j % every == 0:
            label = f"{bucket:%b %d}" if period != "month" else f"{bucket:%b %Y}"
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - 8}" text-anchor="middle" fill="#667085">{label}</text>')
    parts.append("</svg>")
    legend = [(name, colors[name]) for name in data]
    return Chart(svg=mark_safe("".join(parts)), legend=legend, empty=not any(totals))
