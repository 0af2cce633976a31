from datetime import UTC, datetime
from decimal import Decimal

import pytest

from billing.pricing import CREDITS, PricingError, Rate, Units, price_call, route_rates, units_from
from gateway.adapters.base import Usage
from routing.snapshot import LogicalModelSnap, PhysicalModelSnap, ProviderSnap, RouteSnap

USD = Rate("USD", Decimal("100000"), 7, None, datetime(2024, 1, 1, tzinfo=UTC))


def route(input_cost="1", output_cost="2", cached="0.5", currency="USD") -> RouteSnap:
    provider = ProviderSnap(1, "p", "openai", "http://canary.invalid", "sk-canary", "", currency, 1, 1)
    pm = PhysicalModelSnap(11, "up", "chat", provider, Decimal(input_cost), Decimal(cached), Decimal("0"),
                           Decimal(output_cost), {}, Decimal("0"))
    return RouteSnap(21, 0, 1.0, pm)


def model(**prices) -> LogicalModelSnap:
    fields = dict(input_price_per_mtok=None, cached_input_price_per_mtok=None, cache_write_price_per_mtok=None,
                  output_price_per_mtok=None)
    fields.update({k: Decimal(v) for k, v in prices.items()})
    return LogicalModelSnap(31, 1, "chat", "chat", **fields, image_prices={}, price_per_second=None,
                            default_max_output_tokens=4096, routes=())


def test_charge_is_cost_in_credits_times_markup_without_sale_price():
    # given 1000 input tokens at 1 USD/M and 500 output at 2 USD/M, 1 USD = 100,000 credits, markup 1.5
    rates = route_rates(model(), route(), Decimal("1.5"), USD)
    # when
    priced = price_call(rates, Units(input=1000, output=500))
    # then cost = 0.001 + 0.001 USD = 0.002 USD = 200 credits; charge = 300 credits
    assert priced.cost == Decimal("0.002")
    assert priced.cost_currency == "USD"
    assert priced.cost_credits == 200_000_000
    assert priced.charge == 300_000_000
    assert priced.snapshot["rate"]["credits_per_unit"] == "100000"
    assert priced.snapshot["rate"]["rate_id"] == 7


def test_sale_price_wins_over_markup_per_component():
    # given a sale price for output only: input falls back to cost x markup
    rates = route_rates(model(output_price_per_mtok="1000"), route(), Decimal("2"), USD)
    # when
    priced = price_call(rates, Units(input=1_000_000, output=2_000_000))
    # then input: 1 USD = 100,000 credits x 2; output: 2 x 1000 credits
    assert priced.charge == (200_000 + 2_000) * 1_000_000
    assert priced.snapshot["sale_per_mtok"] == {"output": "1000"}


def test_cached_tokens_priced_at_their_own_cost():
    rates = route_rates(model(), route(cached="0.5"), Decimal("1"), USD)
    priced = price_call(rates, units_from(Usage(input_tokens=0, cached_input_tokens=2_000_000)))
    assert priced.charge == 100_000 * 1_000_000  # 2M x 0.5 USD/M = 1 USD


def test_one_rounding_rule_ceiling_once_per_call():
    # given one output token at 0.0000003 credits (a fraction of a micro-credit)
    rates = route_rates(model(output_price_per_mtok="0.3"), route(), Decimal("1"), USD)
    # when / then: the sub-micro fraction is charged as one micro-credit, never zero
    assert price_call(rates, Units(output=1)).charge == 1
    # and the sum is rounded once: 10 tokens = 3 micro-credits exactly, not 10 x ceil
    assert price_call(rates, Units(output=10)).charge == 3


def test_no_rate_for_the_provider_currency_is_refused():
    with pytest.raises(PricingError, match="exchange rate"):
        route_rates(model(), route(currency="CNY"), Decimal("1"), None)


def test_no_sale_price_and_no_cost_is_refused_not_free():
    with pytest.raises(PricingError, match="no price"):
        route_rates(model(), route(input_cost="0", output_cost="0"), Decimal("1"), USD)


def test_sale_prices_need_no_rate():
    rates = route_rates(model(input_price_per_mtok="10", output_price_per_mtok="20"), route(currency="JPY"),
                        Decimal("1"), None)
    priced = price_call(rates, Units(input=1_000_000, output=1_000_000))
    assert priced.charge == 30_000_000
    assert priced.cost_credits == 0 and priced.snapshot["rate"] is None


def test_credits_currency_is_identity():
    rates = route_rates(model(), route(currency="CREDITS"), Decimal("1"), CREDITS)
    assert price_call(rates, Units(input=1_000_000)).charge == 1_000_000


