"""PBFT messages on the wire: the core's canonical JSON, and back.

A message travels as `{"kind": KIND, "message": <its canonical encoding>}`
(`messages._Encoded.encoded`, signature included), so what a replica receives
re-encodes to exactly the bytes its sender signed. Decoding is strict: every
field must have its declared JSON type (an int is never a bool or a float,
bytes are lowercase hex), nothing extra may be present, and a peer's bytes are
only ever parsed as JSON. Anything else is `WireError`, before the replica sees it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from strife.bft.messages import (
    Checkpoint,
    ClientRecord,
    Commit,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Reply,
    Request,
    StateReply,
    StateRequest,
    ViewChange,
)

__all__ = ["MAX_WIRE_BYTES", "WireError", "decode", "decode_records", "encode", "encode_records"]

MAX_WIRE_BYTES = 4 * 1024 * 1024
"""The transport's message bound; a larger encoding is refused before parsing."""
_MAX_ITEMS = 100_000


class WireError(ValueError):
    """Bytes that are not one well-formed PBFT message."""


def encode(message: Message) -> bytes:
    body = {"kind": message.KIND, "message": message.encoded}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes, limit: int = MAX_WIRE_BYTES) -> Message:
    """The message in `data`, refused unparsed when longer than `limit` (a client's
    request: the transport's default; a peer replica's: its group's bound)."""
    if len(data) > limit:
        raise WireError("message too large")
    try:
        body = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    if not isinstance(body, dict) or set(body) != {"kind", "message"}:
        raise WireError("expected {kind, message}")
    decoder = _BY_KIND.get(body["kind"]) if isinstance(body["kind"], str) else None
    if decoder is None:
        raise WireError(f"unknown kind {body['kind']!r}")
    message: Message = decoder(body["message"])
    return message


# -- field decoders -----------------------------------------------------------


def _int(value: Any) -> int:
    if type(value) is not int:
        raise WireError(f"expected an integer, not {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if type(value) is not str:
        raise WireError(f"expected a string, not {type(value).__name__}")
    return value


def _bytes(value: Any) -> bytes:
    text = _str(value)
    if text != text.lower():
        raise WireError("bytes must be lowercase hex")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise WireError("bytes must be hex") from None


def _tuple(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def decode_items(value: Any) -> tuple[Any, ...]:
        if type(value) is not list or len(value) > _MAX_ITEMS:
            raise WireError("expected a list")
        return tuple(item(v) for v in value)

    return decode_items


def _object(cls: type, fields: Mapping[str, Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def decode_object(value: Any) -> Any:
        if type(value) is not dict or set(value) != set(fields):
            raise WireError(f"{cls.__name__}: expected fields {sorted(fields)}")
        return cls(**{name: parse(value[name]) for name, parse in fields.items()})

    return decode_object


_request = _object(
    Request, {"client": _str, "timestamp": _int, "operation": _bytes, "signature": _bytes}
)
_agreement = {"view": _int, "seq": _int, "digest": _bytes, "replica": _int, "signature": _bytes}
_pre_prepare = _object(PrePrepare, {**_agreement, "batch": _tuple(_request)})
_prepare = _object(Prepare, _agreement)
_commit = _object(Commit, _agreement)
_reply = _object(
    Reply,
    {
        "view": _int, "timestamp": _int, "client": _str, "replica": _int,
        "result": _bytes, "signature": _bytes,
    },
)  # fmt: skip
_checkpoint = _object(
    Checkpoint, {"seq": _int, "state_digest": _bytes, "replica": _int, "signature": _bytes}
)
_prepared_cert = _object(PreparedCert, {"pre_prepare": _pre_prepare, "prepares": _tuple(_prepare)})
_view_change = _object(
    ViewChange,
    {
        "view": _int, "stable_seq": _int, "stable_digest": _bytes,
        "checkpoint_proof": _tuple(_checkpoint), "prepared": _tuple(_prepared_cert),
        "replica": _int, "signature": _bytes,
    },
)  # fmt: skip
_new_view = _object(
    NewView,
    {
        "view": _int, "view_changes": _tuple(_view_change),
        "pre_prepares": _tuple(_pre_prepare), "replica": _int, "signature": _bytes,
    },
)  # fmt: skip
_client_record = _object(ClientRecord, {"client": _str, "timestamp": _int, "result": _bytes})
_state_request = _object(
    StateRequest, {"seq": _int, "index": _int, "replica": _int, "signature": _bytes}
)
_state_reply = _object(
    StateReply,
    {
        "seq": _int, "index": _int, "chunks": _tuple(_bytes), "table_chunks": _int,
        "chunk": _bytes, "proof": _tuple(_checkpoint), "replica": _int, "signature": _bytes,
    },
)  # fmt: skip

_BY_KIND: dict[str, Callable[[Any], Any]] = {
    Request.KIND: _request,
    PrePrepare.KIND: _pre_prepare,
    Prepare.KIND: _prepare,
    Commit.KIND: _commit,
    Reply.KIND: _reply,
    Checkpoint.KIND: _checkpoint,
    ViewChange.KIND: _view_change,
    NewView.KIND: _new_view,
    StateRequest.KIND: _state_request,
    StateReply.KIND: _state_reply,
}


def encode_records(records: Sequence[ClientRecord]) -> bytes:
    """A reply table as bytes (what a state transfer sends ahead of the snapshot)."""
    rows = [
        {"client": r.client, "timestamp": r.timestamp, "result": r.result.hex()} for r in records
    ]
    return json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()


def decode_records(data: bytes) -> tuple[ClientRecord, ...]:
    try:
        rows = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"not JSON: {exc}") from None
    records: tuple[ClientRecord, ...] = _tuple(_client_record)(rows)
    return records


# Public for the journal, which stores requests and client records the same way.
decode_request = _request
decode_client_record = _client_record
decode_checkpoint = _checkpoint
