"""Seed data: customers and accounts with opening balances, from CSV or JSON.

One row per account, with the columns
`bank, customer_id, username, display_name, password, account_id, currency,
opening_balance`. `opening_balance` is plain decimal text in the currency's
units ("1000.00", never "1e3"); `password` is plain text (hashed on load) or already a scrypt hash.
JSON is either a list of such objects or `{"accounts": [...]}`. A bank loads
only its own rows.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strife.money import MoneyError, parse_amount

COLUMNS = (
    "bank",
    "customer_id",
    "username",
    "display_name",
    "password",
    "account_id",
    "currency",
    "opening_balance",
)


class SeedError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class SeedRow:
    bank: str
    customer_id: str
    username: str
    display_name: str
    password: str
    account_id: str
    currency: str
    opening_balance_minor: int


def opening_minor(text: str, currency: str) -> int:
    """Decimal text to minor units by the rules every typed amount follows
    (`money.parse_amount`: no exponents, signs or rounding); zero is a valid
    opening balance."""
    try:
        return parse_amount(text, currency, allow_zero=True)
    except MoneyError as exc:
        raise SeedError(f"opening balance {text!r}: {exc}") from None


def _row(raw: dict[str, Any], where: str) -> SeedRow:
    missing = [c for c in COLUMNS if c != "display_name" and not str(raw.get(c, "")).strip()]
    if missing:
        raise SeedError(f"{where}: missing {', '.join(missing)}")
    currency = str(raw["currency"]).strip().upper()
    return SeedRow(
        bank=str(raw["bank"]).strip(),
        customer_id=str(raw["customer_id"]).strip(),
        username=str(raw["username"]).strip(),
        display_name=str(raw.get("display_name") or raw["username"]).strip(),
        password=str(raw["password"]),
        account_id=str(raw["account_id"]).strip(),
        currency=currency,
        opening_balance_minor=opening_minor(str(raw["opening_balance"]), currency),
    )


def load_seed(path: str | Path, bank: str | None = None) -> list[SeedRow]:
    """Rows of the seed file, only `bank`'s when given; raises SeedError if malformed."""
    source = Path(path)
    if source.suffix.lower() == ".csv":
        with source.open(newline="") as handle:
            raw_rows: list[dict[str, Any]] = list(csv.DictReader(handle))
    else:
        data = json.loads(source.read_text())
        raw_rows = data["accounts"] if isinstance(data, dict) else data
    rows = [_row(raw, f"{source.name} row {i + 1}") for i, raw in enumerate(raw_rows)]
    if bank is not None:
        rows = [row for row in rows if row.bank == bank]
    usernames: dict[str, str] = {}
    accounts: set[tuple[str, str]] = set()
    for row in rows:
        if usernames.setdefault(row.username, row.customer_id) != row.customer_id:
            raise SeedError(f"username {row.username!r} names two customers")
        if (row.bank, row.account_id) in accounts:
            raise SeedError(f"account {row.bank}/{row.account_id} listed twice")
        accounts.add((row.bank, row.account_id))
    return rows