def test_fast_charge_micros_equals_the_reference_computation_over_random_usages():
    # given routes priced by sale price and by cost x rate x markup, with awkward decimals
    import random

    from billing.money import to_micros

    rng = random.Random(1234)
    cases = [
        route_rates(model(), route("2.5", "10.123456"), Decimal("1.15"), Rate("EUR", Decimal("0.9234567891"), 3, None,
                                                                                datetime(2024, 1, 1, tzinfo=UTC))),
        route_rates(model(), route("0.15", "0.6"), Decimal("1"), USD),
        route_rates(model(input_price_per_mtok="0.333333", output_price_per_mtok="7.77"), route(), Decimal("2"), USD),
        route_rates(model(input_price_per_mtok="0", output_price_per_mtok="0.000001"), route(), Decimal("1"), None),
    ]
    for rates in cases:
        for _ in range(2000):
            u = Units(input=rng.randrange(0, 2_000_000), output=rng.randrange(0, 200_000),
                      cached_input=rng.choice([0, rng.randrange(0, 1_000_000)]),
                      cache_creation=rng.choice([0, rng.randrange(0, 100_000)]))
            # when
            fast = rates.charge_micros(u.input, u.output, u.cached_input, u.cache_creation)
            # then: the same micro-credits as the Decimal reference, and price_call agrees
            assert fast == to_micros(rates.charge_exact(u)) == price_call(rates, u).charge, u


def test_cost_and_units_are_the_reference_computation_digit_for_digit():
    # given routes with awkward costs (and one whose cost is all zeros), the reference
    # formulas the hot path's shortcuts replaced (a generator sum from ZERO, then + ZERO)
    import random

    from billing.money import to_micros
    from billing.pricing import TOKEN_COMPONENTS, ZERO

    eur = Rate("EUR", Decimal("0.9234567891"), 3, None, datetime(2024, 1, 1, tzinfo=UTC))
    cases = [
        route_rates(model(), route("2.5", "10.123456", "1.25"), Decimal("1.15"), eur),
        route_rates(model(), route("0.15", "0.6", "0.075"), Decimal("1"), USD),
        route_rates(model(), route("3", "15", "0.30"), Decimal("1.000"), USD),
        route_rates(model(input_price_per_mtok="1", output_price_per_mtok="2"), route("0", "0", "0"), Decimal("2"),
                    None),
    ]
    rng = random.Random(99)
    for rates in cases:
        for _ in range(1000):
            u = Units(input=rng.choice([0, rng.randrange(0, 2_000_000)]), output=rng.choice([0, rng.randrange(0, 9)]),
                      cached_input=rng.choice([0, rng.randrange(0, 1_000_000)]),
                      cache_creation=rng.choice([0, rng.randrange(0, 100_000)]))
            reference = sum((getattr(u, c) * rates.cost_per[c] for c in TOKEN_COMPONENTS), ZERO) + ZERO
            # when
            priced = price_call(rates, u)
            # then: the same Decimal (value, digits and exponent: the row stores its text)
            assert rates.cost_exact(u).as_tuple() == reference.as_tuple() == priced.cost.as_tuple(), u
            assert priced.cost_credits == (to_micros(reference * rates.rate.credits_per_unit) if rates.rate else 0)
    # and the tokens-only Units equal the general path's
    for usage in (Usage(input_tokens=3, output_tokens=4), Usage(input_tokens=0, cached_input_tokens=5), None,
                  Usage(input_tokens=7, output_tokens=1, estimated=True)):
        fast = units_from(usage)
        assert fast == units_from(usage, {"images": []}) == units_from(usage, {"audio_seconds": 0})
        assert str(fast.audio_seconds) == "0" and fast.audio_seconds.as_tuple() == Decimal("0").as_tuple()


@pytest.mark.parametrize("micros, text", [(0, "0"), (1, "0.000001"), (-2_000_001, "-2.000001"), (1_234_500_000, "1234.5"),
                                          (5_000_000, "5"), (-1, "-0.000001"), (10**18 + 7, "1000000000000.000007")])
def test_credit_strings_in_headers(micros, text):
    from billing.money import format_credits

    assert format_credits(micros) == text


def test_integer_credit_strings_equal_the_decimal_reference():
    import random

    from billing.money import format_credits, from_micros

    rng = random.Random(7)
    for _ in range(5000):
        micros = rng.choice([rng.randint(-10**7, 10**7), rng.randint(-10**20, 10**20), rng.randint(0, 10) * 10**6])
        reference = format(from_micros(micros), "f")
        reference = (reference.rstrip("0").rstrip(".") if "." in reference else reference) or "0"
        assert format_credits(micros) == reference, micros
