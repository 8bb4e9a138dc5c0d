"""A replicated bank of real `strife-bank-replica` processes, and clients for it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.bft.bank_client import ReplicatedBank
from strife.bft.config import Config
from strife.bft.group import ClientEntry, Group, ReplicaEntry, public_hex, write_signing_key
from strife.bft.invoker import Invoker
from strife.bft.node import STATUS
from strife.rpc.addresses import free_port
from strife.rpc.channels import ChannelPool, Peer

from ..conftest import Pki
from ..processes import ServiceProcess

BANK = "vault"
SEED = [
    (BANK, "c-ann", "ann", "Ann", "pw-ann", "ann-usd", "USD", "1000.00"),
    (BANK, "c-ben", "ben", "Ben", "pw-ben", "ben-usd", "USD", "500.00"),
    (BANK, "c-cat", "cat", "Cat", "pw-cat", "cat-usd", "USD", "0"),
]
COLUMNS = ("bank", "customer_id", "username", "display_name", "password", "account_id",
           "currency", "opening_balance")  # fmt: skip
TOTAL_MINOR = 150_000
CLIENTS = ("admin/tester", "gateway/gw-1", "gateway/gw-2")


@dataclass
class ReplicaGroup:
    """n replica processes of one bank; each started, restarted or stopped on its own."""

    group: Group
    root: Path
    pki: Pki
    processes: dict[int, ServiceProcess] = field(default_factory=dict)
    client_keys: dict[str, Ed25519PrivateKey] = field(default_factory=dict)

    @property
    def group_file(self) -> Path:
        return self.root / "group.toml"

    extra: list[str] = field(default_factory=list)
    """Arguments every replica gets (e.g. --coordinator)."""

    def start(self, index: int, byzantine: str | None = None) -> ServiceProcess:
        name = self.group.replicas[index].name
        args = [
            "--group", str(self.group_file), "--replica", name,
            "--signing-key", str(self.root / f"{name}.key"),
            "--db", str(self.root / f"{name}.db"), "--seed", str(self.root / "seed.json"),
            "--certs", str(self.pki.identity("bank", name)), "--synchronous", "NORMAL",
            "--grace", "0.5",
        ]  # fmt: skip
        if byzantine:
            args += ["--byzantine", byzantine]
        args += self.extra
        process = ServiceProcess("strife-bank-replica", args, self.root / f"{name}.log")
        self.processes[index] = process.start()
        return process

    def stop(self, index: int) -> None:
        process = self.processes.pop(index, None)
        if process is not None:
            process.stop()

    def stop_all(self) -> None:
        for index in list(self.processes):
            self.stop(index)

    def pool(self, role: str = "gateway", name: str = "gw-1") -> ChannelPool:
        return ChannelPool(self.pki.identity(role, name))

    def bank(self, pool: ChannelPool, identity: str = "gateway/gw-1") -> ReplicatedBank:
        """The f + 1 client as `identity`, whose certificate `pool` must hold."""
        invoker = Invoker(self.group, identity, self.client_keys[identity], pool, retry_s=1.0)
        return ReplicatedBank(invoker)

    async def status(self, pool: ChannelPool, index: int) -> dict[str, Any]:
        entry = self.group.replicas[index]
        call: Any = pool.get(entry.address, Peer("bank", entry.name)).unary_unary(STATUS)
        status: dict[str, Any] = json.loads(await call(b"", timeout=5.0))
        return status


def make_group(pki: Pki, root: Path, n: int = 4, **tunables: Any) -> ReplicaGroup:
    """Keys, certificates, addresses, the group file and the seed, under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        name = f"{BANK}-{i}"
        key = write_signing_key(root / f"{name}.key")
        entries.append(
            ReplicaEntry(name, f"127.0.0.1:{free_port()}", bytes.fromhex(public_hex(key)))
        )
    client_keys = {identity: Ed25519PrivateKey.generate() for identity in CLIENTS}
    clients = tuple(
        ClientEntry(identity, bytes.fromhex(public_hex(key)))
        for identity, key in client_keys.items()
    )
    settings: Mapping[str, Any] = {
        "checkpoint_interval": 4, "window": 16, "batch_size": 8, "max_in_flight": 2,
        "timeout": 1.0, **tunables,
    }  # fmt: skip
    group = Group(BANK, Config(n=n, **settings), tuple(entries), clients)
    (root / "group.toml").write_text(group.to_toml())
    rows = [dict(zip(COLUMNS, row, strict=True)) for row in SEED]
    (root / "seed.json").write_text(json.dumps(rows))
    return ReplicaGroup(group, root, pki, client_keys=client_keys)


@contextmanager
def replica_group(
    pki: Pki,
    root: Path,
    byzantine: Mapping[int, str] | None = None,
    extra: Sequence[str] = (),
    **tunables: Any,
) -> Iterator[ReplicaGroup]:
    """A started group of four; every process is stopped when the block ends."""
    group = make_group(pki, root, **tunables)
    group.extra = list(extra)
    try:
        # Side by side: each start waits for its process's first log lines.
        with ThreadPoolExecutor(group.group.config.n) as starting:
            for started in [
                starting.submit(group.start, i, (byzantine or {}).get(i))
                for i in range(group.group.config.n)
            ]:
                started.result()
        yield group
    finally:
        group.stop_all()
