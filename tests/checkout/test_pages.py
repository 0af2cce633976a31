import re
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from billing.checkout_links import checkout_token
from billing.models import LedgerEntry, Payment, PaymentStatus, RequestLog
from tests import factories


def _link(ve, **extra) -> str:
    return "/checkout?" + urlencode({"ve_id": ve.public_id, "token": checkout_token(ve.public_id), **extra})


def _form(ve, **fields) -> dict:
    return {"ve_id": ve.public_id, "token": checkout_token(ve.public_id), "currency": "USD", **fields}


def test_checkout_page_shows_balance_usage_amounts_and_the_credit_preview(test_mode, ve):
    # given some usage this month and last month
    now = timezone.now()
    for started_at, tokens in ((now, 1200), (now, 300), (now - timedelta(days=40), 99999)):
        RequestLog.objects.create(request_id=f"r{tokens}", organization=ve.organization, virtual_endpoint=ve,
                                  input_tokens=tokens, output_tokens=10, started_at=started_at)
    # when
    response = Client().get(_link(ve))
    # then
    html = response.content.decode()
    assert response.status_code == 200
    assert "Acme Chat" in html and "Active" in html
    assert ">3 <small>credits" in html  # balance
    assert "1,520" in html  # tokens this month: 1200+10+300+10
    assert ">2<" in html  # requests this month
    for label in ("$10", "$50", "$100"):
        assert f"<span>{label}</span>" in html
    assert re.search(r"\$50\.00</span>\s*<span[^>]*>→</span>\s*<span[^>]*>\+ 5,000,000 Credits", html)
    assert "Test mode" in html and "no real card is charged" in html
    assert "Pay securely" in html


def test_exhausted_ve_is_labelled_exhausted(test_mode, org, rates):
    ve = factories.make_ve(org)
    assert "Exhausted" in Client().get(_link(ve)).content.decode()


@pytest.mark.parametrize("case", ["bad_token", "unknown_ve", "no_token", "expired"])
def test_bad_links_get_the_same_page_whether_or_not_the_ve_exists(test_mode, ve, case, monkeypatch):
    if case == "bad_token":
        url = "/checkout?" + urlencode({"ve_id": ve.public_id, "token": "x" * 27})
    elif case == "unknown_ve":
        url = "/checkout?" + urlencode({"ve_id": "ve_doesnotexist00", "token": checkout_token("ve_doesnotexist00")})
    elif case == "no_token":
        url = "/checkout?" + urlencode({"ve_id": ve.public_id})
    else:
        monkeypatch.setattr("billing.checkout_links.MAX_AGE_SECONDS", -1)
        import billing.checkout_links as links

        monkeypatch.setattr(links.verify_checkout_token, "__defaults__", (-1,))
        url = _link(ve)
    response = Client().get(url)
    assert response.status_code == 404
    html = response.content.decode()
    assert "This checkout link is not valid" in html
    assert "Acme Chat" not in html and ve.public_id not in html


def test_preview_partial_follows_the_chosen_amount_and_currency(test_mode, org, rates):
    # given a VE selling in USD and JPY
    ve = factories.make_ve(org, checkout_currencies=["USD", "JPY"], checkout_amounts=[1000, 5000])
    client = Client()
    qs = {"ve_id": ve.public_id, "token": checkout_token(ve.public_id)}
    # when the payer picks $10
    usd = client.get("/checkout/preview?" + urlencode({**qs, "currency": "USD", "amount": "1000"}),
                     headers={"HX-Request": "true"}).content.decode()
    # then only the fragment comes back
    assert "<html" not in usd and 'id="preview"' in usd
    assert "$10.00" in usd and "+ 1,000,000 Credits" in usd
    # when the payer switches to yen: the buttons and the preview change together
    jpy = client.get("/checkout/preview?" + urlencode({**qs, "currency": "JPY", "amount": "5000", "part": "choices"}),
                     headers={"HX-Request": "true"}).content.decode()
    assert "<span>¥5,000</span>" in jpy and "+ 3,500,000 Credits" in jpy
    # when the payer types a custom amount
    custom = client.get("/checkout/preview?" + urlencode({**qs, "currency": "USD", "amount": "custom",
                                                          "custom_amount": "12.50"})).content.decode()
    assert "$12.50" in custom and "+ 1,250,000 Credits" in custom
    too_small = client.get("/checkout/preview?" + urlencode({**qs, "amount": "custom", "custom_amount": "1"}),
                           headers={"HX-Request": "true"})
    assert "Choose between $5.00 and $1,000.00" in too_small.content.decode()
    # and the same URL opened without HTMX (a reload) is the whole page with that choice
    reloaded = client.get("/checkout/preview?" + urlencode({**qs, "currency": "JPY", "amount": "1000"})).content.decode()
    assert "<html" in reloaded and "Pay securely" in reloaded and "+ 700,000 Credits" in reloaded


def test_currency_without_a_rate_is_not_offered(test_mode, org, rates):
    ve = factories.make_ve(org, checkout_currencies=["EUR", "USD"])
    html = Client().get(_link(ve)).content.decode()
    assert 'value="EUR"' not in html and 'value="USD"' in html


def test_no_rate_at_all_says_so_and_offers_no_button(test_mode, org):
    ve = factories.make_ve(org)
    html = Client().get(_link(ve)).content.decode()
    assert "no currency has an exchange rate yet" in html
    assert "Pay securely" not in html


def test_pay_is_csrf_protected(test_mode, ve):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/checkout/pay", _form(ve, amount="5000"))
    assert response.status_code == 403
    assert not Payment.objects.exists()


