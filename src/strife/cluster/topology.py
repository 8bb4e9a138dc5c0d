"""A local cluster's shape, from a TOML file or the embedded default.

```toml
data_dir = ".strife/cluster"      # relative to the file
policy = "round_robin"
[balancer]
listen = "127.0.0.1:7400"         # fixed: everyone finds everyone through it
[[banks]]
name = "alpha"
seed = "seed.json"                # optional; default: generated customers
customers = 3                     # generated customers when no seed is given
host = "east"                     # optional: banks with the same host share one process
[[replicated_banks]]               # optional: a bank run by 3f + 1 PBFT replicas
name = "vault"
replicas = 4
customers = 3                     # or: seed = "vault.json"
byzantine = { 1 = "wrong-results" }   # optional: a replica that misbehaves on purpose
[gateways]
count = 2                         # or: names = ["gw-1", "gw-2"]
[timeouts]
prepare_s = 2.0
in_doubt_s = 5.0
heartbeat_s = 1.0
lease_ttl_s = 3.0
```
Banks and gateways listen on ephemeral ports and register with the balancer;
the supervisor keeps each child's port across restarts. A bank without a
`host` gets its own process (`bank-<name>`); banks naming the same host share
one (`bank-<host>`), each still with its own database (docs/bank.md). A
replicated bank is a group of `strife-bank-replica` processes on fixed
loopback ports (`bank-<name>-<i>`), which gateways reach through its f + 1
client rather than the balancer (docs/bft.md).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DEFAULT_BALANCER = "127.0.0.1:7400"
POLICIES = ("pick_first", "round_robin", "least_load", "power_of_two")


@dataclass(frozen=True)
class BankSpec:
    name: str
    seed: Path | None = None
    customers: int = 3
    host: str | None = None


@dataclass(frozen=True)
class ReplicatedBankSpec:
    name: str
    replicas: int = 4
    seed: Path | None = None
    customers: int = 3
    byzantine: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class Timeouts:
    prepare_s: float = 2.0
    in_doubt_s: float = 5.0
    heartbeat_s: float = 1.0
    lease_ttl_s: float = 3.0


@dataclass(frozen=True)
class Topology:
    data_dir: Path
    balancer_listen: str = DEFAULT_BALANCER
    policy: str = "round_robin"
    banks: tuple[BankSpec, ...] = ()
    gateways: tuple[str, ...] = ("gw-1", "gw-2")
    timeouts: Timeouts = field(default_factory=Timeouts)
    replicated: tuple[ReplicatedBankSpec, ...] = ()

    def with_data_dir(self, data_dir: Path) -> Topology:
        return replace(self, data_dir=data_dir)

    def bank_processes(self) -> dict[str, tuple[str, ...]]:
        """Process name (`alpha`, or a host's name) -> the banks it serves, in file order."""
        processes: dict[str, tuple[str, ...]] = {}
        for bank in self.banks:
            process = bank.host or bank.name
            processes[process] = (*processes.get(process, ()), bank.name)
        return processes


class TopologyError(ValueError):
    pass


def default_topology(data_dir: Path = Path(".strife/cluster")) -> Topology:
    """1 balancer, 3 banks with seeded customers, 2 gateways."""
    return Topology(
        data_dir=data_dir,
        banks=(BankSpec("alpha"), BankSpec("beta"), BankSpec("gamma")),
    )


def load_topology(path: Path) -> Topology:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TopologyError(f"{path}: {exc}") from exc
    return parse_topology(raw, base=path.parent)


def parse_topology(raw: dict[str, Any], base: Path) -> Topology:
    policy = str(raw.get("policy", "round_robin"))
    if policy not in POLICIES:
        raise TopologyError(f"policy must be one of {', '.join(POLICIES)}")
    banks = []
    for entry in raw.get("banks", []):
        if "name" not in entry:
            raise TopologyError("every [[banks]] entry needs a name")
        seed = entry.get("seed")
        banks.append(
            BankSpec(
                name=str(entry["name"]),
                seed=(base / seed) if seed else None,
                customers=int(entry.get("customers", 3)),
                host=str(entry["host"]) if entry.get("host") else None,
            )
        )
    if not banks:
        raise TopologyError("a topology needs at least one bank")
    if len({b.name for b in banks}) != len(banks):
        raise TopologyError("bank names must be unique")
    if clash := {b.host for b in banks if b.host} & {b.name for b in banks}:
        raise TopologyError(f"a host may not be named like a bank: {', '.join(sorted(clash))}")
    replicated = tuple(_replicated(entry, base) for entry in raw.get("replicated_banks", []))
    if clash := {r.name for r in replicated} & ({b.name for b in banks} | {b.host for b in banks}):
        raise TopologyError(f"a replicated bank is named like a bank: {', '.join(sorted(clash))}")
    if len({r.name for r in replicated}) != len(replicated):
        raise TopologyError("replicated bank names must be unique")
    gw = raw.get("gateways", {})
    names = gw.get("names") or [f"gw-{i + 1}" for i in range(int(gw.get("count", 2)))]
    if not names:
        raise TopologyError("a topology needs at least one gateway")
    t = raw.get("timeouts", {})
    timeouts = Timeouts(
        prepare_s=float(t.get("prepare_s", 2.0)),
        in_doubt_s=float(t.get("in_doubt_s", 5.0)),
        heartbeat_s=float(t.get("heartbeat_s", 1.0)),
        lease_ttl_s=float(t.get("lease_ttl_s", 3.0)),
    )
    return Topology(
        data_dir=base / str(raw.get("data_dir", ".strife/cluster")),
        balancer_listen=str(raw.get("balancer", {}).get("listen", DEFAULT_BALANCER)),
        policy=policy,
        banks=tuple(banks),
        gateways=tuple(str(n) for n in names),
        timeouts=timeouts,
        replicated=replicated,
    )


def _replicated(entry: dict[str, Any], base: Path) -> ReplicatedBankSpec:
    if "name" not in entry:
        raise TopologyError("every [[replicated_banks]] entry needs a name")
    replicas = int(entry.get("replicas", 4))
    if replicas < 4 or (replicas - 1) % 3:
        raise TopologyError(f"replicas must be 3f + 1 >= 4, not {replicas}")
    byzantine = tuple(sorted((int(i), str(b)) for i, b in entry.get("byzantine", {}).items()))
    if any(not 0 <= i < replicas for i, _ in byzantine):
        raise TopologyError("byzantine names replicas by index, 0..replicas-1")
    seed = entry.get("seed")
    return ReplicatedBankSpec(
        name=str(entry["name"]),
        replicas=replicas,
        seed=(base / seed) if seed else None,
        customers=int(entry.get("customers", 3)),
        byzantine=byzantine,
    )
