"""Credits are counted in whole micro-credits (1 credit = 1,000,000 µcr), as Python ints.

Every balance, reservation, charge and ledger amount is an int of micro-credits: Redis
counters and SQL columns add them exactly, and no float ever touches money. Prices and
exchange rates are Decimals; a computed amount is turned into micro-credits once, with
`to_micros`, which rounds up (ceiling): a fraction of a micro-credit is charged as one,
so no call is ever billed at zero by rounding.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation

MICROS_PER_CREDIT = 1_000_000
_MICRO = Decimal(1) / MICROS_PER_CREDIT


class MoneyError(ValueError):
    pass


def to_micros(credits: Decimal | int | str) -> int:
    """Credits (Decimal) to micro-credits, rounding any fraction of a micro-credit up."""
    value = parse_decimal(credits) * MICROS_PER_CREDIT
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def credits_to_micros_exact(credits: Decimal | int | str) -> int:
    """Credits given by a person (a grant, a limit) to micro-credits; refuses sub-micro precision."""
    value = parse_decimal(credits) * MICROS_PER_CREDIT
    if value != value.to_integral_value():
        raise MoneyError("credits can have at most 6 decimal places")
    return int(value)


def from_micros(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS_PER_CREDIT).quantize(_MICRO)


def format_credits(micros: int) -> str:
    """The API's decimal-string form of an amount: '1234.5', '0', '-2.000001'.
    Integer arithmetic (it runs twice per gateway call, for the response headers)."""
    whole, frac = divmod(abs(micros), MICROS_PER_CREDIT)
    sign = "-" if micros < 0 else ""
    if frac:
        return f"{sign}{whole}.{frac:06d}".rstrip("0")
    return f"{sign}{whole}"


def format_credits_human(micros: int) -> str:
    """'5,000,000' or '12.35': for pages and chat answers (2 decimals at most, half-even)."""
    value = from_micros(micros)
    if value == value.to_integral_value():
        return f"{int(value):,}"
    return f"{value.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):,}"


def parse_decimal(value: Decimal | int | str) -> Decimal:
    if isinstance(value, float):
        raise MoneyError("money is never a float: pass a string or a Decimal")
    try:
        result = Decimal(value)
    except (InvalidOperation, TypeError):
        raise MoneyError(f"not a number: {value!r}") from None
    if not result.is_finite():
        raise MoneyError(f"not a finite number: {value!r}")
    return result
