"""List pages answer with a bounded number of queries, however many rows there are."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import RequestLog
from tests import factories


def make_logs(w: dict, n: int, **kw) -> list[RequestLog]:
    now = timezone.now()
    ve, key, lm, pm = w["ve"], w["key"], w["lm"], w["pm1"]
    rows = [
        RequestLog(
            request_id=f"req_{uuid.uuid4().hex}", organization_id=ve.organization_id, virtual_endpoint=ve, access_key=key,
            logical_model_name=lm.name, logical_model=lm, physical_model=pm, provider=pm.provider,
            status=kw.get("status", "ok"), started_at=now - timedelta(seconds=i * 37), input_tokens=10, output_tokens=5,
            cost_credits=100, charge=150, latency_ms=120, run_id=kw.get("run_id", ""),
            attempts=[{"upstream_model": pm.upstream_model, "provider": pm.provider.name, "status": "ok", "latency_ms": 100}],
        )
        for i in range(n)
    ]
    RequestLog.objects.bulk_create(rows, batch_size=1000)
    return list(RequestLog.objects.filter(request_id__in=[r.request_id for r in rows[:5]]))


@pytest.fixture
def busy(world):
    make_logs(world["mine"], 10_000)
    return world


@pytest.mark.parametrize("name", ["requests", "home"])
def test_log_and_dashboard_queries_are_bounded_with_10k_rows(owner_client, busy, name, django_assert_max_num_queries):
    # given 10,000 request log rows
    # when the page is rendered
    started = time.perf_counter()
    with django_assert_max_num_queries(12):
        response = owner_client.get(reverse(f"console:{name}"))
    elapsed = time.perf_counter() - started
    # then a bounded number of queries answered it, quickly
    assert response.status_code == 200
    assert elapsed < 2.0, f"{name} took {elapsed:.3f}s"  # generous: CI machines are shared; measured in the report


def test_log_page_shows_50_rows_and_filters(owner_client, busy):
    w = busy["mine"]
    make_logs(w, 3, status="upstream_error", run_id="run-42")
    page = owner_client.get(reverse("console:requests"))
    assert page.content.count(b"data-request=") == 50
    assert b"of 10,003" in page.content or b"of 10003" in page.content
    filtered = owner_client.get(reverse("console:requests"), {"status": "upstream_error", "run_id": "run-42"}, HTTP_HX_REQUEST="true")
    assert filtered.content.count(b"data-request=") == 3
    assert b"<html" not in filtered.content  # the _results partial only


@pytest.mark.parametrize("name,obj", [("endpoints", None), ("providers", None), ("models", None), ("endpoint_detail", "ve"),
                                      ("ledger", "ve"), ("logical_detail", "lm"), ("members", None), ("rates", None)])
def test_list_pages_do_not_grow_queries_with_rows(owner_client, world, org, name, obj, django_assert_max_num_queries):
    # given many objects of every kind
    for i in range(30):
        ve = factories.make_ve(org, name=f"bulk-{i}", models=[world["mine"]["lm"]], credits=5)
        factories.make_key(ve, name=f"k{i}")
        factories.make_key(world["mine"]["ve"], name=f"extra{i}")
        factories.grant(world["mine"]["ve"], 1)
        factories.make_provider(org, name=f"prov-{i}")
    url = reverse(f"console:{name}", args=[world["mine"][obj].pk] if obj else [])
    # then the page needs the same small number of queries
    with django_assert_max_num_queries(14):
        assert owner_client.get(url).status_code == 200


def test_csv_export_streams_filtered_rows(owner_client, busy):
    response = owner_client.get(reverse("console:requests_export"), {"ve": busy["mine"]["ve"].pk})
    assert response.streaming
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert lines[0].startswith("request_id,started_at,")
    assert len(lines) == 10_001
    assert ",150," not in lines[1] and ",0.00015," in lines[1]  # charge in credits, not micro-credits
