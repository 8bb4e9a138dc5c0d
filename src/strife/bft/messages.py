"""PBFT's messages and their one canonical encoding.

Every message is an immutable value. What a sender signs is `payload(message)`:
a domain prefix naming the protocol version and the message kind
(`strife-bft/v1/<kind>`), a newline, then the message's fields other than its
signature as sorted, compact JSON, with bytes as lowercase hex and nested
messages in full (signature included). The prefix keeps a signature on one
kind of message from ever verifying as another kind (a PREPARE as a COMMIT,
say), and the encoding is the same in every process and Python version, so a
signature made by one replica verifies at every other. Nothing here is
pickled: a peer's bytes are only ever parsed as JSON of ints, strings and lists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

__all__ = [
    "DOMAIN",
    "EMPTY_BATCH_DIGEST",
    "Checkpoint",
    "ClientRecord",
    "Commit",
    "Message",
    "NewView",
    "PrePrepare",
    "Prepare",
    "PreparedCert",
    "Reply",
    "Request",
    "StateReply",
    "StateRequest",
    "ViewChange",
    "batch_digest",
    "payload",
    "state_digest",
]

DOMAIN = b"strife-bft/v1/"


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _encode(value: object) -> object:
    """Ints and strings as they are, bytes as hex, tuples as lists, messages as objects."""
    kind = type(value)
    if kind is int or kind is str or value is None:
        return value
    if kind is bytes:
        return value.hex()  # type: ignore[attr-defined]
    if kind is tuple:
        return [_encode(item) for item in value]  # type: ignore[attr-defined]
    if isinstance(value, _Encoded):
        return value.encoded
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _encode(getattr(value, name)) for name in _names(kind)}
    raise TypeError(f"cannot encode {kind.__name__}")  # a bool, a float: never ours


_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _canonical(value: object) -> bytes:
    return _JSON.encode(value).encode()


class _Encoded:
    """Mix-in: a message's encoding, computed once (messages nest, and are immutable)."""

    @cached_property
    def encoded(self) -> dict[str, object]:
        return {name: _encode(getattr(self, name)) for name in _names(type(self))}


class _Signed(_Encoded):
    """Mix-in: the payload a message's sender signs, computed once per message."""

    KIND: ClassVar[str]
    signature: bytes

    @cached_property
    def payload(self) -> bytes:
        body = {
            name: _encode(getattr(self, name)) for name in _names(type(self)) if name != "signature"
        }
        return DOMAIN + self.KIND.encode() + b"\n" + _canonical(body)


def payload(message: Message) -> bytes:
    """The bytes `message`'s sender signs (everything but the signature)."""
    return message.payload


@dataclass(frozen=True)
class Request(_Signed):
    """A client's operation; `timestamp` grows with each of that client's requests."""

    KIND: ClassVar[str] = "request"
    client: str
    timestamp: int
    operation: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class PrePrepare(_Signed):
    """The primary's proposal: this batch at sequence number `seq` in `view`."""

    KIND: ClassVar[str] = "pre-prepare"
    view: int
    seq: int
    digest: bytes
    batch: tuple[Request, ...]
    replica: int
    signature: bytes = b""


@dataclass(frozen=True)
class Prepare(_Signed):
    KIND: ClassVar[str] = "prepare"
    view: int
    seq: int
    digest: bytes
    replica: int
    signature: bytes = b""


@dataclass(frozen=True)
class Commit(_Signed):
    KIND: ClassVar[str] = "commit"
    view: int
    seq: int
    digest: bytes
    replica: int
    signature: bytes = b""


@dataclass(frozen=True)
class Reply(_Signed):
    KIND: ClassVar[str] = "reply"
    view: int
    timestamp: int
    client: str
    replica: int
    result: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class Checkpoint(_Signed):
    """`replica` executed up to `seq` and its replicated state hashes to `state_digest`."""

    KIND: ClassVar[str] = "checkpoint"
    seq: int
    state_digest: bytes
    replica: int
    signature: bytes = b""


@dataclass(frozen=True)
class PreparedCert(_Encoded):
    """Proof that a batch prepared: its pre-prepare and 2f matching prepares from backups."""

    pre_prepare: PrePrepare
    prepares: tuple[Prepare, ...]

    @property
    def seq(self) -> int:
        return self.pre_prepare.seq

    @property
    def view(self) -> int:
        return self.pre_prepare.view


@dataclass(frozen=True)
class ViewChange(_Signed):
    """`replica` moves to `view`: its stable checkpoint (with proof) and what prepared above it."""

    KIND: ClassVar[str] = "view-change"
    view: int
    stable_seq: int
    stable_digest: bytes
    checkpoint_proof: tuple[Checkpoint, ...]
    prepared: tuple[PreparedCert, ...]
    replica: int
    signature: bytes = b""


@dataclass(frozen=True)
class NewView(_Signed):
    """The new primary's proof (2f+1 view-changes) and the pre-prepares it derived from them."""

    KIND: ClassVar[str] = "new-view"
    view: int
    view_changes: tuple[ViewChange, ...]
    pre_prepares: tuple[PrePrepare, ...]
    replica: int
    signature: bytes = b""


@dataclass(frozen=True)
class ClientRecord:
    """The last request executed for a client and its result: part of the replicated state."""

    client: str
    timestamp: int
    result: bytes


@dataclass(frozen=True)
class StateRequest(_Signed):
    """Ask for chunk `index` of the certified snapshot at `seq` (or a later one)."""

    KIND: ClassVar[str] = "state-request"
    seq: int
    index: int
    replica: int
    signature: bytes = b""


@dataclass(frozen=True)
class StateReply(_Signed):
    """Chunk `index` of the state at a stable checkpoint (its reply table in the first
    `table_chunks` chunks, then the application's snapshot), with the SHA-256 of
    every chunk and the 2f+1 checkpoints that certify the state. It travels in
    chunks so that no message outgrows what the wire carries, however large the
    state, and a replica fetches only the chunks it does not hold."""

    KIND: ClassVar[str] = "state-reply"
    seq: int
    index: int
    chunks: tuple[bytes, ...]
    table_chunks: int
    chunk: bytes
    proof: tuple[Checkpoint, ...]
    replica: int
    signature: bytes = b""


Message = (
    Request | PrePrepare | Prepare | Commit | Reply | Checkpoint | ViewChange | NewView
    | StateRequest | StateReply
)  # fmt: skip


def batch_digest(batch: tuple[Request, ...]) -> bytes:
    """The digest prepares and commits agree on: the whole batch, client signatures included."""
    return hashlib.sha256(DOMAIN + b"batch\n" + _canonical(_encode(batch))).digest()


EMPTY_BATCH_DIGEST = batch_digest(())
"""The null request a new view fills a gap in the sequence with."""


def state_digest(app_digest: bytes, clients: tuple[ClientRecord, ...]) -> bytes:
    """A checkpoint's digest: the application's state and the last reply to each client.

    The reply table is replicated state too: a replica that installs a snapshot
    must answer a retried request exactly as the others would.
    """
    table = tuple(sorted(clients, key=lambda record: record.client))
    return hashlib.sha256(DOMAIN + b"state\n" + app_digest + _canonical(_encode(table))).digest()
