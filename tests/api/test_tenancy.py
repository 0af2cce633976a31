"""Another organization's ids through the management and reports API: 404 or nothing,
never its data, and writes never reach it."""

from __future__ import annotations

from django.utils import timezone

from billing.models import LedgerEntry, RequestLog
from billing.rates import rate_in_force, rate_set
from tests import factories


def _log(ve, request_id: str) -> RequestLog:
    return RequestLog.objects.create(request_id=request_id, organization=ve.organization, virtual_endpoint=ve,
                                     logical_model_name="chat", started_at=timezone.now(), run_id="run-1")


def test_grant_to_another_orgs_ve_is_404_and_posts_nothing(api, other_org):
    theirs = factories.make_ve(other_org)
    response = api.post(f"/virtual-endpoints/{theirs.public_id}/grants", {"credits": "5"})
    assert response.status_code == 404
    assert api.get(f"/virtual-endpoints/{theirs.public_id}/grants").status_code == 404
    assert api.get(f"/virtual-endpoints/{theirs.public_id}/ledger").status_code == 404
    assert not LedgerEntry.objects.filter(virtual_endpoint=theirs).exists()


def test_exchange_rate_put_changes_only_the_callers_organization(api, org, other_org):
    # given
    rate_set(other_org, "USD", "100000")
    # when
    assert api.put("/exchange-rates/USD", {"credits_per_unit": "1"}).status_code == 200
    # then
    assert rate_in_force(other_org.pk, "USD").credits_per_unit == 100000
    assert rate_in_force(org.pk, "USD").credits_per_unit == 1


def test_reports_filtered_by_a_foreign_ve_id_return_nothing(api, org, other_org):
    # given
    mine, theirs = factories.make_ve(org), factories.make_ve(other_org)
    _log(mine, "req-mine")
    _log(theirs, "req-theirs")
    # when
    foreign = api.get(f"/requests?ve={theirs.public_id}")
    everything = api.get("/requests")
    same_run = api.get("/requests?run_id=run-1")
    usage = api.get(f"/usage?ve={theirs.public_id}")
    # then
    assert foreign.status_code == 200 and foreign.json() == []
    assert [r["request_id"] for r in everything.json()] == ["req-mine"]
    assert [r["request_id"] for r in same_run.json()] == ["req-mine"]
    assert usage.status_code == 200 and usage.json() == []
