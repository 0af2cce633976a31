"""Every routing and billing model has a working admin, and no page shows a secret."""

from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.urls import reverse

from billing.models import ExchangeRate, LedgerEntry, RequestLog
from routing.models import AccessKey, ManagementToken, Provider
from routing.services import management_token_create
from tests import factories

API_KEY = "sk-provider-secret-abc123"


@pytest.fixture
def admin_client(client, db):
    user = get_user_model().objects.create_superuser("root@example.com", "root@example.com", "pw-admin-123")
    client.force_login(user)
    return client


@pytest.fixture
def world(org):
    """One row of every model, with secrets whose text must never appear."""
    provider = factories.make_provider(org, api_key=API_KEY)
    pm = factories.make_physical_model(provider)
    lm = factories.make_logical_model(org, routes=[pm])
    ve = factories.make_ve(org, models=[lm], credits=5)
    key, key_secret = factories.make_key(ve)
    token, token_secret = management_token_create(organization=org)
    factories.make_member(org)
    ExchangeRate.objects.create(currency="USD", credits_per_unit=100000, effective_from="2024-01-01T00:00Z")
    return {"secrets": [API_KEY, provider.credentials_encrypted, key_secret, key.key_hash, token_secret,
                        token.token_hash]}


def _models():
    for label in ("routing", "billing"):
        yield from apps.get_app_config(label).get_models()


def test_every_model_is_registered():
    missing = [m.__name__ for m in _models() if not admin.site.is_registered(m)]
    assert missing == []


@pytest.mark.parametrize("model", list(_models()), ids=lambda m: m.__name__)
def test_admin_pages_load_and_hide_secrets(admin_client, world, model):
    # given
    info = (model._meta.app_label, model._meta.model_name)
    obj = model.objects.first()
    # when
    pages = [admin_client.get(reverse("admin:%s_%s_changelist" % info))]
    if admin.site._registry[model].has_add_permission(_request(admin_client)):
        pages.append(admin_client.get(reverse("admin:%s_%s_add" % info)))
    if obj is not None:
        pages.append(admin_client.get(reverse("admin:%s_%s_change" % info, args=[obj.pk])))
    # then
    for page in pages:
        assert page.status_code == 200, page.request["PATH_INFO"]
        html = page.content.decode()
        for secret in world["secrets"]:
            assert secret not in html


def _request(client):
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = get_user_model().objects.get(username="root@example.com")
    return request


def test_ledger_is_read_only_in_admin(admin_client, world):
    entry = LedgerEntry.objects.first()
    assert admin_client.get(reverse("admin:billing_ledgerentry_add")).status_code == 403
    response = admin_client.post(reverse("admin:billing_ledgerentry_change", args=[entry.pk]), {"amount": 1})
    assert response.status_code == 403
    assert admin_client.get(reverse("admin:billing_ledgerentry_delete", args=[entry.pk])).status_code == 403
    assert admin_client.get(reverse("admin:billing_requestlog_add")).status_code == 403
    assert RequestLog.objects.count() == 0


def test_provider_form_encrypts_a_new_key_and_keeps_it_when_left_empty(admin_client, org):
    # given
    url = reverse("admin:routing_provider_add")
    data = {"organization": org.pk, "name": "P", "kind": "openai", "base_url": "https://api.example.com/v1",
            "api_key": "sk-typed-in", "api_version": "", "currency": "USD", "connect_timeout": 5,
            "first_byte_timeout": 600, "read_timeout": 60, "enabled": "on",
            "physical_models-TOTAL_FORMS": 0, "physical_models-INITIAL_FORMS": 0}
    # when
    response = admin_client.post(url, data)
    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    provider = Provider.objects.get(name="P")
    assert provider.get_credentials() == "sk-typed-in"
    # when the form is saved again with an empty key
    change = admin_client.post(reverse("admin:routing_provider_change", args=[provider.pk]),
                               {**data, "api_key": "", "read_timeout": 30})
    # then
    assert change.status_code == 302
    provider.refresh_from_db()
    assert provider.get_credentials() == "sk-typed-in" and provider.read_timeout == 30
    page = admin_client.get(reverse("admin:routing_provider_change", args=[provider.pk])).content.decode()
    assert "sk-typed-in" not in page and provider.credentials_encrypted not in page


