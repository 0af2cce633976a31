"""A run id with "/" in it (agents use "job/step" ids) is reachable in the API, as on the console."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from billing.models import RequestLog
from routing.services import management_token_create
from tests import factories
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db


def _row(ve, run_id, n):
    return RequestLog.objects.create(
        request_id=f"req-{ve.pk}-{n}", organization=ve.organization, virtual_endpoint=ve, run_id=run_id,
        logical_model_name="chat", started_at=timezone.now() + timedelta(seconds=n), input_tokens=10,
        output_tokens=5, charge=1_500_000, cost_credits=1_000_000)


@pytest.fixture
def api_and_ve():
    org = factories.make_org()
    ve = factories.make_ve(org)
    _, secret = management_token_create(organization=org)
    return ApiClient(secret), ve


@pytest.mark.parametrize("run_id", ["job-7/step 2", "a/b/c", "calls.csv"])
def test_detail_and_csv_of_a_run_id_with_slashes(api_and_ve, run_id):
    # given: two calls of that run and one of a run that shares its prefix
    api, ve = api_and_ve
    _row(ve, run_id, 1)
    _row(ve, run_id, 2)
    _row(ve, "job-7", 3)
    # when: the id as the list gives it, quoted as a client would put it in a URL
    assert run_id in [r["run_id"] for r in api.get("/runs").json()]
    detail = api.get(f"/runs/{quote(run_id, safe='')}")
    rows = list(csv.reader(io.StringIO(api.get(f"/runs/{quote(run_id, safe='')}/calls.csv").content.decode())))
    # then
    assert detail.status_code == 200 and detail.json()["run"]["run_id"] == run_id
    assert detail.json()["run"]["calls"] == 2
    assert len(rows) == 3 and rows[0][0] == "request_id"


def test_an_unknown_run_with_a_slash_is_a_json_404(api_and_ve):
    api, _ = api_and_ve
    response = api.get("/runs/no/such")
    assert response.status_code == 404 and "detail" in response.json()
