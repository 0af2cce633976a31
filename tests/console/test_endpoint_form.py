"""The console's endpoint form saves every field it shows (the portal switches too)."""

from __future__ import annotations

from django.urls import reverse

from routing.models import VirtualEndpoint


def _form(lm, **extra):
    data = {"name": "Acme app", "description": "", "allowed_models": [lm.pk], "requests_per_minute": "",
            "tokens_per_minute": "", "exhaustion_mode": VirtualEndpoint._meta.get_field("exhaustion_mode").default,
            "checkout_amounts": "1000, 5000", "checkout_min_amount": "500", "checkout_max_amount": "100000",
            "low_balance_threshold": "", "status": "active"}
    data.update(extra)
    return data


def test_edit_turns_the_portal_on(owner_client, world):
    # given
    ve, lm = world["mine"]["ve"], world["mine"]["lm"]
    # when: the form as the browser sends it, with the portal switched on
    response = owner_client.post(reverse("console:endpoint_edit", args=[ve.pk]),
                                 _form(lm, portal_enabled="on", portal_email="payer@example.com"))
    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    ve.refresh_from_db()
    assert ve.portal_enabled and ve.portal_email == "payer@example.com" and not ve.portal_manage_keys


def test_edit_with_the_portal_left_off_saves(owner_client, world):
    ve, lm = world["mine"]["ve"], world["mine"]["lm"]
    response = owner_client.post(reverse("console:endpoint_edit", args=[ve.pk]), _form(lm, name="Renamed"))
    assert response.status_code == 302, response.content.decode()[:2000]
    ve.refresh_from_db()
    assert ve.name == "Renamed" and not ve.portal_enabled


def test_new_endpoint_with_the_portal_on(owner_client, world, org):
    lm = world["mine"]["lm"]
    response = owner_client.post(reverse("console:endpoint_new"),
                                 _form(lm, name="Portal app", portal_enabled="on", portal_manage_keys="on"))
    assert response.status_code == 302, response.content.decode()[:2000]
    ve = VirtualEndpoint.objects.get(organization=org, name="Portal app")
    assert ve.portal_enabled and ve.portal_manage_keys


def test_a_bad_portal_email_is_an_inline_error(owner_client, world):
    ve, lm = world["mine"]["ve"], world["mine"]["lm"]
    response = owner_client.post(reverse("console:endpoint_edit", args=[ve.pk]),
                                 _form(lm, portal_enabled="on", portal_email="not-an-email"))
    assert response.status_code == 422 and b"valid email" in response.content
    ve.refresh_from_db()
    assert not ve.portal_enabled
