"""Which processes to watch and where each serves /metrics.

A local cluster lists its children and their metrics addresses in its state
file (`cluster.json`, written by `strife cluster up`). Anywhere else (other
hosts, a Kubernetes port-forward) the addresses are given as NAME=HOST:PORT.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strife.security.certs import SERVICE_ROLES

# What `strife cluster up` writes in its data folder (strife.cluster.supervisor).
STATE_FILE = "cluster.json"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    metrics: str  # HOST:PORT
    role: str = ""  # "" until a scrape shows which metrics it serves
    pid: int = 0
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.metrics}/metrics"


class NoTargets(Exception):
    """Nothing to watch: no cluster running there, or none of it serves /metrics."""


def role_of_name(name: str) -> str:
    """`gateway-gw-1` is a gateway, `bank-east` a bank: the supervisor's names."""
    role = name.partition("-")[0]
    return role if role in SERVICE_ROLES else ""


def _read_state(root: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def from_cluster_state(root: Path) -> list[Target]:
    state = _read_state(root)
    if state is None:
        raise NoTargets(f"no cluster running from {root} (`strife cluster up` writes cluster.json)")
    children = state.get("children", [])
    targets = [
        Target(
            name=str(child["name"]),
            metrics=str(child["metrics"]),
            role=role_of_name(str(child["name"])),
            pid=int(child.get("pid", 0)),
            restarts=int(child.get("restarts", 0)),
        )
        for child in children
        if child.get("metrics")
    ]
    if not targets:
        raise NoTargets(
            f"the cluster running from {root} lists no /metrics addresses"
            " (started by an older strife?); give them with --target NAME=HOST:PORT"
        )
    return targets


def from_options(values: Iterable[str]) -> list[Target]:
    """Repeated NAME=HOST:PORT (or bare HOST:PORT, named after itself)."""
    targets = []
    for value in values:
        name, sep, address = value.rpartition("=")
        if not sep:
            name, address = value, value
        if not name or ":" not in address:
            raise ValueError(f"expected NAME=HOST:PORT, got {value!r}")
        targets.append(Target(name=name, metrics=address, role=role_of_name(name)))
    return targets
