"""The portal's budget figure is granted + paid, and says so (a grant is not a payment)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from billing import portal
from tests import factories

pytestmark = pytest.mark.django_db


def test_granted_credits_are_not_shown_as_paid(client):
    # given: a VE whose credits were all granted by the merchant, no payment at all
    ve = factories.make_ve(factories.make_org("Acme AI"), name="Alice's app", credits="40", portal_enabled=True,
                           portal_email="alice@example.com")
    link = portal.sign_in_link("alice@example.com")
    assert client.get(link[link.index("/portal/"):]).status_code == 302
    # when
    page = client.get(reverse("billing:portal_endpoint", args=[ve.public_id])).content.decode()
    # then
    assert "No payments yet." in page
    assert "Paid in" not in page and "Budget (granted + paid)" in page
