"""Money as exact integers: minor units plus an ISO 4217 currency.

Amounts typed by people ("12.34") become minor units through `Decimal`, never
through `float`, using each currency's exponent; anything that would round is
refused instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

MAX_AMOUNT_MINOR = 2**63 - 1

# ISO 4217 minor-unit exponents of the currencies Strife accepts.
CURRENCY_EXPONENTS: dict[str, int] = {
    "AUD": 2,
    "BHD": 3,
    "BRL": 2,
    "CAD": 2,
    "CHF": 2,
    "CLP": 0,
    "CNY": 2,
    "CZK": 2,
    "DKK": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "HUF": 2,
    "INR": 2,
    "ISK": 0,
    "JOD": 3,
    "JPY": 0,
    "KRW": 0,
    "KWD": 3,
    "MXN": 2,
    "NOK": 2,
    "NZD": 2,
    "OMR": 3,
    "PLN": 2,
    "SEK": 2,
    "SGD": 2,
    "TND": 3,
    "TRY": 2,
    "USD": 2,
    "VND": 0,
    "ZAR": 2,
}


class MoneyError(ValueError):
    """Bad amount or currency; `reason` is the ErrorInfo reason to send."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_currency(currency: str) -> str:
    if currency not in CURRENCY_EXPONENTS:
        raise MoneyError("INVALID_CURRENCY", f"unsupported currency {currency!r}")
    return currency


def check_amount(amount_minor: int, currency: str | None = None) -> int:
    """A payable amount: positive and at most MAX_AMOUNT_MINOR minor units.

    With the currency, a refusal names the largest amount in it.
    """
    if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
        raise MoneyError("INVALID_AMOUNT", "amount must be an integer number of minor units")
    if amount_minor <= 0:
        raise MoneyError("INVALID_AMOUNT", "amount must be positive")
    if amount_minor > MAX_AMOUNT_MINOR:
        raise MoneyError("INVALID_AMOUNT", f"amount is too large: {largest_amount_text(currency)}")
    return amount_minor


def largest_amount_text(currency: str | None = None) -> str:
    """The largest amount Strife moves, as a person reads it."""
    if currency in CURRENCY_EXPONENTS:
        assert currency is not None
        exponent = CURRENCY_EXPONENTS[currency]
        whole, frac = divmod(MAX_AMOUNT_MINOR, 10**exponent)
        decimals = f".{frac:0{exponent}d}" if exponent else ""
        return f"the largest amount is {whole:,}{decimals} {currency}"
    whole, frac = divmod(MAX_AMOUNT_MINOR, 100)
    return (
        f"the largest amount is {MAX_AMOUNT_MINOR:,} minor units"
        f" ({whole:,}.{frac:02d} in a currency with cents)"
    )


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        check_currency(self.currency)
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise MoneyError("INVALID_AMOUNT", "amount must be an integer number of minor units")

    @classmethod
    def parse(cls, text: str, currency: str) -> Money:
        return cls(parse_amount(text, currency), currency)

    def __str__(self) -> str:
        return f"{format_amount(self.amount_minor, self.currency)} {self.currency}"


# Plain decimal text only: `Decimal` would also take "1e3", "NaN" or "1_000",
# which a person typing an amount almost never means.
_PLAIN_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def parse_amount(text: str, currency: str, *, allow_zero: bool = False) -> int:
    """Plain decimal text ("12.34") to minor units, refusing anything that would round.

    Signs, exponents, underscores, NaN and infinities are refused, and so is
    anything with more decimals than the currency has ("12.345" USD). Zero is
    refused too, unless `allow_zero` (an opening balance, not a payment).
    """
    exponent = CURRENCY_EXPONENTS[check_currency(currency)]
    cleaned = text.strip()
    if not _PLAIN_DECIMAL.fullmatch(cleaned):
        raise MoneyError(
            "INVALID_AMOUNT", f"not a plain positive decimal amount: {text!r} (write it like 12.34)"
        )
    try:
        value = Decimal(cleaned)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise MoneyError("INVALID_AMOUNT", f"not a decimal amount: {text!r}") from None
    minor = value.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise MoneyError(
            "INVALID_AMOUNT", f"{currency} has {exponent} decimal places; {text!r} has more"
        )
    if allow_zero and minor == 0:
        return 0
    return check_amount(int(minor), currency)


def format_amount(amount_minor: int, currency: str) -> str:
    """Minor units to decimal text with the currency's exponent ("-12.34")."""
    exponent = CURRENCY_EXPONENTS[check_currency(currency)]
    sign = "-" if amount_minor < 0 else ""
    whole, frac = divmod(abs(amount_minor), 10**exponent)
    return f"{sign}{whole}.{frac:0{exponent}d}" if exponent else f"{sign}{whole}"
