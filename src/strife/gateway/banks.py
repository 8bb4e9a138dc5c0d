"""Where the banks are: a name -> address directory and their stubs.

One server may host several banks, so several names may share an address;
each request names its bank in its `bank` field.

Static (`--bank NAME=HOST:PORT`) for now; the balancer-backed directory
resolves the same names through the registry. A replicated bank (`--bank
NAME=bft:GROUP.toml`) has no one address: its calls go to its f + 1 client
(`strife.bft.bank_client.ReplicatedBank`), found under the pseudo-address
`bft:NAME`, which is also what batches and circuit breakers are keyed by.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from strife.errors import Reason, StrifeError
from strife.rpc.channels import ChannelPool, Peer
from strife.rpc.discovery import BalancerClient
from strife.v1 import bank_pb2_grpc

REPLICATED = "bft:"
"""The prefix of a replicated bank's pseudo-address (and of its `--bank` value)."""


class BankDirectory(Protocol):
    async def address(self, bank: str) -> str | None: ...

    async def knows(self, bank: str) -> bool:
        """False only when `bank` is surely no bank of this deployment."""
        ...


class StaticDirectory:
    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = dict(addresses)

    async def address(self, bank: str) -> str | None:
        return self._addresses.get(bank)

    async def knows(self, bank: str) -> bool:
        return bank in self._addresses


class RegistryDirectory:
    """Banks by name through the balancer (cached there), after any static entries."""

    def __init__(self, client: BalancerClient, static: dict[str, str] | None = None) -> None:
        self._client = client
        self._static = dict(static or {})

        # Names that resolved once: a bank that is down (and evicted from the
        # registry) is still a bank, and a payment to it is only delayed.
        self._seen: set[str] = set(self._static)

    async def address(self, bank: str) -> str | None:
        if bank in self._static:
            return self._static[bank]
        try:
            address = await self._client.resolve("bank", bank)
        except StrifeError:
            return None
        self._seen.add(bank)
        return address

    async def knows(self, bank: str) -> bool:
        """Unknown means: never seen by this process, and the registry, when
        reachable, has no instance of that name either."""
        if bank in self._seen:
            return True
        try:
            await self._client.resolve("bank", bank)
        except StrifeError as error:
            return error.reason != Reason.NO_INSTANCE
        self._seen.add(bank)
        return True


class BankServers(Protocol):
    """What a coordinator needs of the banks: where each one is served, and
    the stub (plain or replicated) for a server's address."""

    async def address(self, bank: str) -> str | None: ...

    def at(self, address: str) -> Any: ...


class Banks:
    """Stubs per bank server over the process's long-lived channels.

    Several banks may share one server (one address): the address is what the
    coordinator batches by, so it can ask for it (`address`) and for the stub
    at it (`at`) separately; `stub` is both in one step.
    """

    def __init__(
        self,
        directory: BankDirectory,
        pool: ChannelPool,
        replicated: Mapping[str, Any] | None = None,
    ) -> None:
        self._directory = directory
        self._pool = pool
        # Replicated banks' stub-shaped clients, by their pseudo-address.
        self._replicated = {REPLICATED + bank: stub for bank, stub in (replicated or {}).items()}
        # A stub builds eight multicallables; one per address, not one per call.
        self._stubs: dict[str, Any] = {}
        # The bank each address was first resolved for: its channel must reach
        # a certificate for that bank (its own, or its host's serving it).
        self._named: dict[str, str] = {}

    async def address(self, bank: str) -> str | None:
        """The address of the server hosting `bank` (the directory caches it)."""
        if REPLICATED + bank in self._replicated:
            return REPLICATED + bank
        address = await self._directory.address(bank)
        if address is not None:
            self._named.setdefault(address, bank)
        return address

    def at(self, address: str) -> Any:
        """The stub for the bank server at `address`; every call names its bank."""
        stub = self._stubs.get(address) or self._replicated.get(address)
        if stub is None:
            peer = Peer("bank", self._named.get(address))
            stub = bank_pb2_grpc.BankServiceStub(self._pool.get(address, peer))
            self._stubs[address] = stub
        return stub

    async def exists(self, bank: str) -> bool:
        return REPLICATED + bank in self._replicated or await self._directory.knows(bank)

    async def stub(self, bank: str) -> Any | None:
        replicated = self._replicated.get(REPLICATED + bank)
        if replicated is not None:
            return replicated
        address = await self._directory.address(bank)
        return None if address is None else self.at(address)
