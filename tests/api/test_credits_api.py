import json
from decimal import Decimal

from billing.ledger import ledger_sums
from billing.models import ExchangeRate, LedgerEntry
from billing.rates import rate_in_force, rate_set
from tests import factories


def test_grant_posts_a_ledger_entry_and_returns_the_balance(api, org):
    # given
    ve = factories.make_ve(org, credits=10)
    # when
    response = api.post(f"/virtual-endpoints/{ve.public_id}/grants", {"credits": "1000.5", "note": "welcome"})
    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["entry"]["kind"] == "grant" and body["entry"]["amount"] == "1000.5"
    assert body["balance"] == "1010.5" and body["credit_budget"] == "1010.5"
    ve.refresh_from_db()
    assert ve.credit_budget == 1_010_500_000 == ledger_sums(ve.pk)[0]
    assert LedgerEntry.objects.get(pk=body["entry"]["id"]).note == "welcome"


def test_grant_with_idempotency_key_posts_once(api, org):
    ve = factories.make_ve(org)
    path = f"/virtual-endpoints/{ve.public_id}/grants"
    first = api.post(path, {"credits": "5", "idempotency_key": "promo-1"})
    replay = api.post(path, {"credits": "5", "idempotency_key": "promo-1"})
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["entry"]["id"] == first.json()["entry"]["id"]
    assert replay.json()["balance"] == "5"
    assert [g["amount"] for g in api.get(path).json()] == ["5"]


def test_grant_validation(api, org):
    ve = factories.make_ve(org)
    path = f"/virtual-endpoints/{ve.public_id}/grants"
    for bad in ({"credits": "0"}, {"credits": "-5"}, {"credits": "abc"}, {}, {"credits": "0.0000001"}):
        assert api.post(path, bad).status_code == 422, bad
    assert not LedgerEntry.objects.filter(virtual_endpoint=ve).exists()


def test_exchange_rate_put_keeps_history(api, org):
    # when
    first = api.put("/exchange-rates/usd", {"credits_per_unit": "100000"})
    second = api.put("/exchange-rates/USD", {"credits_per_unit": "120000.5"})
    # then
    assert first.status_code == 200 and second.json()["credits_per_unit"] == "120000.5"
    assert second.json()["scope"] == "organization" and second.json()["in_force"] is True
    detail = api.get("/exchange-rates/USD").json()
    assert detail["in_force"]["credits_per_unit"] == "120000.5"
    assert [r["credits_per_unit"] for r in detail["history"]] == ["120000.5", "100000"]
    assert ExchangeRate.objects.filter(organization=org, currency="USD").count() == 2


def test_exchange_rate_list_shows_defaults_not_other_orgs(api, org, other_org):
    # given
    rate_set(None, "EUR", "110000")
    rate_set(other_org, "EUR", "1")
    # when
    rows = api.get("/exchange-rates").json()
    # then
    assert [(r["currency"], r["credits_per_unit"], r["scope"], r["in_force"]) for r in rows] == [
        ("EUR", "110000", "default", True)
    ]


def test_exchange_rate_validation(api):
    assert api.put("/exchange-rates/USD", {"credits_per_unit": "0"}).status_code == 422
    assert api.put("/exchange-rates/USD", {"credits_per_unit": "-3"}).status_code == 422
    assert api.put("/exchange-rates/US", {"credits_per_unit": "1"}).status_code == 400
    assert api.put("/exchange-rates/DOLLARS", {"credits_per_unit": "1"}).status_code == 400


def test_rate_in_force_prefers_the_organizations_row(org, other_org):
    # given
    rate_set(None, "USD", "100000")
    rate_set(org, "USD", "90000")
    # then
    assert rate_in_force(org.pk, "USD").credits_per_unit == Decimal("90000")
    assert rate_in_force(other_org.pk, "USD").credits_per_unit == Decimal("100000")
    assert rate_in_force(None, "USD").credits_per_unit == Decimal("100000")
    assert rate_in_force(org.pk, "JPY") is None


def test_rate_in_force_uses_the_rate_effective_at_a_time(org):
    # given
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    rate_set(org, "USD", "100", effective_from=now - timedelta(days=10))
    rate_set(org, "USD", "200", effective_from=now - timedelta(days=1))
    rate_set(org, "USD", "300", effective_from=now + timedelta(days=1))
    # then
    assert rate_in_force(org.pk, "USD").credits_per_unit == Decimal("200")
    assert rate_in_force(org.pk, "USD", at=now - timedelta(days=5)).credits_per_unit == Decimal("100")
    assert rate_in_force(org.pk, "USD", at=now + timedelta(days=2)).credits_per_unit == Decimal("300")


def test_grants_cannot_overflow_the_budget_counter(api, org):
    # given: a budget within one maximal grant of the storable ceiling
    from routing.models import VirtualEndpoint

    ve = factories.make_ve(org)
    VirtualEndpoint.objects.filter(pk=ve.pk).update(credit_budget=2**62 - 10**17)
    path = f"/virtual-endpoints/{ve.public_id}/grants"
    # when
    response = api.post(path, {"credits": "999999999999"})
    # then: a 4xx naming the field, never a 500 from the database
    assert response.status_code == 400, response.content
    assert "credits" in response.json()["errors"]
    assert not LedgerEntry.objects.filter(virtual_endpoint=ve).exists()


def test_grant_with_an_idempotency_key_header_posts_once_and_replays_the_first_result(api, org):
    # issue 15: a client that retries a grant (e.g. after a 500) must not double it
    ve = factories.make_ve(org)
    path = f"/api/v1/virtual-endpoints/{ve.public_id}/grants"

    def post(credits, key):
        return api.client.post(path, data=json.dumps({"credits": credits}), content_type="application/json",
                               HTTP_IDEMPOTENCY_KEY=key, **api.headers)

    first, replay = post("5", "retry-1"), post("5", "retry-1")
    assert (first.status_code, replay.status_code) == (201, 200)
    assert replay.json()["entry"] == first.json()["entry"] and replay.json()["balance"] == "5"
    assert LedgerEntry.objects.filter(virtual_endpoint=ve).count() == 1
    # the same key for another amount is refused, in the documented error shape
    other = post("7", "retry-1")
    assert other.status_code == 400 and "idempotency_key" in other.content.decode()
    assert ledger_sums(ve.pk)[0] == 5_000_000
