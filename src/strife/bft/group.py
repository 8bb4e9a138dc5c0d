"""A replica group's configuration file: who the replicas are, where, and their keys.

One TOML file, the same at every replica and every client of the group:

    bank = "vault"                 # the bank the group replicates
    checkpoint_interval = 16       # PBFT's tunables (strife.bft.config.Config)
    window = 64
    batch_size = 16
    max_in_flight = 1
    timeout_s = 1.0
    state_chunk_bytes = 1048576    # optional: a snapshot travels in chunks of this size

    [[replica]]                    # replica i is the i-th entry
    name = "vault-0"               # its certificate's name: spiffe://<td>/bank/vault-0
    address = "127.0.0.1:7301"
    public_key = "<Ed25519, 32 bytes hex>"

    [[client]]
    identity = "gateway/gw-1"      # a certificate's role/name
    public_key = "<Ed25519, 32 bytes hex>"

A replica's protocol identity (`replica-<i>`) is bound to its certificate in
two places: its messages verify only under the public key listed beside its
name, and a replica believes a message's claimed sender only when the mTLS peer
that delivered it has that replica's certificate. A client signs with its own
key; its requests name it as `<identity>#<lane>` (a lane is one outstanding
request, the paper's client), and only the peer holding that identity's
certificate may deliver them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from strife.bft.config import Config
from strife.bft.signing import Ed25519Signer, Ed25519Verifier, replica_identity

__all__ = [
    "ClientEntry",
    "Group",
    "GroupError",
    "ReplicaEntry",
    "client_base",
    "lane_identity",
    "load_signing_key",
    "public_hex",
    "write_signing_key",
]

LANE_SEPARATOR = "#"


class GroupError(ValueError):
    """A group file that does not describe a usable group."""


@dataclass(frozen=True)
class ReplicaEntry:
    name: str
    address: str
    public_key: bytes


@dataclass(frozen=True)
class ClientEntry:
    identity: str
    """`role/name` of the client's certificate."""
    public_key: bytes


@dataclass(frozen=True)
class Group:
    bank: str
    config: Config
    replicas: tuple[ReplicaEntry, ...]
    clients: tuple[ClientEntry, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.replicas) != self.config.n:
            raise GroupError(f"{len(self.replicas)} replicas listed, config says {self.config.n}")
        names = [r.name for r in self.replicas]
        if len(set(names)) != len(names):
            raise GroupError("replica names must be distinct")

    @property
    def f(self) -> int:
        return self.config.f

    def index_of(self, name: str) -> int | None:
        """The replica whose certificate carries `name`, if any."""
        for i, entry in enumerate(self.replicas):
            if entry.name == name:
                return i
        return None

    def verifier(self) -> Ed25519Verifier:
        """Every replica's key under `replica-<i>` (and as a client, `bank/<name>`),
        every client's under its identity."""
        keys: dict[str, Ed25519PublicKey] = {
            replica_identity(i): Ed25519PublicKey.from_public_bytes(r.public_key)
            for i, r in enumerate(self.replicas)
        }
        for client in self.clients:
            keys[client.identity] = Ed25519PublicKey.from_public_bytes(client.public_key)
        # A replica is also a client of its own group (its resolver's votes), with its key.
        for r in self.replicas:
            keys[f"bank/{r.name}"] = Ed25519PublicKey.from_public_bytes(r.public_key)
        return LaneVerifier(keys)

    @classmethod
    def load(cls, path: str | Path) -> Group:
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise GroupError(f"{path}: {exc}") from None
        return cls.from_mapping(raw, str(path))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], where: str = "group") -> Group:
        try:
            replicas = tuple(
                ReplicaEntry(str(r["name"]), str(r["address"]), bytes.fromhex(str(r["public_key"])))
                for r in _entries(raw, "replica")
            )
            clients = tuple(
                ClientEntry(str(c["identity"]), bytes.fromhex(str(c["public_key"])))
                for c in _entries(raw, "client")
            )
            config = Config(
                n=len(replicas),
                checkpoint_interval=_int(raw, "checkpoint_interval", 16),
                window=_int(raw, "window", 64),
                batch_size=_int(raw, "batch_size", 16),
                max_in_flight=_int(raw, "max_in_flight", 1),
                timeout=float(_number(raw, "timeout_s", 1.0)),
                state_chunk_bytes=_int(raw, "state_chunk_bytes", Config.state_chunk_bytes),
            )
            return cls(str(raw["bank"]), config, replicas, clients)
        except (KeyError, TypeError, ValueError) as exc:
            raise GroupError(f"{where}: {exc}") from None

    def to_toml(self) -> str:
        c = self.config
        lines = [
            f'bank = "{self.bank}"',
            f"checkpoint_interval = {c.checkpoint_interval}",
            f"window = {c.window}",
            f"batch_size = {c.batch_size}",
            f"max_in_flight = {c.max_in_flight}",
            f"timeout_s = {c.timeout}",
        ]
        if c.state_chunk_bytes != Config.state_chunk_bytes:
            lines.append(f"state_chunk_bytes = {c.state_chunk_bytes}")
        for r in self.replicas:
            lines += [
                "",
                "[[replica]]",
                f'name = "{r.name}"',
                f'address = "{r.address}"',
                f'public_key = "{r.public_key.hex()}"',
            ]
        for client in self.clients:
            lines += [
                "",
                "[[client]]",
                f'identity = "{client.identity}"',
                f'public_key = "{client.public_key.hex()}"',
            ]
        return "\n".join(lines) + "\n"


class LaneVerifier(Ed25519Verifier):
    """An Ed25519 verifier that checks a client lane (`identity#k`) under its identity's key."""

    def verify(self, identity: str, payload: bytes, signature: bytes) -> bool:
        return super().verify(client_base(identity), payload, signature)


def client_base(identity: str) -> str:
    """The certificate identity a (lane) client id belongs to."""
    return identity.split(LANE_SEPARATOR, 1)[0]


def lane_identity(identity: str, lane: int) -> str:
    return f"{identity}{LANE_SEPARATOR}{lane}"


def public_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def write_signing_key(path: Path, key: Ed25519PrivateKey | None = None) -> Ed25519PrivateKey:
    """Write a (new) Ed25519 signing key as PKCS#8 PEM, readable by its owner only."""
    key = key or Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(pem)
    return key


def load_signing_key(path: Path, identity: str) -> Ed25519Signer:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise GroupError(f"{path}: not an Ed25519 private key")
    return Ed25519Signer(identity, key)


def _entries(raw: Mapping[str, object], key: str) -> Sequence[Mapping[str, object]]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise GroupError(f"[[{key}]] must be a list of tables")
    return value


def _int(raw: Mapping[str, object], key: str, default: int) -> int:
    value = raw.get(key, default)
    if type(value) is not int:
        raise GroupError(f"{key} must be an integer")
    return value


def _number(raw: Mapping[str, object], key: str, default: float) -> float:
    value = raw.get(key, default)
    if type(value) not in (int, float):
        raise GroupError(f"{key} must be a number")
    return float(value)  # type: ignore[arg-type]
