"""Runs: every call carrying the same run id (`X-TokenBill-Run-Id` or `metadata.run_id`)
within one Virtual Endpoint, read back from the request log.

A run has no row of its own: its report is an aggregate of its request-log rows, so the
report always equals the sum of the rows (tests/billing/test_runs.py checks it), and a
run that is still going shows its spend so far. Amounts are int micro-credits here; the
API and the console format them.

Why a run cost what it cost: each call's step in the timeline names the model asked, the
route that served (upstream model and provider), the routes tried before it and why each
failed (the request log's `attempts` trail), its tokens, cost and charge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Max, Min, Q, Sum

from billing.models import RequestLog, RequestStatus

_SUMS = ("input_tokens", "cached_input_tokens", "cache_creation_tokens", "output_tokens", "reasoning_tokens",
         "cost_credits", "charge")


class AmbiguousRun(Exception):
    """The run id is used on several VEs of the organization: the caller must name the VE."""

    def __init__(self, endpoints: list[str]):
        super().__init__(f"This run id is used on several virtual endpoints ({', '.join(endpoints)}); pass ve=<ve_id>.")
        self.endpoints = endpoints


@dataclass(slots=True)
class RunSummary:
    run_id: str
    virtual_endpoint: str
    started_at: datetime
    ended_at: datetime
    calls: int
    failures: int
    input_tokens: int
    cached_input_tokens: int
    cache_creation_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_credits: int
    charge: int


@dataclass(slots=True)
class RunStep:
    request_id: str
    started_at: datetime
    latency_ms: int
    model: str
    served_by: str  # "upstream_model @ provider", empty when no route answered
    status: str
    http_status: int
    error_code: str
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_credits: int
    charge: int
    usage_estimated: bool
    fallbacks: list[dict]  # the attempts before the one that answered: upstream_model, provider, status, error


@dataclass(slots=True)
class RunReport:
    summary: RunSummary
    models: list[str]
    routes: list[dict]  # {"served_by", "calls", "charge"} per route that answered
    fallbacks: int  # calls that needed more than one route
    steps: list[RunStep] = field(default_factory=list)


def _runs(organization_id: int):
    return RequestLog.objects.filter(organization_id=organization_id).exclude(run_id="")


def _aggregates():
    failed = ~Q(status=RequestStatus.OK)
    # Named apart from the fields they sum (Django refuses an annotation that shadows one).
    return dict(first_at=Min("started_at"), last_at=Max("started_at"), calls=Count("id"),
                failures=Count("id", filter=failed), **{"total_" + f: Sum(f) for f in _SUMS})


def _summary(run_id: str, ve_public_id: str, row: dict) -> RunSummary:
    return RunSummary(run_id=run_id, virtual_endpoint=ve_public_id, started_at=row["first_at"],
                      ended_at=row["last_at"], calls=row["calls"], failures=row["failures"],
                      **{f: int(row["total_" + f] or 0) for f in _SUMS})


def run_list(organization_id: int, *, ve_public_id: str | None = None, since: datetime | None = None,
             limit: int = 100) -> list[RunSummary]:
    """The organization's runs, most recently active first (one grouped query)."""
    rows = _runs(organization_id)
    if ve_public_id:
        rows = rows.filter(virtual_endpoint__public_id=ve_public_id)
    if since:
        rows = rows.filter(started_at__gte=since)
    grouped = (rows.values("run_id", "virtual_endpoint__public_id").annotate(**_aggregates())
               .order_by("-last_at", "run_id")[: max(1, min(limit, 1000))])
    return [_summary(r["run_id"], r["virtual_endpoint__public_id"], r) for r in grouped]


def run_calls(organization_id: int, run_id: str, ve_public_id: str | None = None):
    """The run's request-log rows in order. Raises AmbiguousRun if `run_id` is used on several
    VEs and none is named; an empty queryset for an unknown run."""
    rows = _runs(organization_id).filter(run_id=run_id)
    if ve_public_id:
        rows = rows.filter(virtual_endpoint__public_id=ve_public_id)
    else:
        endpoints = sorted(set(rows.values_list("virtual_endpoint__public_id", flat=True).distinct()))
        if len(endpoints) > 1:
            raise AmbiguousRun(endpoints)
    return rows.select_related("virtual_endpoint", "physical_model", "provider").order_by("started_at", "id")


def _served_by(row: RequestLog) -> str:
    if row.status != RequestStatus.OK or row.physical_model_id is None:
        return ""
    model = row.physical_model.upstream_model if row.physical_model else ""
    provider = row.provider.name if row.provider else ""
    return f"{model} @ {provider}" if provider else model


def _fallbacks(row: RequestLog) -> list[dict]:
    tried = list(row.attempts or [])
    if row.status == RequestStatus.OK and tried:
        tried = tried[:-1]  # the last attempt is the one that answered
    return [{"upstream_model": a.get("upstream_model", ""), "provider": a.get("provider", ""),
             "status": a.get("status"), "error": a.get("error", "")} for a in tried]


def run_report(organization_id: int, run_id: str, ve_public_id: str | None = None) -> RunReport | None:
    """Everything about one run, or None if it has no calls (see run_calls for AmbiguousRun)."""
    rows = list(run_calls(organization_id, run_id, ve_public_id))
    if not rows:
        return None
    steps, routes, models = [], {}, []
    for row in rows:
        served = _served_by(row)
        step = RunStep(
            request_id=row.request_id, started_at=row.started_at, latency_ms=row.latency_ms,
            model=row.logical_model_name, served_by=served, status=row.status, http_status=row.http_status,
            error_code=row.error_code, input_tokens=row.input_tokens, output_tokens=row.output_tokens,
            reasoning_tokens=row.reasoning_tokens,
            cost_credits=row.cost_credits, charge=row.charge, usage_estimated=row.usage_estimated,
            fallbacks=_fallbacks(row),
        )
        steps.append(step)
        if row.logical_model_name and row.logical_model_name not in models:
            models.append(row.logical_model_name)
        if served:
            route = routes.setdefault(served, {"served_by": served, "calls": 0, "charge": 0})
            route["calls"] += 1
            route["charge"] += row.charge
    totals = {f: sum(getattr(r, f) for r in rows) for f in _SUMS}
    summary = RunSummary(
        run_id=run_id, virtual_endpoint=rows[0].virtual_endpoint.public_id, started_at=rows[0].started_at,
        ended_at=rows[-1].started_at, calls=len(rows), failures=sum(r.status != RequestStatus.OK for r in rows),
        **totals,
    )
    return RunReport(summary=summary, models=models, routes=list(routes.values()),
                     fallbacks=sum(1 for s in steps if s.fallbacks), steps=steps)
