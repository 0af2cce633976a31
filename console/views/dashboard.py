"""Dashboard: totals for today / 7 / 30 days, a stacked chart, the live request feed."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing.models import RequestLog
from console import charts
from console.access import console_view
from console.views.common import render_page
from routing.models import Role, VirtualEndpoint

TEMPLATE = "console/dashboard.html"


def _choice(request, name: str, options, default: str) -> str:
    value = request.GET.get(name, default)
    return value if value in options else default


def totals(org) -> list[dict]:
    """Spend (cost in credits), charge, margin, requests, tokens per window: one query."""
    now = timezone.now()
    start_today = timezone.localtime(now).replace(hour=0, minute=0, second=0, microsecond=0)
    windows = [("Today", start_today), ("7 days", now - timedelta(days=7)), ("30 days", now - timedelta(days=30))]
    tokens = F("input_tokens") + F("cached_input_tokens") + F("output_tokens")
    aggregates = {}
    for i, (_, since) in enumerate(windows):
        q = Q(started_at__gte=since)
        aggregates.update({
            f"cost{i}": Coalesce(Sum("cost_credits", filter=q), 0), f"charge{i}": Coalesce(Sum("charge", filter=q), 0),
            f"n{i}": Count("id", filter=q), f"tok{i}": Coalesce(Sum(tokens, filter=q), 0),
        })
    row = RequestLog.objects.filter(organization=org, started_at__gte=windows[2][1]).aggregate(**aggregates)
    result = []
    for i, (label, _) in enumerate(windows):
        cost, charge = row[f"cost{i}"], row[f"charge{i}"]
        margin_pct = round((charge - cost) * 100 / charge) if charge else None
        result.append({"label": label, "cost": cost, "charge": charge, "margin": charge - cost, "margin_pct": margin_pct,
                       "requests": row[f"n{i}"], "tokens": row[f"tok{i}"]})
    return result


@console_view(read=Role.VIEWER)
def home(request):
    period = _choice(request, "period", charts.PERIODS, "day")
    split = _choice(request, "split", charts.SPLITS, "ve")
    metric = _choice(request, "metric", charts.METRICS, "charge")
    buckets, data = charts.series(request.org, period=period, split=split, metric=metric)
    chart = charts.stacked_bars(buckets, data, metric=metric, period=period)
    recent = RequestLog.objects.filter(organization=request.org).select_related("virtual_endpoint")[:12]
    context = {
        "totals": totals(request.org), "chart": chart, "period": period, "split": split, "metric": metric,
        "periods": list(charts.PERIODS), "splits": {k: v[0] for k, v in charts.SPLITS.items()}, "metrics": charts.METRICS,
        "recent": recent, "has_endpoints": VirtualEndpoint.objects.filter(organization=request.org).exists(),
    }
    return render_page(request, TEMPLATE, context, partial="_chart")
