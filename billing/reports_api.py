"""Management API: the ledger, the request log and usage reports (read-only).

Amounts are decimal-string credits (billing.money.format_credits); cost in the provider's
currency is a decimal string too. Everything is scoped to the token's organization.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema

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
