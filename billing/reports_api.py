"""Management API: the ledger, the request log, runs and usage reports (read-only).

Amounts are decimal-string credits (billing.money.format_credits); cost in the provider's
currency is a decimal string too. Everything is scoped to the token's organization.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import csv
import io

from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema
from ninja.errors import HttpError

from billing import runs
from billing.models import LedgerEntry, RequestLog
from billing.money import format_credits
from billing.usage import usage_report
from routing import selectors

router = Router(tags=["reports"])


class LedgerRow(Schema):
    id: int
    kind: str
    amount: str
    request_id: str
    access_key_id: int | None
    note: str
    rate_snapshot: dict
    created_at: datetime

    @staticmethod
    def resolve_amount(obj) -> str:
        return format_credits(obj.amount)


class RequestRow(Schema):
    request_id: str
    virtual_endpoint: str
    access_key_id: int | None
    run_id: str
    endpoint: str
    logical_model: str
    physical_model_id: int | None
    status: str
    http_status: int
    error_code: str
    attempts: list
    input_tokens: int
    cached_input_tokens: int
    cache_creation_tokens: int
    output_tokens: int
    reasoning_tokens: int
    usage_estimated: bool
    cost: str
    cost_currency: str
    cost_credits: str
    charge: str
    price_snapshot: dict
    stream: bool
    client_disconnected: bool
    started_at: datetime
    latency_ms: int
    ttfb_ms: int | None

    @staticmethod
    def resolve_virtual_endpoint(obj) -> str:
        return obj.virtual_endpoint.public_id

    @staticmethod
    def resolve_logical_model(obj) -> str:
        return obj.logical_model_name

    @staticmethod
    def resolve_cost(obj) -> str:
        return format(obj.cost.normalize(), "f")

    @staticmethod
    def resolve_cost_credits(obj) -> str:
        return format_credits(obj.cost_credits)

    @staticmethod
    def resolve_charge(obj) -> str:
        return format_credits(obj.charge)


class UsageRow(Schema):
    group: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    cache_creation_tokens: int
    output_tokens: int
    cost: str
    charge: str
    margin: str


@router.get("/virtual-endpoints/{ve_id}/ledger", response=list[LedgerRow])
def ledger_list(request, ve_id: str, limit: int = 100, offset: int = 0):
    ve = get_object_or_404(selectors.endpoint_list(organization_id=request.auth.organization_id), public_id=ve_id)
    limit = max(1, min(limit, 1000))
    return LedgerEntry.objects.filter(virtual_endpoint=ve).order_by("-created_at", "-id")[offset:offset + limit]


@router.get("/requests", response=list[RequestRow])
def request_list(request, ve: str | None = None, run_id: str | None = None, since: datetime | None = None,
                 limit: int = 100):
    rows = RequestLog.objects.filter(organization_id=request.auth.organization_id).select_related("virtual_endpoint")
    if ve:
        rows = rows.filter(virtual_endpoint__public_id=ve)
    if run_id:
        rows = rows.filter(run_id=run_id)
    if since:
        rows = rows.filter(started_at__gte=since)
    return rows.order_by("-started_at", "-id")[: max(1, min(limit, 1000))]


@router.get("/usage", response=list[UsageRow])
def usage(request, ve: str | None = None, group_by: Literal["day", "logical_model", "physical_model", "key"] = "day",
          since: datetime | None = Query(None, alias="from"), until: datetime | None = Query(None, alias="to")):
    rows = usage_report(organization_id=request.auth.organization_id, group_by=group_by, ve_public_id=ve,
                        since=since, until=until)
    return [{**r, "cost": format_credits(r["cost_credits"]), "charge": format_credits(r["charge"]),
             "margin": format_credits(r["margin"])} for r in rows]


# --- runs (billing/runs.py) ---------------------------------------------------------------
class RunRow(Schema):
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
    cost: str
    charge: str

    @staticmethod
    def resolve_cost(obj) -> str:
        return format_credits(obj.cost_credits)

    @staticmethod
    def resolve_charge(obj) -> str:
        return format_credits(obj.charge)


class RunAttempt(Schema):
    upstream_model: str
    provider: str
    status: int | str | None
    error: str


class RunStepRow(Schema):
    request_id: str
    started_at: datetime
    latency_ms: int
    model: str
    served_by: str
    status: str
    http_status: int
    error_code: str
    input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    usage_estimated: bool
    cost: str
    charge: str
    fallbacks: list[RunAttempt]

    @staticmethod
    def resolve_cost(obj) -> str:
        return format_credits(obj.cost_credits)

    @staticmethod
    def resolve_charge(obj) -> str:
        return format_credits(obj.charge)


class RunRoute(Schema):
    served_by: str
    calls: int
    charge: str

    @staticmethod
    def resolve_charge(obj) -> str:
        return format_credits(obj["charge"])


class RunDetail(Schema):
    run: RunRow
    models: list[str]
    routes: list[RunRoute]
    fallbacks: int
    steps: list[RunStepRow]


@router.get("/runs", response=list[RunRow])
def run_list(request, ve: str | None = None, since: datetime | None = None, limit: int = 100):
    """Runs (calls sharing an X-TokenBill-Run-Id within one VE), most recently active first."""
    return runs.run_list(request.auth.organization_id, ve_public_id=ve, since=since, limit=limit)


def _report(request, run_id: str, ve: str | None) -> runs.RunReport:
    try:
        report = runs.run_report(request.auth.organization_id, run_id, ve)
    except runs.AmbiguousRun as exc:
        raise HttpError(409, str(exc)) from None
    if report is None:
        raise HttpError(404, "No calls with this run id.")
    return report


# {path:…}: a run id may hold "/" (the console takes it too). The CSV comes first, or the
# detail route would take "<id>/calls.csv" for a run id.
@router.get("/runs/{path:run_id}/calls.csv")
def run_calls_csv(request, run_id: str, ve: str | None = None):
    """The run's calls as CSV, one row per call, amounts in credits."""
    report = _report(request, run_id, ve)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["request_id", "started_at", "model", "served_by", "status", "http_status", "error_code",
                     "input_tokens", "output_tokens", "usage_estimated", "cost_credits", "charge", "fallbacks"])
    for s in report.steps:
        tried = "; ".join(f"{a['upstream_model']} @ {a['provider']}: {a['status']} {a['error']}".strip()
                          for a in s.fallbacks)
        writer.writerow([s.request_id, s.started_at.isoformat(), s.model, s.served_by, s.status, s.http_status,
                         s.error_code, s.input_tokens, s.output_tokens, s.usage_estimated,
                         format_credits(s.cost_credits), format_credits(s.charge), tried])
    response = HttpResponse(out.getvalue(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="run-{report.summary.virtual_endpoint}.csv"'
    return response


@router.get("/runs/{path:run_id}", response=RunDetail)
def run_detail(request, run_id: str, ve: str | None = None):
    """One run: totals, models asked, routes that served, and every call in order with the
    routes tried before the one that answered (and why they failed)."""
    report = _report(request, run_id, ve)
    return {"run": report.summary, "models": report.models, "routes": report.routes,
            "fallbacks": report.fallbacks, "steps": report.steps}
