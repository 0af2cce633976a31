"""Behaviour of the console pages: what gets saved, what is never shown."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from billing.models import LedgerEntry
from routing.models import AccessKey, ConfigVersion, Provider, Route, hash_secret
from tests import factories


def version():
    return ConfigVersion.objects.get(pk=1).version


def test_provider_credentials_are_write_only(owner_client, org):
    # when an admin creates a provider with a key
    response = owner_client.post(reverse("console:provider_new"), {
        "name": "OpenAI prod", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "sk-very-secret-123",
        "currency": "USD", "connect_timeout": "5", "first_byte_timeout": "600", "read_timeout": "60", "enabled": "on"})
    assert response.status_code == 302
    provider = Provider.objects.get(organization=org, name="OpenAI prod")
    # then it is stored encrypted, and no page shows it
    assert provider.get_credentials() == "sk-very-secret-123"
    assert "sk-very-secret" not in provider.credentials_encrypted
    for url in (reverse("console:providers"), reverse("console:provider_edit", args=[provider.pk])):
        assert b"sk-very-secret" not in owner_client.get(url).content
    # and saving the edit form with the key left empty keeps it
    owner_client.post(reverse("console:provider_edit", args=[provider.pk]), {
        "name": "OpenAI prod", "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "",
        "currency": "USD", "connect_timeout": "5", "first_byte_timeout": "600", "read_timeout": "60", "enabled": "on"})
    provider.refresh_from_db()
    assert provider.get_credentials() == "sk-very-secret-123"


def test_invalid_form_shows_inline_errors_in_the_modal(owner_client, org):
    response = owner_client.post(reverse("console:provider_new"), {"name": "", "kind": "openai"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert b"modal-backdrop" in response.content and b"This field is required." in response.content
    assert b"<html" not in response.content


def test_test_connection_reports_without_the_key(owner_client, org):
    from tests.fakes.openai_server import OpenAIFake

    with OpenAIFake(api_key="sk-upstream-key") as fake:
        good = factories.make_provider(org, name="good", base_url=fake.base_url, api_key="sk-upstream-key")
        bad = factories.make_provider(org, name="bad", base_url=fake.base_url, api_key="sk-wrong-key")
        ok = owner_client.post(reverse("console:provider_test", args=[good.pk]), HTTP_HX_REQUEST="true")
        refused = owner_client.post(reverse("console:provider_test", args=[bad.pk]), HTTP_HX_REQUEST="true")
    assert b"sk-upstream-key" not in ok.content and b"sk-wrong-key" not in refused.content
    assert b"pill-red" in refused.content and b"401" in refused.content


def test_unreachable_provider_test_says_so(owner_client, org):
    p = factories.make_provider(org, name="down", base_url="http://127.0.0.1:9/v1")
    response = owner_client.post(reverse("console:provider_test", args=[p.pk]), HTTP_HX_REQUEST="true")
    assert b"Could not connect" in response.content


def test_routes_editor_adds_edits_and_removes(owner_client, world):
    w = world["mine"]
    lm, route = w["lm"], w["route"]
    v0 = version()
    pm = route.physical_model
    # when the weight of a route changes inline
    response = owner_client.post(reverse("console:route_edit", args=[route.pk]),
                                 {"priority": 2, "weight": "1.5", "enabled": "on"}, HTTP_HX_REQUEST="true")
    # then the routes fragment comes back, and the gateway is told
    assert response.status_code == 200 and b"data-route" in response.content
    edited = Route.objects.get(logical_model=lm, physical_model=pm)  # the service replaces routes as a whole
    assert (edited.priority, edited.weight) == (2, Decimal("1.5")) and version() > v0
    # and a bad weight is refused inline, changing nothing
    bad = owner_client.post(reverse("console:route_edit", args=[edited.pk]), {"priority": 0, "weight": "-1"},
                            HTTP_HX_REQUEST="true")
    assert bad.status_code == 422 and b"Not saved" in bad.content
    assert Route.objects.get(logical_model=lm, physical_model=pm).weight == Decimal("1.5")
    # and removing it leaves one route
    owner_client.post(reverse("console:route_delete", args=[edited.pk]), HTTP_HX_REQUEST="true")
    assert list(Route.objects.filter(logical_model=lm).values_list("physical_model", flat=True)) == [w["pm2"].pk]


def test_route_share_within_tier(owner_client, world, org):
    w = world["mine"]
    pm3 = factories.make_physical_model(w["provider"], "fake-c")
    Route.objects.create(logical_model=w["lm"], physical_model=pm3, priority=0, weight=1)
    page = owner_client.get(reverse("console:logical_detail", args=[w["lm"].pk])).content.decode()
    # tier 0: weights 3 and 1 -> 75% and 25%; tier 1 alone -> 100%
    assert re.findall(r"(\d+)%</span></div></td>", page) == ["75", "25", "100"]


def test_key_secret_is_shown_once(owner_client, world):
    ve = world["mine"]["ve"]
    response = owner_client.post(reverse("console:key_new", args=[ve.pk]), {"name": "ci", "credit_limit": "12.5",
                                                                         "allowed_models": [world["mine"]["lm"].pk]})
    secret = re.search(rb'data-secret>(tb-[^<]+)<', response.content).group(1).decode()
    key = AccessKey.objects.get(virtual_endpoint=ve, name="ci")
    assert key.key_hash == hash_secret(secret) and key.credit_limit == 12_500_000
    assert response["Cache-Control"] == "no-store"
    assert secret.encode() not in owner_client.get(reverse("console:endpoint_detail", args=[ve.pk])).content


def test_key_disable_and_delete(owner_client, world):
    key = world["mine"]["key"]
    owner_client.post(reverse("console:key_toggle", args=[key.pk]))
    key.refresh_from_db()
    assert key.enabled is False
    owner_client.post(reverse("console:key_delete", args=[key.pk]))
    assert not AccessKey.objects.filter(pk=key.pk).exists()


def test_grant_posts_once_per_form(owner_client, world):
    ve = world["mine"]["ve"]
    before = ve.credit_budget
    form = {"credits": "250.5", "note": "goodwill", "token": "tok-1"}
    owner_client.post(reverse("console:endpoint_grant", args=[ve.pk]), form)
    owner_client.post(reverse("console:endpoint_grant", args=[ve.pk]), form)  # double submit
    ve.refresh_from_db()
    assert ve.credit_budget - before == 250_500_000
    assert LedgerEntry.objects.filter(virtual_endpoint=ve, note="goodwill").count() == 1


@pytest.mark.parametrize("bad", ["-5", "0", "abc", "0.0000001"])
def test_grant_refuses_bad_amounts_inline(owner_client, world, bad):
    response = owner_client.post(reverse("console:endpoint_grant", args=[world["mine"]["ve"].pk]),
                                 {"credits": bad, "token": "t"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and b"errors" in response.content


def test_ledger_running_balance_across_pages(owner_client, world):
    ve = world["mine"]["ve"]  # granted 1000 by the factory
    for _ in range(60):
        factories.grant(ve, 1)
    page1 = owner_client.get(reverse("console:ledger", args=[ve.pk])).content.decode()
    page2 = owner_client.get(reverse("console:ledger", args=[ve.pk]), {"page": 2}).content.decode()
    balances = re.findall(r"data-balance-after><strong>([\d,.]+)</strong>", page1 + page2)
    assert balances[0] == "1,060" and balances[-1] == "1,000" and len(balances) == 61


def test_ledger_csv_has_running_balance(owner_client, world):
    ve = world["mine"]["ve"]
    factories.grant(ve, "0.5")
    response = owner_client.get(reverse("console:ledger_export", args=[ve.pk]))
    rows = b"".join(response.streaming_content).decode().splitlines()
    assert rows[1].split(",")[2:4] == ["1000", "1000"] and rows[2].split(",")[2:4] == ["0.5", "1000.5"]


def test_request_drawer_shows_the_attempt_trail(owner_client, world):
    from tests.console.test_queries import make_logs

    log = make_logs(world["mine"], 1)[0]
    response = owner_client.get(reverse("console:request_detail", args=[log.pk]), HTTP_HX_REQUEST="true")
    assert b"drawer" in response.content and b"data-attempt" in response.content and b"fake-a" in response.content


def test_endpoint_page_has_checkout_link(owner_client, world):
    from billing.checkout_links import verify_checkout_token

    ve = world["mine"]["ve"]
    page = owner_client.get(reverse("console:endpoint_detail", args=[ve.pk])).content.decode()
    token = re.search(r"checkout\?ve_id=[^&]+&amp;token=([^\"<]+)", page).group(1)
    from urllib.parse import unquote

    assert verify_checkout_token(ve.public_id, unquote(token))


def test_exchange_rate_history_is_kept(owner_client, org):
    from billing.models import ExchangeRate

    owner_client.post(reverse("console:rates"), {"currency": "usd", "credits_per_unit": "100000"})
    owner_client.post(reverse("console:rates"), {"currency": "USD", "credits_per_unit": "120000"})
    assert ExchangeRate.objects.filter(organization=org, currency="USD").count() == 2
    assert b"120,000" in owner_client.get(reverse("console:rates")).content


def test_org_markup_saved_by_owner(owner_client, org):
    owner_client.post(reverse("console:org_settings"), {"name": "Acme", "markup": "1.25", "alert_webhook_url": ""})
    org.refresh_from_db()
    assert org.markup == Decimal("1.25")


def test_owner_publishes_the_pricing_page(owner_client, org, client):
    assert client.get(f"/pricing/{org.slug}").status_code == 404
    owner_client.post(reverse("console:org_settings"),
                      {"name": "Acme", "markup": "1", "alert_webhook_url": "", "pricing_public": "on"})
    org.refresh_from_db()
    assert org.pricing_public
    assert f'href="/pricing/{org.slug}"'.encode() in owner_client.get(reverse("console:org_settings")).content
    assert client.get(f"/pricing/{org.slug}").status_code == 200


def test_invitation_flow(owner_client, org, mailoutbox):
    from django.test import Client

    from console.models import Invitation
    from routing.models import Membership

    owner_client.post(reverse("console:members"), {"email": "new@example.com", "role": "developer"})
    invitation = Invitation.objects.get(email="new@example.com")
    assert invitation.token in mailoutbox[0].body
    newcomer = factories.make_user("new@example.com")
    client = Client()
    client.force_login(newcomer)
    url = reverse("console:accept_invitation", args=[invitation.token])
    client.post(url)
    client.post(url)  # second click: still one membership
    assert Membership.objects.get(user=newcomer, organization=org).role == "developer"
    invitation.refresh_from_db()
    assert invitation.accepted_at is not None


def test_last_owner_cannot_be_demoted(owner_client, org, members):
    from routing.models import Membership

    # there are 1 owner + others in `members`; demote the only owner
    owner = Membership.objects.get(organization=org, role="owner")
    response = owner_client.post(reverse("console:member_role", args=[owner.pk]), {"role": "viewer"}, follow=True)
    # back on the members page, with a sentence that says what to do (issue 21: not a bare 403)
    assert response.redirect_chain[-1][0] == reverse("console:members")
    assert "Make another member Owner first" in response.content.decode()
    owner.refresh_from_db()
    assert owner.role == "owner"


def test_sign_in_and_out(client, db):
    from tests import factories as f

    org = f.make_org()
    user = f.make_user("signin@example.com", password="pw-for-tests-123")
    f.make_member(org, user=user)
    response = client.post(reverse("console:login"), {"username": "signin@example.com", "password": "pw-for-tests-123"})
    assert response.status_code == 302 and response["Location"] == "/console/"
    assert client.get(reverse("console:home")).status_code == 200
    client.post(reverse("console:logout"))
    assert client.get(reverse("console:home")).status_code == 302


def test_password_reset_sends_a_link(client, db, mailoutbox):
    factories.make_user("reset@example.com")
    response = client.post(reverse("console:password_reset"), {"email": "reset@example.com"})
    assert response.status_code == 302
    link = re.search(r"http://testserver(/console/password-reset/\S+)", mailoutbox[0].body).group(1)
    # and the link leads to a form that sets the new password
    form_page = client.get(link, follow=True)
    assert b"new_password1" in form_page.content
    done = client.post(form_page.redirect_chain[-1][0], {"new_password1": "brand-new-pass-1", "new_password2": "brand-new-pass-1"},
                       follow=True)
    assert b"Password changed" in done.content
    assert client.login(username="reset@example.com", password="brand-new-pass-1")


def test_invitee_without_account_signs_up_from_the_link(owner_client, org, mailoutbox):
    from django.test import Client

    from console.models import Invitation
    from routing.models import Membership

    owner_client.post(reverse("console:members"), {"email": "fresh@example.com", "role": "viewer"})
    url = reverse("console:accept_invitation", args=[Invitation.objects.get(email="fresh@example.com").token])
    client = Client()  # owner_client is the default client, signed in as the owner
    # when the invitee, signed out, chooses a password on the invitation page
    weak = client.post(url, {"new_password1": "short", "new_password2": "short"})
    assert weak.status_code == 200 and b"errors" in weak.content
    response = client.post(url, {"new_password1": "a-long-pass-123", "new_password2": "a-long-pass-123"})
    # then they have an account, are signed in and are a viewer of the organization
    assert response.status_code == 302
    membership = Membership.objects.get(user__email="fresh@example.com", organization=org)
    assert membership.role == "viewer"
    assert client.get(reverse("console:home")).status_code == 200


@pytest.mark.parametrize("period,split,label", [("day", "ve", "Acme app"), ("week", "logical", "chat"),
                                                ("month", "physical", "fake-a"), ("day", "key", "backend"),
                                                ("week", "provider", "Acme upstream")])
def test_dashboard_chart_splits(owner_client, world, period, split, label):
    from tests.console.test_queries import make_logs

    make_logs(world["mine"], 20)
    response = owner_client.get(reverse("console:home"), {"period": period, "split": split, "metric": "charge"},
                                HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert "<svg" in body and "<rect" in body and f"</i>{label}</span>" in body
    assert "<html" not in body  # the _chart partial alone


def test_dashboard_totals_and_margin(owner_client, world):
    from tests.console.test_queries import make_logs

    make_logs(world["mine"], 4)  # each: cost 100 µcr, charge 150 µcr
    from console.views.dashboard import totals

    today = totals(world["mine"]["ve"].organization)[0]
    assert (today["requests"], today["cost"], today["charge"], today["margin"], today["margin_pct"]) == (4, 400, 600, 200, 33)


def test_key_expiry_must_be_in_the_future(owner_client, world):
    response = owner_client.post(reverse("console:key_new", args=[world["mine"]["ve"].pk]),
                                 {"name": "old", "expires_at": "2001-01-01T00:00"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 422 and b"future" in response.content


def test_test_connection_falls_back_to_a_one_token_chat(owner_client, org):
    from tests.fakes.openai_server import OpenAIFake

    with OpenAIFake(api_key="sk-up") as fake:  # answers chat, but has no /models
        provider = factories.make_provider(org, name="self-hosted", base_url=fake.base_url, api_key="sk-up")
        before = owner_client.post(reverse("console:provider_test", args=[provider.pk]), HTTP_HX_REQUEST="true")
        factories.make_physical_model(provider, "tiny")
        after = owner_client.post(reverse("console:provider_test", args=[provider.pk]), HTTP_HX_REQUEST="true")
        sent = fake.requests[-1].json
    assert b"add a chat model" in before.content
    assert b"pill-green" in after.content and b"tiny answered" in after.content
    assert sent["max_tokens"] == 1