def test_access_key_added_in_admin_is_shown_once_and_stored_hashed(admin_client, org):
    # given
    ve = factories.make_ve(org)
    # when
    response = admin_client.post(reverse("admin:routing_accesskey_add"),
                                 {"virtual_endpoint": ve.pk, "name": "from admin", "enabled": "on"}, follow=True)
    # then
    key = AccessKey.objects.get(name="from admin")
    shown = [str(m) for m in response.context["messages"]]
    secret = next(m.split(": ")[1] for m in shown if "Access key" in m)
    from routing.models import hash_secret

    assert key.key_hash == hash_secret(secret)
    later = admin_client.get(reverse("admin:routing_accesskey_change", args=[key.pk])).content.decode()
    assert secret not in later


def test_management_token_added_in_admin_works(admin_client, org):
    response = admin_client.post(reverse("admin:routing_managementtoken_add"),
                                 {"organization": org.pk, "name": "ops"}, follow=True)
    secret = next(str(m).split(": ")[1] for m in response.context["messages"] if "Management token" in str(m))
    from routing.selectors import management_token_authenticate

    assert management_token_authenticate(secret) == ManagementToken.objects.get(name="ops")


def test_grant_credits_action_posts_a_ledger_entry(admin_client, org):
    # given
    ve = factories.make_ve(org)
    url = reverse("admin:routing_virtualendpoint_changelist")
    # when: the action first asks how much, then posts
    form = admin_client.post(url, {"action": "grant_credits", "_selected_action": [ve.pk]})
    done = admin_client.post(url, {"action": "grant_credits", "_selected_action": [ve.pk], "apply": "1",
                                   "credits": "250.5", "note": "goodwill"})
    # then
    assert form.status_code == 200 and b"Grant credits" in form.content
    assert done.status_code == 302
    ve.refresh_from_db()
    entry = LedgerEntry.objects.get(virtual_endpoint=ve)
    assert (entry.kind, entry.amount, entry.note) == ("grant", 250_500_000, "goodwill")
    assert ve.credit_budget == 250_500_000


def test_grant_credits_action_refuses_amounts_the_counters_cannot_hold(admin_client, org):
    # given: one VE near the storable ceiling, one not
    from routing.models import VirtualEndpoint

    full, fine = factories.make_ve(org), factories.make_ve(org)
    VirtualEndpoint.objects.filter(pk=full.pk).update(credit_budget=2**62 - 10**17)
    url = reverse("admin:routing_virtualendpoint_changelist")
    # when: a too-large amount, then one that fits only the second VE
    huge = admin_client.post(url, {"action": "grant_credits", "_selected_action": [fine.pk], "apply": "1",
                                   "credits": "1" + "0" * 17})
    both = admin_client.post(url, {"action": "grant_credits", "_selected_action": [full.pk, fine.pk], "apply": "1",
                                   "credits": "999999999999"}, follow=True)
    # then: the form refuses the first; the second posts for `fine` only and names `full`
    assert huge.status_code == 200 and b"errorlist" in huge.content
    assert both.status_code == 200
    assert list(LedgerEntry.objects.values_list("virtual_endpoint_id", flat=True)) == [fine.pk]
    assert any("past what can be stored" in str(m) for m in both.context["messages"])


# --- the alert webhook: the same SSRF guard as the console (tokenbill/netguard.py) -----------


@pytest.fixture
def webhook_dns(monkeypatch, settings):
    """hooks.shop.test resolves to a public address without the network; private targets are
    refused whatever the environment says."""
    import socket

    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "hooks.shop.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def _post_org(admin_client, org, url):
    data = {"name": org.name, "slug": org.slug, "markup": "1.2", "alert_webhook_url": url,
            "memberships-TOTAL_FORMS": 0, "memberships-INITIAL_FORMS": 0}
    return admin_client.post(reverse("admin:routing_organization_change", args=[org.pk]), data)


@pytest.mark.parametrize(("url", "reason"), [
    ("http://127.0.0.1/hook?token=s3cret", "a loopback address"),
    ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
])
def test_admin_refuses_an_internal_alert_webhook_with_a_form_error(admin_client, org, webhook_dns, url, reason):
    # when an operator saves an internal address
    response = _post_org(admin_client, org, url)
    # then the form comes back with the reason on the field, and nothing is saved
    assert response.status_code == 200
    [error] = response.context["adminform"].form.errors["alert_webhook_url"]
    assert error == f"Refused: the host resolves to {reason}. The webhook must be a public http(s) address."
    assert error in response.content.decode()
    org.refresh_from_db()
    assert org.alert_webhook_url == ""


def test_admin_accepts_a_public_alert_webhook(admin_client, org, webhook_dns):
    # when
    response = _post_org(admin_client, org, "https://hooks.shop.test/hook")
    # then
    assert response.status_code == 302, response.content.decode()[:2000]
    org.refresh_from_db()
    assert org.alert_webhook_url == "https://hooks.shop.test/hook" and org.markup == Decimal("1.2")
