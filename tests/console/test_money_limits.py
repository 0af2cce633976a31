"""Amounts typed into the console cannot overflow the BIGINT micro-credit counters."""

from __future__ import annotations

import pytest
from django.urls import reverse

from billing.models import LedgerEntry
from routing.models import AccessKey, VirtualEndpoint


@pytest.mark.parametrize("huge", ["1000000000000.000001", "1" + "0" * 15, "99999999999999999999999"])
def test_grant_beyond_the_storable_range_is_an_inline_error(owner_client, world, huge):
    # given
    ve = world["mine"]["ve"]
    # when
    response = owner_client.post(reverse("console:endpoint_grant", args=[ve.pk]),
                                 {"credits": huge, "token": "t-huge"}, HTTP_HX_REQUEST="true")
    # then
    assert response.status_code == 422 and b"At most" in response.content
    assert not LedgerEntry.objects.filter(virtual_endpoint=ve, idempotency_key__endswith="t-huge").exists()


def test_grant_that_would_overflow_the_budget_is_an_inline_error(owner_client, world):
    # given: a budget already near the ceiling
    ve = world["mine"]["ve"]
    VirtualEndpoint.objects.filter(pk=ve.pk).update(credit_budget=2**62 - 10**17)
    # when: an in-range grant would take it past the ceiling
    response = owner_client.post(reverse("console:endpoint_grant", args=[ve.pk]),
                                 {"credits": "1000000000000", "token": "t-over"}, HTTP_HX_REQUEST="true")
    # then
    assert response.status_code == 422 and b"budget past" in response.content
    ve.refresh_from_db()
    assert ve.credit_budget == 2**62 - 10**17


def test_key_credit_limit_beyond_the_storable_range_is_refused(owner_client, world):
    ve = world["mine"]["ve"]
    response = owner_client.post(reverse("console:key_new", args=[ve.pk]),
                                 {"name": "big", "credit_limit": "1" + "0" * 20}, HTTP_HX_REQUEST="true")
    assert response.status_code in (200, 422) and b"At most" in response.content
    assert not AccessKey.objects.filter(virtual_endpoint=ve, name="big").exists()
