from decimal import Decimal

import pytest

from billing.currency import credits_for, format_money, format_money_short, from_minor, to_minor
from billing.money import MoneyError


def test_two_decimal_currency_round_trips_through_cents():
    assert to_minor("50", "USD") == 5000
    assert to_minor("12.34", "usd") == 1234
    assert from_minor(5000, "USD") == Decimal("50.00")
    assert format_money(5000, "USD") == "$50.00"
    assert format_money_short(5000, "USD") == "$50"


def test_jpy_is_zero_decimal():
    # given a yen amount, Stripe counts whole yen
    assert to_minor("5000", "JPY") == 5000
    assert from_minor(5000, "JPY") == Decimal("5000")
    assert format_money(5000, "JPY") == "¥5,000"
    # then fractions of a yen are refused rather than rounded
    with pytest.raises(MoneyError):
        to_minor("10.5", "JPY")


def test_kwd_is_three_decimal():
    assert to_minor("5.250", "KWD") == 5250
    assert to_minor("1", "KWD") == 1000
    assert from_minor(5250, "KWD") == Decimal("5.250")
    assert format_money(5250, "KWD") == "KWD 5.250"
    assert format_money_short(5000, "KWD") == "KWD 5"
    with pytest.raises(MoneyError):
        to_minor("1.2345", "KWD")


def test_credits_for_uses_major_units_of_each_currency():
    # $50 at 100,000 credits per USD buys 5,000,000 credits
    assert credits_for(5000, "USD", Decimal("100000")) == 5_000_000 * 1_000_000
    # ¥5,000 at 700 credits per JPY: 5000 minor units ARE 5000 yen
    assert credits_for(5000, "JPY", Decimal("700")) == 3_500_000 * 1_000_000
    # 5.000 KWD at 325,000 credits per KWD
    assert credits_for(5000, "KWD", Decimal("325000")) == 1_625_000 * 1_000_000


def test_credits_for_rounds_sub_micro_fractions_down():
    # $0.01 at 0.33333333 credits per USD = 0.0033333333 credits = 3333.3333 µcr
    assert credits_for(1, "USD", Decimal("0.33333333")) == 3333


def test_floats_are_refused():
    with pytest.raises(MoneyError):
        to_minor(1.5, "USD")
