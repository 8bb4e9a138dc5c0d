"""Signatures and the canonical encoding: what one replica signs, only that verifies."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from strife.bft.messages import (
    DOMAIN,
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
    ViewChange,
    batch_digest,
)
from strife.bft.signing import Keys, ed25519_keys, keyed_hash_keys

IDS = ["replica-0", "replica-1", "client-a"]


@pytest.fixture(params=["ed25519", "keyed-hash"])
def keys(request: pytest.FixtureRequest) -> Keys:
    return ed25519_keys(IDS, seed=1) if request.param == "ed25519" else keyed_hash_keys(IDS, 1)


def test_a_signature_verifies_for_its_signer_and_payload_only(keys: Keys) -> None:
    prepare = Prepare(3, 9, b"\x01" * 32, 0)
    signature = keys.signer("replica-0").sign(prepare.payload)
    assert keys.verifier.verify("replica-0", prepare.payload, signature)
    assert not keys.verifier.verify("replica-1", prepare.payload, signature)
    assert not keys.verifier.verify("nobody", prepare.payload, signature)
    assert not keys.verifier.verify("replica-0", replace(prepare, seq=10).payload, signature)
    assert not keys.verifier.verify("replica-0", prepare.payload, signature[:-1] + b"\0")
    assert not keys.verifier.verify("replica-0", prepare.payload, b"")


def test_kinds_are_domain_separated(keys: Keys) -> None:
    """A PREPARE's signature is no COMMIT's, though their fields are the same."""
    prepare = Prepare(3, 9, b"\x01" * 32, 0)
    commit = Commit(3, 9, b"\x01" * 32, 0)
    assert prepare.payload.startswith(DOMAIN + b"prepare\n")
    assert commit.payload.startswith(DOMAIN + b"commit\n")
    signature = keys.signer("replica-0").sign(prepare.payload)
    assert not keys.verifier.verify("replica-0", commit.payload, signature)


def test_the_encoding_is_canonical_json_without_the_signature() -> None:
    request = Request("client-a", 4, b"deposit a 1", signature=b"\xaa" * 64)
    body = request.payload.split(b"\n", 1)[1]
    assert json.loads(body) == {
        "client": "client-a",
        "timestamp": 4,
        "operation": b"deposit a 1".hex(),
    }
    assert body == b'{"client":"client-a","operation":"6465706f73697420612031","timestamp":4}'
    assert replace(request, signature=b"").payload == request.payload


def test_nested_messages_are_encoded_whole() -> None:
    batch = (Request("client-a", 1, b"x", signature=b"\x01"),)
    pp = PrePrepare(0, 1, batch_digest(batch), batch, 0, signature=b"\x02")
    cert = PreparedCert(pp, (Prepare(0, 1, pp.digest, 1, signature=b"\x03"),))
    vc = ViewChange(1, 0, b"", (Checkpoint(0, b"", 1, signature=b"\x04"),), (cert,), 2)
    nv = NewView(1, (vc,), (pp,), 1)
    decoded = json.loads(nv.payload.split(b"\n", 1)[1])
    inner = decoded["view_changes"][0]["prepared"][0]
    assert inner["pre_prepare"]["signature"] == "02"
    assert inner["prepares"][0]["signature"] == "03"
    assert inner["pre_prepare"]["batch"][0]["signature"] == "01"
    # Changing anything nested changes what the new primary signed.
    other = replace(nv, view_changes=(replace(vc, stable_seq=2),))
    assert other.payload != nv.payload


def test_batch_digests_cover_order_and_client_signatures() -> None:
    a = Request("client-a", 1, b"x", signature=b"\x01")
    b = Request("client-b", 1, b"y", signature=b"\x02")
    assert batch_digest((a, b)) != batch_digest((b, a))
    assert batch_digest((a,)) != batch_digest((replace(a, signature=b"\x03"),))
    assert len(batch_digest(())) == 32


def test_derived_ed25519_keys_are_the_same_for_the_same_seed() -> None:
    payload = Prepare(0, 1, b"", 0).payload
    one = ed25519_keys(IDS, seed=5).signer("replica-0").sign(payload)
    two = ed25519_keys(IDS, seed=5).signer("replica-0").sign(payload)
    assert one == two
    assert ed25519_keys(IDS, seed=6).signer("replica-0").sign(payload) != one
