"""Issue 21 without a browser: session expiry for htmx, money rails' validation."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_htmx_request_without_session_gets_hx_redirect_to_login_with_the_current_page(client):
    response = client.get("/console/providers/new/", HTTP_HX_REQUEST="true",
                          HTTP_HX_CURRENT_URL="http://testserver/console/providers/?q=a")
    assert response.status_code == 401
    assert response["HX-Redirect"] == "/console/login/?next=%2Fconsole%2Fproviders%2F%3Fq%3Da"
    assert b"<form" not in response.content


def test_htmx_post_without_session_never_comes_back_to_the_post_url(client):
    response = client.post("/console/providers/new/", HTTP_HX_REQUEST="true")
    assert response.status_code == 401
    assert response["HX-Redirect"] == "/console/login/"


def test_htmx_current_url_of_another_host_is_not_followed(client):
    response = client.get("/console/providers/new/", HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="https://evil.example/x")
    assert response["HX-Redirect"] == "/console/login/?next=%2Fconsole%2Fproviders%2Fnew%2F"


def test_plain_request_without_session_still_gets_a_302(client):
    response = client.get("/console/providers/")
    assert response.status_code == 302
    assert response["Location"] == "/console/login/?next=/console/providers/"


@pytest.fixture
def lossy(org):
    """A route costing 1.5 USD / 1M output tokens = 150,000 credits at 100,000 credits per USD."""
    from decimal import Decimal

    from django.utils import timezone

    from billing.models import ExchangeRate
    from tests import factories

    ExchangeRate.objects.create(organization=org, currency="USD", credits_per_unit=Decimal("100000"),
                                effective_from=timezone.now() - timezone.timedelta(days=1))
    provider = factories.make_provider(org, name="Up")
    pm = factories.make_physical_model(provider, "fake-a", input_cost_per_mtok=Decimal("0.5"),
                                       output_cost_per_mtok=Decimal("1.5"))
    return factories.make_logical_model(org, name="chat", routes=[pm])


def _lm_post(lm, **over):
    data = {"name": lm.name, "description": "", "modality": lm.modality, "input_price_per_mtok": "",
            "cached_input_price_per_mtok": "", "output_price_per_mtok": "", "price_per_second": "",
            "default_max_output_tokens": "4096", "enabled": "on"}
    data.update(over)
    return {k: v for k, v in data.items() if v is not None}


def test_sale_price_below_a_route_cost_is_refused_until_confirmed(owner_client, lossy):
    url = f"/console/models/logical/{lossy.pk}/edit/"
    # the form shows each price's equivalent cost of its routes, in the provider's currency and in credits
    page = owner_client.get(url).content.decode()
    assert "fake-a 1.5 USD = 150,000 credits" in page
    # a price of 600 credits against a cost of 150,000 is not saved, and says why
    response = owner_client.post(url, _lm_post(lossy, output_price_per_mtok="600"), HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    text = response.content.decode()
    assert "sells below cost" in text and "150,000 credits" in text and "price 600 credits" in text
    assert 'type="checkbox" name="confirm_loss"' in text
    lossy.refresh_from_db()
    assert lossy.output_price_per_mtok is None
    # ticking "Save anyway" saves it
    response = owner_client.post(url, _lm_post(lossy, output_price_per_mtok="600", confirm_loss="on"), HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    lossy.refresh_from_db()
    assert lossy.output_price_per_mtok == 600


def test_sale_price_above_cost_saves_without_confirmation(owner_client, lossy):
    url = f"/console/models/logical/{lossy.pk}/edit/"
    response = owner_client.post(url, _lm_post(lossy, input_price_per_mtok="60000", output_price_per_mtok="200000"),
                                 HTTP_HX_REQUEST="true")
    assert response.status_code == 204


def test_dashboard_shows_negative_margin_as_a_loss_in_red(owner_client, world):
    from billing.models import RequestLog
    from tests.console.test_queries import make_logs

    make_logs(world["mine"], 2)
    page = owner_client.get("/console/").content.decode()
    assert "data-loss" not in page  # 150 charged against 100 cost
    RequestLog.objects.filter(organization=world["mine"]["ve"].organization).update(cost_credits=150_000, charge=600)
    page = owner_client.get("/console/").content.decode()
    assert page.count('class="neg" data-loss') == 3  # today, 7 days, 30 days
    assert "· loss" in page


def _ve_post(ve, **over):
    data = {"name": ve.name, "description": "", "requests_per_minute": "", "tokens_per_minute": "",
            "exhaustion_mode": ve.exhaustion_mode, "checkout_amounts": "10, 50, 100", "checkout_min_amount": "5",
            "checkout_max_amount": "1000", "low_balance_threshold": "", "status": ve.status}
    data.update(over)
    return data


def test_checkout_amounts_are_typed_in_the_currencys_units(owner_client, world):
    ve = world["mine"]["ve"]
    url = f"/console/endpoints/{ve.pk}/edit/"
    page = owner_client.get(url).content.decode()
    assert 'value="10.00, 50.00, 100.00"' in page and 'value="5.00"' in page and "(USD)" in page
    response = owner_client.post(url, _ve_post(ve, checkout_amounts="20, 75.50", checkout_min_amount="12.5"),
                                 HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    ve.refresh_from_db()
    assert (ve.checkout_amounts, ve.checkout_min_amount, ve.checkout_max_amount) == ([2000, 7550], 1250, 100000)


def test_checkout_min_above_max_and_presets_outside_the_range_are_refused(owner_client, world):
    ve = world["mine"]["ve"]
    url = f"/console/endpoints/{ve.pk}/edit/"
    response = owner_client.post(url, _ve_post(ve, checkout_min_amount="50", checkout_max_amount="1"), HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert "Must be at least the smallest custom amount." in response.content.decode()
    response = owner_client.post(url, _ve_post(ve, checkout_amounts="10, 999999.99"), HTTP_HX_REQUEST="true")
    assert response.status_code == 422
    assert "Outside the custom range $5.00–$1,000.00: $999,999.99." in response.content.decode()
    response = owner_client.post(url, _ve_post(ve, checkout_amounts="10.005"), HTTP_HX_REQUEST="true")
    assert "at most 2 decimal places" in response.content.decode()
    ve.refresh_from_db()
    assert (ve.checkout_amounts, ve.checkout_min_amount, ve.checkout_max_amount) == ([1000, 5000, 10000], 500, 100000)


def test_zero_decimal_checkout_currency_takes_whole_units(owner_client, world):
    ve = world["mine"]["ve"]
    ve.checkout_currencies = ["JPY"]
    ve.save(update_fields=["checkout_currencies"])
    url = f"/console/endpoints/{ve.pk}/edit/"
    response = owner_client.post(url, _ve_post(ve, checkout_amounts="1000, 5000", checkout_min_amount="500",
                                               checkout_max_amount="100000"), HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    ve.refresh_from_db()
    assert (ve.checkout_amounts, ve.checkout_min_amount) == ([1000, 5000], 500)
    response = owner_client.post(url, _ve_post(ve, checkout_amounts="10.5"), HTTP_HX_REQUEST="true")
    assert "Amounts in JPY with at most 0 decimal places" in response.content.decode()


def test_new_endpoint_form_offers_the_default_checkout_amounts_in_dollars(owner_client):
    html = owner_client.get("/console/endpoints/new/").content.decode()
    assert 'name="checkout_min_amount" value="5.00"' in html and 'name="checkout_max_amount" value="1000.00"' in html


def test_a_role_too_low_gets_the_consoles_own_403_page_saying_what_to_do(as_role):
    response = as_role("viewer").get("/console/providers/new/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "data-error-page" in html and "ask an owner of your organization" in html and "Back to the console" in html


def test_csrf_failure_is_the_consoles_own_page(members):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(members["owner"])
    response = client.post("/console/providers/new/", {"name": "x"})
    assert response.status_code == 403
    html = response.content.decode()
    assert "This form has expired" in html and "reload the page" in html and "data-error-page" in html
    assert "CSRF verification failed" not in html