def test_test_mode_checkout_end_to_end_credits_through_the_ledger(test_mode, ve,
                                                                   django_capture_on_commit_callbacks):
    client = Client()
    ve.refresh_from_db()
    before = ve.balance
    # when the payer picks $50 and pays
    response = client.post("/checkout/pay", _form(ve, amount="5000", email="payer@example.com"))
    # then they land on the clearly labelled test-mode page
    assert response.status_code == 302
    test_page = client.get(response["Location"])
    assert "Test mode" in test_page.content.decode() and "no real card is charged" in test_page.content.decode()
    payment = Payment.objects.get()
    assert (payment.processor, payment.status, payment.amount_minor) == ("test", "pending", 5000)
    # and the success page polls while pending
    ref = response["Location"].split("ref=")[1]
    pending = client.get(f"/checkout/success?ref={ref}").content.decode()
    assert 'hx-trigger="every 1s"' in pending and "Confirming your payment" in pending
    # when they confirm
    with django_capture_on_commit_callbacks(execute=True):
        confirmed = client.post("/checkout/test", {"ref": ref})
    assert confirmed.status_code == 302
    success = client.get(confirmed["Location"]).content.decode()
    # then the credits went through the ledger once and the page shows the new balance
    ve.refresh_from_db()
    assert ve.balance == before + 5_000_000 * 1_000_000
    [entry] = LedgerEntry.objects.filter(virtual_endpoint=ve, kind="top_up")
    assert entry.idempotency_key == f"checkout:test-payment:{payment.pk}"
    assert "Payment confirmed" in success and "5,000,003" in success
    assert 'hx-trigger="every 1s"' not in success
    # and a second confirm (double click, back button) credits nothing more
    client.post("/checkout/test", {"ref": ref})
    assert LedgerEntry.objects.filter(virtual_endpoint=ve, kind="top_up").count() == 1
    # and the payer got one receipt
    assert [m.to for m in mail.outbox] == [["payer@example.com"]]
    assert "TEST MODE" in mail.outbox[0].body


def test_status_partial_stops_polling_once_paid(test_mode, ve):
    from billing import payments

    started = payments.checkout_start(virtual_endpoint=ve, amount_minor=1000, currency="USD")
    ref = payments.payment_ref(started.payment.pk)
    client = Client()
    assert "every 1s" in client.get(f"/checkout/success/status?ref={ref}").content.decode()
    payments.payment_credit(payment_id=started.payment.pk)
    fragment = client.get(f"/checkout/success/status?ref={ref}").content.decode()
    assert "every 1s" not in fragment and "Payment confirmed" in fragment and "<html" not in fragment


def test_forged_payment_reference_is_refused(test_mode, ve):
    client = Client()
    assert client.post("/checkout/test", {"ref": "1"}).status_code == 404
    assert client.get("/checkout/success?ref=1").status_code == 404


def test_without_stripe_key_and_without_test_mode_nothing_is_sold(settings, ve):
    settings.STRIPE_SECRET_KEY = ""
    settings.CHECKOUT_TEST_MODE = False
    client = Client()
    assert "not configured" in client.get(_link(ve)).content.decode()
    response = client.post("/checkout/pay", _form(ve, amount="5000"))
    assert response.status_code == 400
    assert not Payment.objects.exists()


def test_pay_with_stripe_redirects_to_the_session(stripe_on, ve):
    response = Client().post("/checkout/pay", _form(ve, amount="custom", custom_amount="25"))
    assert response.status_code == 302
    payment = Payment.objects.get()
    assert payment.amount_minor == 2500 and payment.status == PaymentStatus.PENDING
    assert response["Location"] == stripe_on.sessions[payment.stripe_session_id]["url"]


def test_cancel_page_links_back_to_checkout(test_mode, ve):
    from billing import payments

    started = payments.checkout_start(virtual_endpoint=ve, amount_minor=1000, currency="USD")
    html = Client().get(f"/checkout/cancel?ref={payments.payment_ref(started.payment.pk)}").content.decode()
    assert "Payment canceled" in html and f"ve_id={ve.public_id}" in html


def test_payer_back_from_stripe_sees_the_credit_even_before_the_webhook(stripe_on, ve):
    # given the payer paid on Stripe; the webhook has not arrived
    client = Client()
    response = client.post("/checkout/pay", _form(ve, amount="5000"))
    payment = Payment.objects.get()
    stripe_on.complete(payment.stripe_session_id)
    success_url = stripe_on.sessions[payment.stripe_session_id]["success_url"].replace(
        "{CHECKOUT_SESSION_ID}", payment.stripe_session_id).removeprefix("http://localhost:8000")
    assert response.status_code == 302
    # when Stripe sends them back to the success page
    html = client.get(success_url).content.decode()
    # then we asked Stripe, credited once, and show the new balance
    assert "Payment confirmed" in html and "5,000,003" in html
    assert LedgerEntry.objects.filter(virtual_endpoint=ve, kind="top_up").count() == 1
    # and a forged session id in the URL makes no Stripe call
    calls = len(stripe_on.requests)
    other = Payment.objects.create(virtual_endpoint=ve, amount_minor=1000, currency="USD", credits=1,
                                   stripe_session_id="cs_other")
    from billing import payments

    client.get(f"/checkout/success?ref={payments.payment_ref(other.pk)}&session_id=cs_forged")
    assert len(stripe_on.requests) == calls


@pytest.mark.parametrize("currency", ["EUR", "XYZ"])
def test_pay_in_a_currency_not_offered_is_refused_and_says_which_are(stripe_on, ve, currency):
    # issue 15: it used to open a Stripe session in the first offered currency
    response = Client().post("/checkout/pay", _form(ve, amount="custom", custom_amount="25", currency=currency))
    assert response.status_code == 400
    assert f"{currency} is not offered here. Currencies offered: USD." in response.content.decode()
    assert not Payment.objects.exists() and not stripe_on.sessions
