"""The public model pricing page: /pricing/<slug> and its JSON form (billing/pricing_public.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.rates import rate_set
from tests.factories import make_logical_model, make_org, make_physical_model, make_provider

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop():
    org = make_org("Acme AI", slug="acme", pricing_public=True, markup=Decimal("1.5"))
    rate_set(org, "USD", "100")  # 1 USD = 100 credits
    rate_set(org, "EUR", "120")
    provider = make_provider(org, currency="USD")
    cheap = make_physical_model(provider, "gpt-x", input_cost_per_mtok=Decimal("2"), output_cost_per_mtok=Decimal("8"),
                                cached_input_cost_per_mtok=Decimal("0.5"))
    pricey = make_physical_model(provider, "gpt-y", input_cost_per_mtok=Decimal("10"), output_cost_per_mtok=Decimal("30"))
    # A sale price on output only: input and cached input are charged from cost.
    make_logical_model(org, "smart", routes=[(cheap, 0, 1), (pricey, 1, 1)], description="Our best model",
                       output_price_per_mtok=Decimal("999.5"))
    make_logical_model(org, "disabled", routes=[cheap], enabled=False)
    make_logical_model(org, "no-route")
    artist = make_physical_model(provider, "img", modality="image", input_cost_per_mtok=0, output_cost_per_mtok=0,
                                 image_costs={"1024x1024": {"standard": "0.04", "hd": "0.08"}})
    make_logical_model(org, "paint", modality="image", routes=[artist], image_prices={"1024x1024": {"hd": "20"}})
    return org


def test_json_lists_what_can_be_bought_at_the_prices_the_biller_charges(client, shop):
    response = client.get("/pricing/acme?format=json")
    assert response.status_code == 200
    data = response.json()
    assert [m["name"] for m in data["models"]] == ["paint", "smart"]  # disabled and route-less models are not for sale
    smart = data["models"][1]
    assert smart["description"] == "Our best model"
    tokens = smart["per_1m_tokens"]
    # From cost, on the first route: 2 USD x 100 credits/USD x markup 1.5 = 300 credits.
    assert tokens["input"] == {"credits": "300", "from_cost": True, "converted": {"EUR": "2.5", "USD": "3"}}
    assert tokens["cached_input"]["credits"] == "75"
    # The sale price, exactly; converted 999.5 / 120 = 8.329166… -> 8.3292 (half-up, 4 places).
    assert tokens["output"] == {"credits": "999.5", "from_cost": False, "converted": {"EUR": "8.3292", "USD": "9.995"}}
    paint = {(i["size"], i["quality"]): i for i in data["models"][0]["per_image"]}
    assert paint[("1024x1024", "hd")]["credits"] == "20" and not paint[("1024x1024", "hd")]["from_cost"]
    assert paint[("1024x1024", "standard")]["credits"] == "6"  # 0.04 x 100 x 1.5
    assert data["rates"] == {"EUR": {"credits_per_unit": "120"}, "USD": {"credits_per_unit": "100"}}


def test_html_page_shows_prices_in_credits_and_each_currency(client, shop):
    response = client.get("/pricing/acme")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Model pricing" in html and "Acme AI" in html
    assert "<code>smart</code>" in html and "999.5" in html and "8.3292" in html
    assert "disabled" not in html and "no-route" not in html
    assert response["Cache-Control"] == "public, max-age=60"


def test_not_published_unless_the_organization_opts_in(client):
    make_org("Quiet", slug="quiet")
    assert client.get("/pricing/quiet").status_code == 404
    assert client.get("/pricing/nobody-here").status_code == 404


def test_a_cost_without_an_exchange_rate_is_not_priced(client):
    org = make_org("Yen shop", slug="yen", pricing_public=True)
    provider = make_provider(org, currency="JPY")
    make_logical_model(org, "m", routes=[make_physical_model(provider, "m", input_cost_per_mtok=Decimal("300"))])
    data = client.get("/pricing/yen?format=json").json()
    assert data["models"][0]["per_1m_tokens"]["input"]["credits"] is None
    assert "not priced" in client.get("/pricing/yen").content.decode()


def test_conditional_get_answers_304(client, shop):
    first = client.get("/pricing/acme?format=json")
    again = client.get("/pricing/acme?format=json", HTTP_IF_NONE_MATCH=first["ETag"])
    assert again.status_code == 304 and again["ETag"] == first["ETag"]


def test_queries_do_not_grow_with_the_number_of_models(client, shop):
    with CaptureQueriesContext(connection) as few:
        client.get("/pricing/acme")
    provider = make_provider(shop, currency="USD")
    for i in range(30):
        make_logical_model(shop, f"extra-{i}", routes=[make_physical_model(provider, f"pm-{i}")])
    with CaptureQueriesContext(connection) as many:
        response = client.get("/pricing/acme")
    assert response.content.decode().count("<code>extra-") == 30
    assert len(many) == len(few)


def test_other_organizations_models_are_not_listed(client, shop):
    other = make_org("Other", slug="other", pricing_public=True)
    make_logical_model(other, "secret-model", routes=[make_physical_model(make_provider(other), "x")])
    assert "secret-model" not in client.get("/pricing/acme").content.decode()
    assert [m["name"] for m in client.get("/pricing/other?format=json").json()["models"]] == ["secret-model"]


def test_a_price_change_shows_on_the_next_visit(client, shop):
    from routing.services import config_changed

    assert client.get("/pricing/acme?format=json").json()["models"][1]["per_1m_tokens"]["input"]["credits"] == "300"
    shop.markup = Decimal("2")
    shop.save()
    config_changed()  # what the console's settings page does after saving the markup
    assert client.get("/pricing/acme?format=json").json()["models"][1]["per_1m_tokens"]["input"]["credits"] == "400"


def test_merchant_text_is_escaped(client):
    org = make_org("Esc", slug="esc", pricing_public=True)
    rate_set(org, "USD", "1")
    pm = make_physical_model(make_provider(org), "img", modality="image", image_costs={"<b>big</b>": {"hd": "1"}})
    make_logical_model(org, "pic", modality="image", routes=[pm], description="<script>x()</script>")
    html = client.get("/pricing/esc").content.decode()
    assert "<script>x()" not in html and "&lt;script&gt;" in html
    assert "<b>big</b>" not in html and "&lt;b&gt;big&lt;/b&gt;" in html
