"""Runs: calls sharing a run id within one VE, reported from the request log (billing/runs.py)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from billing.models import LedgerEntry, RequestLog
from billing.money import format_credits
from routing.cache import routing_cache
from routing.models import Route
from routing.services import config_changed, management_token_create
from tests import factories
from tests.api.conftest import ApiClient
from tests.billing.test_gateway_billing import real_biller, upstream, world_for  # noqa: F401
from tests.gateway.conftest import live_gateway  # noqa: F401


def _api(org) -> ApiClient:
    _, secret = management_token_create(organization=org)
    return ApiClient(secret)


def _row(ve, run_id, n, **kw):
    defaults = dict(request_id=f"req-{ve.pk}-{run_id}-{n}", organization=ve.organization, virtual_endpoint=ve,
                    run_id=run_id, logical_model_name="chat", started_at=timezone.now() + timedelta(seconds=n),
                    input_tokens=10, output_tokens=5, charge=1_500_000, cost_credits=1_000_000)
    return RequestLog.objects.create(**{**defaults, **kw})


@pytest.mark.django_db
def test_run_report_is_the_sum_of_its_rows_and_explains_fallbacks():
    org = factories.make_org()
    ve = factories.make_ve(org)
    _row(ve, "r1", 1, attempts=[
        {"upstream_model": "cheap", "provider": "P1", "status": 503, "error": "upstream_unavailable"},
        {"upstream_model": "good", "provider": "P2", "status": 200, "error": ""}])
    _row(ve, "r1", 2, charge=2_000_001, input_tokens=7, output_tokens=3)
    _row(ve, "r1", 3, status="upstream_error", http_status=502, error_code="upstream_error", charge=0,
         cost_credits=0, attempts=[{"upstream_model": "cheap", "provider": "P1", "status": 500, "error": "boom"}])
    _row(ve, "other", 1)
    _row(ve, "", 9)  # not part of any run
    api = _api(org)

    listed = api.get("/runs").json()
    assert [(r["run_id"], r["calls"]) for r in listed] == [("r1", 3), ("other", 1)]  # most recently active first
    detail = api.get("/runs/r1").json()
    run = detail["run"]
    assert run["calls"] == 3 and run["failures"] == 1
    assert run["input_tokens"] == 27 and run["output_tokens"] == 13
    assert run["charge"] == format_credits(1_500_000 + 2_000_001) == "3.500001"
    assert detail["models"] == ["chat"] and detail["fallbacks"] == 2
    first, _, failed = detail["steps"]
    assert first["fallbacks"] == [{"upstream_model": "cheap", "provider": "P1", "status": 503,
                                   "error": "upstream_unavailable"}]
    assert failed["served_by"] == "" and failed["fallbacks"][0]["error"] == "boom"  # a failure keeps its whole trail

    csv_rows = list(csv.reader(io.StringIO(api.get("/runs/r1/calls.csv").content.decode())))
    assert len(csv_rows) == 4 and csv_rows[1][-1] == "cheap @ P1: 503 upstream_unavailable"
    assert api.get("/runs/nope").status_code == 404


@pytest.mark.django_db
def test_a_run_id_is_per_virtual_endpoint_and_per_organization():
    org = factories.make_org()
    ve1, ve2 = factories.make_ve(org), factories.make_ve(org)
    _row(ve1, "shared", 1)
    _row(ve2, "shared", 1, charge=7)
    api = _api(org)
    ambiguous = api.get("/runs/shared")
    assert ambiguous.status_code == 409 and ve1.public_id in ambiguous.json()["detail"]
    assert api.get(f"/runs/shared?ve={ve2.public_id}").json()["run"]["charge"] == format_credits(7)
    assert len(api.get("/runs").json()) == 2
    stranger = _api(factories.make_org())
    assert stranger.get("/runs").json() == []
    assert stranger.get(f"/runs/shared?ve={ve1.public_id}").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_run_through_the_gateway_reports_what_the_ledger_charged(live_gateway, real_biller, upstream):
    world = world_for(upstream)
    # The cheap route is tried first and is down: the run's first call falls back.
    dead = factories.make_provider(world.org, name="dead-provider", base_url="http://127.0.0.1:9/v1")
    dead_pm = factories.make_physical_model(dead, "dead-model", input_cost_per_mtok=Decimal("0.5"))
    Route.objects.filter(logical_model=world.model).update(priority=1)
    Route.objects.create(logical_model=world.model, physical_model=dead_pm, priority=0)
    config_changed()
    routing_cache.refresh_now()
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    ids = []
    for n in range(3):
        raw = sdk.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": f"step {n}"}],
            extra_headers={"X-TokenBill-Run-Id": "agent-run-1"})
        raw.parse()
        ids.append(raw.headers["x-tokenbill-request-id"])
    sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "not in the run"}])
    real_biller.flush_sync()

    detail = _api(world.org).get("/runs/agent-run-1").json()
    ledger_total = sum(LedgerEntry.objects.filter(idempotency_key__in=ids).values_list("amount", flat=True))
    assert ledger_total > 0
    assert detail["run"]["calls"] == 3 and detail["run"]["charge"] == format_credits(ledger_total)
    assert [s["request_id"] for s in detail["steps"]] == ids
    assert all(s["served_by"] == f"up-model @ {world.physical.provider.name}" for s in detail["steps"])
    assert detail["steps"][0]["fallbacks"][0]["provider"] == "dead-provider"
    assert detail["fallbacks"] == sum(1 for s in detail["steps"] if s["fallbacks"]) >= 1


@pytest.mark.django_db
def test_console_lists_runs_and_explains_one(client):
    from django.urls import reverse

    org = factories.make_org()
    member = factories.make_member(org, role="viewer")
    ve = factories.make_ve(org)
    _row(ve, "job/42", 1, attempts=[
        {"upstream_model": "cheap", "provider": "P1", "status": 503, "error": "upstream_unavailable"},
        {"upstream_model": "good", "provider": "P2", "status": 200, "error": ""}])
    _row(factories.make_ve(factories.make_org()), "someone-elses", 1)
    client.force_login(member.user)
    listing = client.get(reverse("console:runs")).content.decode()
    assert "job/42" in listing and "someone-elses" not in listing
    page = client.get(reverse("console:run_detail", args=[ve.public_id, "job/42"]))
    assert page.status_code == 200
    assert "cheap @ P1: 503 upstream_unavailable" in page.content.decode()
    assert client.get(reverse("console:run_detail", args=[ve.public_id, "nope"])).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_reasoning_tokens_are_billed_as_output_and_shown_apart(live_gateway, real_biller, upstream):
    from tests.fakes import openai_server

    world = world_for(upstream)
    usage = {"prompt_tokens": 12, "completion_tokens": 50, "total_tokens": 62,
             "completion_tokens_details": {"reasoning_tokens": 44}}  # shape: OpenAI's usage object docs
    upstream.script(openai_server.reply("Four.", usage=usage))
    sdk = openai.OpenAI(base_url=f"{live_gateway.url}/v1", api_key=world.secret, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "2+2?"}], extra_headers={"X-TokenBill-Run-Id": "think-1"})
    raw.parse()
    real_biller.flush_sync()
    row = RequestLog.objects.get(request_id=raw.headers["x-tokenbill-request-id"])
    assert (row.output_tokens, row.reasoning_tokens) == (50, 44)  # billed as output, kept apart
    api = _api(world.org)
    listed = api.get("/requests?run_id=think-1").json()
    assert listed[0]["reasoning_tokens"] == 44
    assert api.get("/runs/think-1").json()["run"]["reasoning_tokens"] == 44
