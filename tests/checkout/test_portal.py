"""The customer portal: magic-link sign-in, scoped pages, receipts, keys (billing/portal.py)."""

from __future__ import annotations

import re
import time

import pytest
from django.core import signing
from django.urls import reverse

from billing import portal
from billing.models import Payment
from routing.models import AccessKey
from tests import factories

pytestmark = pytest.mark.django_db


def _pay(ve, email, status="paid", amount=1250):
    return Payment.objects.create(virtual_endpoint=ve, processor="test", amount_minor=amount, currency="USD",
                                  credits=amount * 10_000, status=status, payer_email=email)


@pytest.fixture
def shop():
    org = factories.make_org("Acme AI")
    ve = factories.make_ve(org, name="Alice's app", credits="40", portal_enabled=True)
    other = factories.make_ve(org, name="Bob's app", credits="7", portal_enabled=True)
    _pay(ve, "alice@example.com")
    _pay(other, "bob@example.com")
    return ve, other


def _link_from(mail) -> str:
    return re.search(r"https?://\S+/portal/login/\S+/", mail.body).group(0)


def _sign_in(client, mailoutbox, email):
    client.post(reverse("billing:portal"), {"email": email})
    link = _link_from(mailoutbox[-1])
    return client.get(link[link.index("/portal/"):])


def test_a_payer_signs_in_with_a_link_and_sees_only_their_endpoint(client, mailoutbox, shop):
    ve, other = shop
    response = client.post(reverse("billing:portal"), {"email": "Alice@Example.com"})
    assert b"a sign-in link is on its way" in response.content and len(mailoutbox) == 1
    assert mailoutbox[0].to == ["Alice@Example.com"]
    link = _link_from(mailoutbox[0])
    assert client.get(link[link.index("/portal/"):]).status_code == 302
    home = client.get(reverse("billing:portal"))
    assert home.status_code == 302 and home["Location"] == reverse("billing:portal_endpoint", args=[ve.public_id])
    page = client.get(home["Location"]).content.decode()
    assert "Alice&#x27;s app" in page and "40" in page and "$12.50" in page
    assert "Bob" not in page
    assert client.get(reverse("billing:portal_endpoint", args=[other.public_id])).status_code == 404


def test_the_form_does_not_tell_who_is_a_customer(client, mailoutbox, shop):
    known = client.post(reverse("billing:portal"), {"email": "alice@example.com"})
    unknown = client.post(reverse("billing:portal"), {"email": "mallory@example.com"})
    assert known.status_code == unknown.status_code == 200
    assert b"a sign-in link is on its way" in unknown.content
    assert len(mailoutbox) == 1  # only the known address got mail
    assert client.post(reverse("billing:portal"), {"email": "not an email"}).status_code == 400


def test_a_link_works_once_and_expires(client, mailoutbox, shop, monkeypatch):
    assert _sign_in(client, mailoutbox, "alice@example.com").status_code == 302
    link = _link_from(mailoutbox[-1])
    again = client.get(link[link.index("/portal/"):])
    assert again.status_code == 400 and b"already used" in again.content
    old = signing.TimestampSigner  # a link signed 16 minutes ago
    monkeypatch.setattr(old, "timestamp", lambda self: signing.b62_encode(int(time.time()) - 16 * 60))
    stale = signing.dumps({"e": "alice@example.com", "n": "x"}, salt=portal._SALT)
    monkeypatch.undo()
    response = client.get(reverse("billing:portal_login", args=[stale]))
    assert response.status_code == 400 and b"expired" in response.content
    assert client.get(reverse("billing:portal_login", args=["forged-token"])).status_code == 400


def test_session_expires_and_a_merchant_can_close_the_portal(client, mailoutbox, shop):
    ve, _ = shop
    _sign_in(client, mailoutbox, "alice@example.com")
    url = reverse("billing:portal_endpoint", args=[ve.public_id])
    assert client.get(url).status_code == 200
    ve.portal_enabled = False
    ve.save()
    assert client.get(url).status_code == 404  # read again on every page
    ve.portal_enabled = True
    ve.save()
    session = client.session
    session[portal._SESSION_KEY]["expires"] = time.time() - 1
    session.save()
    expired = client.get(url)
    assert expired.status_code == 302 and "expired=1" in expired["Location"]


def test_receipts_are_scoped_to_the_endpoint(client, mailoutbox, shop):
    ve, other = shop
    _sign_in(client, mailoutbox, "alice@example.com")
    mine = ve.payments.get()
    receipt = client.get(reverse("billing:portal_receipt", args=[ve.public_id, mine.pk]))
    assert receipt.status_code == 200 and b"$12.50" in receipt.content and b"Test mode" in receipt.content
    bobs = other.payments.get()
    assert client.get(reverse("billing:portal_receipt", args=[ve.public_id, bobs.pk])).status_code == 404
    pending = _pay(ve, "alice@example.com", status="pending")
    assert client.get(reverse("billing:portal_receipt", args=[ve.public_id, pending.pk])).status_code == 404


def test_portal_email_set_by_the_merchant_signs_in_without_a_payment(client, mailoutbox):
    ve = factories.make_ve(factories.make_org(), portal_enabled=True, portal_email="cfo@client.example")
    assert _sign_in(client, mailoutbox, "cfo@client.example").status_code == 302
    assert client.get(reverse("billing:portal_endpoint", args=[ve.public_id])).status_code == 200


def test_keys_only_where_the_merchant_allows_it(client, mailoutbox, shop):
    ve, _ = shop
    _sign_in(client, mailoutbox, "alice@example.com")
    page = reverse("billing:portal_endpoint", args=[ve.public_id])
    assert b"Create key" not in client.get(page).content
    assert client.post(reverse("billing:portal_key_new", args=[ve.public_id]), {"name": "x"}).status_code == 404
    ve.portal_manage_keys = True
    ve.save()
    client.post(reverse("billing:portal_key_new", args=[ve.public_id]), {"name": "laptop"})
    key = AccessKey.objects.get(virtual_endpoint=ve, name="laptop")
    shown = client.get(page).content.decode()
    secret = re.search(r'<code class="pt-secret">([^<]+)</code>', shown).group(1)
    assert AccessKey.objects.get(key_hash=portal_hash(secret)) == key
    assert secret not in client.get(page).content.decode()  # shown once
    client.post(reverse("billing:portal_key_toggle", args=[ve.public_id, key.pk]))
    key.refresh_from_db()
    assert not key.enabled


def portal_hash(secret: str) -> str:
    from routing.models import hash_secret

    return hash_secret(secret)
