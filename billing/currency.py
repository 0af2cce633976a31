"""Fiat amounts at the Stripe boundary: minor units, zero- and three-decimal currencies.

Stripe counts every amount in the currency's smallest unit: cents for USD, but whole yen
for JPY (zero-decimal) and fils (1/1000) for KWD (three-decimal). Payments store that
integer (Payment.amount_minor); people type and read major units. Conversions happen here
only, with Decimals, and refuse amounts finer than the currency's minor unit.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal

from billing.money import MICROS_PER_CREDIT, MoneyError, parse_decimal

# https://docs.stripe.com/currencies#zero-decimal and #three-decimal
ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CNY": "¥", "INR": "₹", "KRW": "₩"}


def exponent(currency: str) -> int:
    code = currency.upper()
    if code in ZERO_DECIMAL:
        return 0
    if code in THREE_DECIMAL:
        return 3
    return 2


def to_minor(amount: Decimal | int | str, currency: str) -> int:
    """Major units (what a person types: '50', '12.5', '5.250') to Stripe's minor units."""
    value = parse_decimal(amount) * (10 ** exponent(currency))
    if value != value.to_integral_value():
        raise MoneyError(f"{currency} amounts have at most {exponent(currency)} decimal places")
    return int(value)


def from_minor(amount_minor: int, currency: str) -> Decimal:
    places = exponent(currency)
    return (Decimal(amount_minor) / (10**places)).quantize(Decimal(1).scaleb(-places))


def format_money(amount_minor: int, currency: str) -> str:
    """'$50.00', '¥5,000', 'KWD 5.000'."""
    code = currency.upper()
    number = f"{from_minor(amount_minor, code):,}"
    symbol = SYMBOLS.get(code)
    return f"{symbol}{number}" if symbol else f"{code} {number}"


def format_money_short(amount_minor: int, currency: str) -> str:
    """'$50' for whole amounts (buttons), else the same as format_money."""
    text = format_money(amount_minor, currency)
    places = exponent(currency)
    zeros = "." + "0" * places
    return text[: -len(zeros)] if places and text.endswith(zeros) else text


def credits_for(amount_minor: int, currency: str, credits_per_unit: Decimal) -> int:
    """Micro-credits bought by `amount_minor` at `credits_per_unit` (credits per major unit).

    Rounds down: a top-up never grants a fraction of a micro-credit it was not paid for.
    """
    micros = from_minor(amount_minor, currency) * parse_decimal(credits_per_unit) * MICROS_PER_CREDIT
    return int(micros.to_integral_value(rounding=ROUND_FLOOR))
