"""A replicated bank in a local cluster (`[[replicated_banks]]` in a topology).

Everything a group needs that a plain bank does not, made once and kept (a
restarted cluster must find the same keys, or its journals' signed
checkpoints would no longer verify): under `<data_dir>/bft/<bank>/`, one
Ed25519 signing key per replica and the group file listing the public keys
and the replicas' fixed loopback addresses; under `<data_dir>/bft/keys/`, one
key per client identity, each gateway's and the admin's (the auditor, the
demo), shared by every group. A group file whose clients' keys no longer
match is written again. Certificates come from the
cluster's CA like every other identity (`bank-<bank>-<i>`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.bft.bank_client import ReplicatedBank, connect
from strife.bft.config import Config
from strife.bft.group import (
    ClientEntry,
    Group,
    ReplicaEntry,
    load_signing_key,
    write_signing_key,
)
from strife.rpc.addresses import free_port
from strife.rpc.channels import ChannelPool

__all__ = [
    "ADMIN",
    "GROUP_SETTINGS",
    "GroupPlan",
    "auditor_clients",
    "client_key",
    "gateway_key_args",
    "plan_group",
    "replica_names",
]

ADMIN = "admin/admin"
# One sequence number in flight: on a machine short of cores, fewer and fuller
# batches beat more and emptier ones (benchmarks/bench_bft.py); a checkpoint costs
# what changed since the last (benchmarks/bench_bft_checkpoint.py). A Kubernetes deployment's groups
# use the same (strife.deploy.replicated).
GROUP_SETTINGS: dict[str, int] = {
    "checkpoint_interval": 64,
    "window": 256,
    "batch_size": 16,
    "max_in_flight": 1,
}


def replica_names(bank: str, replicas: int) -> list[str]:
    return [f"{bank}-{i}" for i in range(replicas)]


@dataclass(frozen=True)
class GroupPlan:
    group_file: Path
    group: Group
    replica_keys: dict[str, Path]
    """Replica name -> its signing key file."""
    client_keys: dict[str, Path]
    """Client identity (`gateway/gw-1`, `admin/admin`) -> its signing key file."""

    def gateway_arg(self) -> str:
        """The gateway option naming this group (its key: `gateway_key_args`)."""
        return f"--bank={self.group.bank}=bft:{self.group_file}"


def client_key(root: Path, identity: str) -> Path:
    """A client identity's signing key (`gateway/gw-1`): one per identity, whatever
    the groups it talks to, since a gateway signs every request with one key."""
    return root / "keys" / f"{identity.replace('/', '-')}.key"


def gateway_key_args(root: Path, gateway: str, groups: Sequence[GroupPlan]) -> list[str]:
    """`--bft-signing-key` for a gateway of a cluster with replicated banks, or nothing."""
    return ["--bft-signing-key", str(client_key(root, f"gateway/{gateway}"))] if groups else []


def plan_group(
    root: Path,
    bank: str,
    replicas: int,
    gateways: Sequence[str],
    tunables: Mapping[str, int | float] | None = None,
) -> GroupPlan:
    """The group of `bank` under `root` (`<data_dir>/bft/<bank>`), made if missing."""
    folder = root / bank
    folder.mkdir(parents=True, exist_ok=True)
    group_file = folder / "group.toml"
    names = replica_names(bank, replicas)
    identities = [*(f"gateway/{g}" for g in gateways), ADMIN]
    replica_keys = {name: folder / f"{name}.key" for name in names}
    client_keys = {c: client_key(root, c) for c in identities}
    clients = tuple(ClientEntry(c, _public(_key(client_keys[c]))) for c in identities)
    if group_file.exists():
        group = Group.load(group_file)
        listed = {c.identity: c.public_key for c in group.clients}
        current = [r.name for r in group.replicas] == names
        if current and listed == {c.identity: c.public_key for c in clients}:
            return GroupPlan(group_file, group, replica_keys, client_keys)
    entries = tuple(
        ReplicaEntry(name, f"127.0.0.1:{free_port()}", _public(_key(replica_keys[name])))
        for name in names
    )
    config = Config(n=replicas, **{**GROUP_SETTINGS, **(tunables or {})})  # type: ignore[arg-type]
    group = Group(bank, config, entries, clients)
    group_file.write_text(group.to_toml())
    return GroupPlan(group_file, group, replica_keys, client_keys)


def auditor_clients(
    data_dir: Path, banks: Sequence[str], pool: ChannelPool
) -> dict[str, ReplicatedBank]:
    """The f + 1 client of each replicated bank of a cluster, as its admin identity
    (`pool` holds the admin certificate): how an auditor reads their books."""
    return {
        bank: connect(
            data_dir / "bft" / bank / "group.toml",
            ADMIN,
            client_key(data_dir / "bft", ADMIN),
            pool,
        )
        for bank in banks
    }


def write_seed(path: Path, rows: Sequence[Mapping[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(rows), indent=1))
    return path


def _key(path: Path) -> Ed25519PrivateKey:
    """The key at `path`, made if missing (kept across cluster restarts)."""
    if path.exists():
        return load_signing_key(path, "").key
    return write_signing_key(path)


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()
