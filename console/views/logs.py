"""Request log (filters, pages, detail drawer, CSV) and the per-VE ledger with running balance."""

from __future__ import annotations

import csv
from datetime import datetime, time, timedelta

from django.db.models import BigIntegerField, Case, F, Q, Sum, Value, When
from django.db.models.functions import Coalesce
from django.http import StreamingHttpResponse
from django.utils import timezone

from billing.models import LedgerEntry, LedgerKind, RequestLog
from billing.money import format_credits
from console.access import console_view, org_get
from console.forms import RequestFilterForm
from console.views.common import paginate, render_page
from routing.models import Role, VirtualEndpoint

LOG = "console/requests.html"
LEDGER = "console/ledger.html"
PAGE_SIZE = 50

# Signed effect of an entry on the balance: charges take, everything else gives.
SIGNED = Case(When(kind=LedgerKind.CHARGE, then=-F("amount")), default=F("amount"), output_field=BigIntegerField())


def filtered_requests(request):
    form = RequestFilterForm(request.GET or None, organization=request.org)
    qs = RequestLog.objects.filter(organization=request.org)
    if form.is_valid():
        data = form.cleaned_data
        if data["ve"]:
            qs = qs.filter(virtual_endpoint=data["ve"])
        if data["key"]:
            qs = qs.filter(access_key=data["key"])
        if data["model"]:
            qs = qs.filter(logical_model_name=data["model"].strip())
        if data["status"]:
            qs = qs.filter(status=data["status"])
        if data["run_id"]:
            qs = qs.filter(run_id=data["run_id"].strip())
        if data["since"]:
            qs = qs.filter(started_at__gte=_day_start(data["since"]))
        if data["until"]:
            qs = qs.filter(started_at__lt=_day_start(data["until"]) + timedelta(days=1))
    return form, qs


def _day_start(day) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


@console_view(read=Role.VIEWER)
def request_list(request):
    form, qs = filtered_requests(request)
    page = paginate(request, qs.select_related("virtual_endpoint", "access_key"), PAGE_SIZE)
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode(), "any_requests": page.paginator.count > 0 or bool(request.GET)}
    return render_page(request, LOG, context, partial="_results")


@console_view(read=Role.VIEWER)
def request_detail(request, pk: int):
    log = org_get(RequestLog.objects.select_related("virtual_endpoint", "access_key", "provider", "physical_model"),
                  request=request, pk=pk)
    return render_page(request, "console/request_detail.html", {"log": log}, partial="_drawer")


class _Echo:
    def write(self, value):
        return value


CSV_FIELDS = ["request_id", "started_at", "virtual_endpoint__public_id", "access_key__prefix", "logical_model_name",
              "provider__name", "physical_model__upstream_model", "status", "http_status", "error_code", "run_id",
              "input_tokens", "cached_input_tokens", "output_tokens", "usage_estimated", "cost", "cost_currency",
              "cost_credits", "charge", "latency_ms"]


@console_view(read=Role.VIEWER)
def request_export(request):
    """The filtered set as CSV, streamed: rows are read in chunks and never all held."""
    _, qs = filtered_requests(request)
    rows = qs.values_list(*CSV_FIELDS).iterator(chunk_size=2000)
    writer = csv.writer(_Echo())
    credit_cols = {CSV_FIELDS.index("cost_credits"), CSV_FIELDS.index("charge")}

    def stream():
        yield writer.writerow([f.replace("__", "_") for f in CSV_FIELDS])
        for row in rows:
            yield writer.writerow([format_credits(v) if i in credit_cols else v for i, v in enumerate(row)])

    response = StreamingHttpResponse(stream(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="requests-{timezone.now():%Y%m%d-%H%M}.csv"'
    return response


@console_view(read=Role.VIEWER)
def ledger(request, pk: int):
    ve = org_get(VirtualEndpoint.objects, request=request, pk=pk)
    page = paginate(request, LedgerEntry.objects.filter(virtual_endpoint=ve).select_related("created_by"), PAGE_SIZE)
    rows = _with_running_balance(ve, list(page.object_list))
    return render_page(request, LEDGER, {"ve": ve, "page": page, "rows": rows}, partial="_rows")


def _with_running_balance(ve: VirtualEndpoint, entries: list) -> list[tuple]:
    """(entry, balance after it) for a newest-first page, with one aggregate query:
    balance after the page's newest entry = current ledger balance - what came later."""
    if not entries:
        return []
    first = entries[0]
    later = LedgerEntry.objects.filter(virtual_endpoint=ve).filter(
        Q(created_at__gt=first.created_at) | Q(created_at=first.created_at, id__gt=first.id))
    totals = LedgerEntry.objects.filter(virtual_endpoint=ve).aggregate(all=Coalesce(Sum(SIGNED), Value(0), output_field=BigIntegerField()))
    balance = totals["all"] - (later.aggregate(s=Coalesce(Sum(SIGNED), Value(0), output_field=BigIntegerField()))["s"])
    rows = []
    for entry in entries:
        rows.append((entry, balance))
        balance -= -entry.amount if entry.kind == LedgerKind.CHARGE else entry.amount
    return rows


@console_view(read=Role.VIEWER)
def ledger_export(request, pk: int):
    ve = org_get(VirtualEndpoint.objects, request=request, pk=pk)
    entries = (LedgerEntry.objects.filter(virtual_endpoint=ve).order_by("created_at", "id")
               .values_list("created_at", "kind", "amount", "request_id", "note", "idempotency_key").iterator(chunk_size=2000))
    writer = csv.writer(_Echo())

    def stream():
        yield writer.writerow(["created_at", "kind", "amount_credits", "balance_after_credits", "request_id", "note", "reference"])
        balance = 0
        for created_at, kind, amount, request_id, note, ref in entries:
            balance += -amount if kind == LedgerKind.CHARGE else amount
            signed = -amount if kind == LedgerKind.CHARGE else amount
            yield writer.writerow([created_at.isoformat(), kind, format_credits(signed), format_credits(balance), request_id, note, ref])

    response = StreamingHttpResponse(stream(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="ledger-{ve.public_id}.csv"'
    return response
