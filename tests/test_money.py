"""Exact decimal <-> minor unit conversion; nothing rounds silently."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strife.money import (
    CURRENCY_EXPONENTS,
    MAX_AMOUNT_MINOR,
    Money,
    MoneyError,
    check_amount,
    format_amount,
    parse_amount,
)


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.34", "USD", 1234),
        ("0.01", "USD", 1),
        ("12", "USD", 1200),
        ("12.30", "EUR", 1230),
        ("1000.5", "GBP", 100050),
        (".5", "EUR", 50),
        ("500", "JPY", 500),
        ("1.234", "KWD", 1234),
        ("92233720368547758.07", "USD", MAX_AMOUNT_MINOR),
    ],
)
def test_parse(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "reason"),
    [
        ("12.345", "USD", "INVALID_AMOUNT"),
        ("0.5", "JPY", "INVALID_AMOUNT"),
        ("0", "USD", "INVALID_AMOUNT"),
        ("-1.00", "USD", "INVALID_AMOUNT"),
        ("92233720368547758.08", "USD", "INVALID_AMOUNT"),
        ("NaN", "USD", "INVALID_AMOUNT"),
        ("Infinity", "USD", "INVALID_AMOUNT"),
        ("1e3x", "USD", "INVALID_AMOUNT"),
        ("1e3", "USD", "INVALID_AMOUNT"),
        ("1_000", "USD", "INVALID_AMOUNT"),
        ("+5", "USD", "INVALID_AMOUNT"),
        ("1.00", "XYZ", "INVALID_CURRENCY"),
        ("1.00", "usd", "INVALID_CURRENCY"),
    ],
)
def test_parse_refuses(text: str, currency: str, reason: str) -> None:
    with pytest.raises(MoneyError) as caught:
        parse_amount(text, currency)
    assert caught.value.reason == reason


def test_money_refuses_floats_and_bools() -> None:
    with pytest.raises(MoneyError):
        # Wrong types on purpose: what an untyped caller may pass is refused at run time.
        Money(12.5, "USD")  # type: ignore[arg-type]
    with pytest.raises(MoneyError):
        check_amount(True)
    assert str(Money(-1234, "USD")) == "-12.34 USD"
    assert str(Money(7, "JPY")) == "7 JPY"


@given(
    st.integers(min_value=1, max_value=MAX_AMOUNT_MINOR),
    st.sampled_from(sorted(CURRENCY_EXPONENTS)),
)
def test_format_parse_round_trip(minor: int, currency: str) -> None:
    assert parse_amount(format_amount(minor, currency), currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "largest"),
    [
        ("92233720368547758.08", "USD", "92,233,720,368,547,758.07 USD"),
        ("9223372036854775808", "JPY", "9,223,372,036,854,775,807 JPY"),
        ("9223372036854775.808", "KWD", "9,223,372,036,854,775.807 KWD"),
    ],
)
def test_a_too_large_amount_is_refused_with_the_largest_in_its_currency(
    text: str, currency: str, largest: str
) -> None:
    with pytest.raises(MoneyError) as refused:
        parse_amount(text, currency)
    assert str(refused.value) == f"amount is too large: the largest amount is {largest}"
    assert "int64" not in str(refused.value)


def test_without_a_currency_the_largest_amount_is_said_in_minor_units() -> None:
    with pytest.raises(MoneyError, match=r"largest amount is 9,223,372,036,854,775,807 minor"):
        check_amount(MAX_AMOUNT_MINOR + 1)
