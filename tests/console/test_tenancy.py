"""Another organization's ids through the playground: 404, and no key minted on its VE."""

from __future__ import annotations

from django.urls import reverse
from django.utils import timezone

from billing.models import RequestLog
from routing.models import AccessKey


def test_playground_with_another_orgs_ve_is_404_and_mints_no_key(as_role, world):
    # given
    theirs = world["theirs"]["ve"]
    before = AccessKey.objects.filter(virtual_endpoint=theirs).count()
    # when
    response = as_role("developer").post(reverse("console:playground_stream"),
                                         {"ve": theirs.pk, "model": "chat", "message": "hi"})
    # then
    assert response.status_code == 404
    assert AccessKey.objects.filter(virtual_endpoint=theirs).count() == before


def test_playground_result_of_another_orgs_request_reveals_nothing(as_role, world):
    theirs = world["theirs"]["ve"]
    RequestLog.objects.create(request_id="req-theirs", organization=theirs.organization, virtual_endpoint=theirs,
                              logical_model_name="chat", started_at=timezone.now(), charge=123_456_789)
    response = as_role("developer").get(reverse("console:playground_result"), {"request_id": "req-theirs"})
    assert response.status_code == 404 and response.json() == {"pending": True}
