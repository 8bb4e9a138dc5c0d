"""Generated seed data for local clusters: a few customers per bank.

Usernames are `<bank>-<n>` (alpha-1, alpha-2, ...), each with one USD
account `<bank>-<n>-usd` holding 1,000.00, and the development password
`pw-<username>`. For local clusters and demos only.
"""

from __future__ import annotations

import json
from pathlib import Path

from strife.cluster.topology import Topology

OPENING_BALANCE = "1000.00"


def username(bank: str, n: int) -> str:
    return f"{bank}-{n}"


def account_of(user: str) -> str:
    return f"{user}-usd"


def password_of(user: str) -> str:
    return f"pw-{user}"


def generated_rows(bank: str, customers: int) -> list[dict[str, str]]:
    rows = []
    for n in range(1, customers + 1):
        user = username(bank, n)
        rows.append(
            {
                "bank": bank,
                "customer_id": f"c-{user}",
                "username": user,
                "display_name": user.replace("-", " ").title(),
                "password": password_of(user),
                "account_id": account_of(user),
                "currency": "USD",
                "opening_balance": OPENING_BALANCE,
            }
        )
    return rows


def seed_file(topology: Topology, bank: str) -> Path:
    """The bank's seed: its own file if the topology names one, else a generated one."""
    spec = next(b for b in topology.banks if b.name == bank)
    if spec.seed is not None:
        return spec.seed
    path = topology.data_dir / "seeds" / f"{bank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(generated_rows(bank, spec.customers), indent=1))
    return path
