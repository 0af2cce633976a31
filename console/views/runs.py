"""Runs: calls sharing a run id within one VE (billing/runs.py), listed and explained."""

from __future__ import annotations

from django.http import Http404

from billing import runs
from console.access import console_view
from console.views.common import render_page
from routing.models import Role


@console_view(read=Role.VIEWER)
def run_list(request):
    ve = request.GET.get("ve") or None
    rows = runs.run_list(request.org.pk, ve_public_id=ve, limit=200)
    return render_page(request, "console/runs.html", {"runs": rows, "ve": ve or ""})


@console_view(read=Role.VIEWER)
def run_detail(request, ve_public_id: str, run_id: str):
    report = runs.run_report(request.org.pk, run_id, ve_public_id)
    if report is None:
        raise Http404("No calls with this run id on this endpoint.")
    return render_page(request, "console/run_detail.html", {"report": report, "run": report.summary})
