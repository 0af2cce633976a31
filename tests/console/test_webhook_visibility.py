"""The alert webhook URL may carry the receiver's secret token: the settings page shows it
whole only to the role that may edit the settings (owner, in the form); every other member
sees its scheme and host."""

from __future__ import annotations

import pytest
from django.urls import reverse

from routing.models import Role

SECRET_URL = "https://hooks.example.com/services/T0/B0/s3cret-token?key=k3y"


@pytest.fixture
def org_with_webhook(org):
    org.alert_webhook_url = SECRET_URL
    org.save()
    return org


def test_owner_sees_the_whole_webhook_url_in_the_form(org_with_webhook, as_role):
    # when
    page = as_role(Role.OWNER).get(reverse("console:org_settings"))
    # then
    assert page.status_code == 200
    assert b"Save settings" in page.content
    assert b'value="https://hooks.example.com/services/T0/B0/s3cret-token?key=k3y"' in page.content


@pytest.mark.parametrize("role", [Role.ADMIN, Role.DEVELOPER, Role.VIEWER])
def test_other_roles_see_only_the_scheme_and_host(org_with_webhook, as_role, role):
    # when
    page = as_role(role).get(reverse("console:org_settings"))
    # then
    html = page.content.decode()
    assert page.status_code == 200
    assert "Save settings" not in html
    assert "<dd>https://hooks.example.com/…</dd>" in html
    assert "s3cret" not in html and "k3y" not in html and "/services/" not in html


def test_viewer_sees_a_dash_when_no_webhook_is_set(org, as_role):
    page = as_role(Role.VIEWER).get(reverse("console:org_settings"))
    assert "<dt>Alert webhook</dt><dd>—</dd>" in page.content.decode()


@pytest.mark.parametrize(("url", "shown", "hidden"), [
    ("http://user:pw@hooks.example.com:8443/x7?token=t0k", "http://hooks.example.com:8443/…",
     ["user:pw", "/x7", "t0k"]),
    ("http://[2001:db8::1]:8080/h00k", "http://[2001:db8::1]:8080/…", ["/h00k"]),
])
def test_the_mask_drops_credentials_and_keeps_the_port(org, as_role, url, shown, hidden):
    # given a URL saved without the form (no DNS check)
    org.alert_webhook_url = url
    org.save()
    # when
    html = as_role(Role.VIEWER).get(reverse("console:org_settings")).content.decode()
    # then
    assert f"<dd>{shown}</dd>" in html
    assert [part for part in hidden if part in html] == []
