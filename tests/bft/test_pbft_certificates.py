"""Certificates checked from scratch, and the new view derived from them."""

from __future__ import annotations

from dataclasses import replace
from typing import TypeVar

from strife.bft.certificates import (
    carried_over,
    valid_checkpoint_proof,
    valid_new_view,
    valid_prepared_cert,
    valid_view_change,
)
from strife.bft.config import Config
from strife.bft.messages import (
    EMPTY_BATCH_DIGEST,
    Checkpoint,
    Message,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Request,
    ViewChange,
    batch_digest,
)
from strife.bft.signing import keyed_hash_keys, replica_identity

CONFIG = Config(n=4, checkpoint_interval=2, window=4)
KEYS = keyed_hash_keys([replica_identity(r) for r in range(4)] + ["client-a"], seed=2)
VERIFY = KEYS.verifier
M = TypeVar("M", bound=Message)


def sign(message: M, identity: str | None = None) -> M:
    if identity is None:
        identity = message.client if isinstance(message, Request) else f"replica-{message.replica}"
    signed: M = replace(message, signature=KEYS.signer(identity).sign(message.payload))
    return signed


def request(ts: int) -> Request:
    return sign(Request("client-a", ts, f"deposit a {ts}".encode()))


def cert(view: int, seq: int, ts: int) -> PreparedCert:
    batch = (request(ts),)
    primary = CONFIG.primary(view)
    pp = sign(PrePrepare(view, seq, batch_digest(batch), batch, primary))
    backups = [r for r in range(4) if r != primary][:2]
    return PreparedCert(pp, tuple(sign(Prepare(view, seq, pp.digest, r)) for r in backups))


def checkpoints(seq: int, digest: bytes, replicas: range | list[int]) -> tuple[Checkpoint, ...]:
    return tuple(sign(Checkpoint(seq, digest, r)) for r in replicas)


def view_change(view: int, replica: int, certs: tuple[PreparedCert, ...] = ()) -> ViewChange:
    return sign(ViewChange(view, 0, b"", (), certs, replica))


def test_a_checkpoint_proof_needs_2f_plus_1_distinct_matching_signers() -> None:
    digest = b"\x05" * 32
    assert valid_checkpoint_proof(CONFIG, VERIFY, 2, digest, checkpoints(2, digest, range(3)))
    assert not valid_checkpoint_proof(CONFIG, VERIFY, 2, digest, checkpoints(2, digest, range(2)))
    twice = checkpoints(2, digest, [0, 1, 1])
    assert not valid_checkpoint_proof(CONFIG, VERIFY, 2, digest, twice)
    other = checkpoints(2, digest, range(2)) + checkpoints(2, b"\x06" * 32, [2])
    assert not valid_checkpoint_proof(CONFIG, VERIFY, 2, digest, other)
    forged = (*checkpoints(2, digest, range(2)), sign(Checkpoint(2, digest, 2), "replica-3"))
    assert not valid_checkpoint_proof(CONFIG, VERIFY, 2, digest, forged)


def test_a_prepared_certificate_needs_the_primary_and_2f_backups() -> None:
    good = cert(1, 1, 1)
    assert valid_prepared_cert(CONFIG, VERIFY, good)
    assert not valid_prepared_cert(CONFIG, VERIFY, replace(good, prepares=good.prepares[:1]))
    from_primary = sign(Prepare(1, 1, good.pre_prepare.digest, 1))
    assert not valid_prepared_cert(
        CONFIG, VERIFY, replace(good, prepares=(good.prepares[0], from_primary))
    )
    wrong_digest = sign(replace(good.prepares[1], digest=EMPTY_BATCH_DIGEST))
    assert not valid_prepared_cert(
        CONFIG, VERIFY, replace(good, prepares=(good.prepares[0], wrong_digest))
    )
    not_primary = sign(replace(good.pre_prepare, replica=2))
    assert not valid_prepared_cert(CONFIG, VERIFY, replace(good, pre_prepare=not_primary))
    # A batch with a request its client never signed.
    bogus = replace(request(1), operation=b"deposit mallory 1")
    batch = (bogus,)
    pp = sign(PrePrepare(1, 1, batch_digest(batch), batch, 1))
    prepares = tuple(sign(Prepare(1, 1, pp.digest, r)) for r in (2, 3))
    assert not valid_prepared_cert(CONFIG, VERIFY, PreparedCert(pp, prepares))


def test_a_view_change_carries_only_earlier_views_within_the_window() -> None:
    assert valid_view_change(CONFIG, VERIFY, view_change(2, 3, (cert(1, 1, 1),)))
    assert not valid_view_change(CONFIG, VERIFY, view_change(1, 3, (cert(1, 1, 1),)))
    assert not valid_view_change(CONFIG, VERIFY, view_change(2, 3, (cert(1, 5, 1),)))
    twice = (cert(0, 1, 1), cert(1, 1, 2))
    assert not valid_view_change(CONFIG, VERIFY, view_change(2, 3, twice))
    unproven = sign(ViewChange(2, 2, b"\x01" * 32, (), (), 3))
    assert not valid_view_change(CONFIG, VERIFY, unproven)


def test_the_new_view_takes_the_batch_prepared_in_the_highest_view() -> None:
    old, new = cert(0, 1, 1), cert(1, 1, 2)
    vcs = [view_change(2, 0, (old,)), view_change(2, 1, (new,)), view_change(2, 3)]
    low, carried = carried_over(CONFIG, vcs)
    assert low == 0
    assert carried == [(1, new.pre_prepare.digest, new.pre_prepare.batch)]
    # Whatever the order of the view-changes.
    assert carried_over(CONFIG, vcs[::-1]) == (low, carried)


def test_the_new_view_fills_gaps_with_null_batches_above_the_highest_checkpoint() -> None:
    digest = b"\x07" * 32
    stable = sign(ViewChange(2, 2, digest, checkpoints(2, digest, range(3)), (), 1))
    vcs = [view_change(2, 0, (cert(1, 1, 1), cert(1, 4, 2))), stable, view_change(2, 3)]
    low, carried = carried_over(CONFIG, vcs)
    assert low == 2
    assert [(seq, d) for seq, d, _ in carried] == [
        (3, EMPTY_BATCH_DIGEST),
        (4, cert(1, 4, 2).pre_prepare.digest),
    ]


def test_a_new_view_is_valid_only_as_its_proof_implies() -> None:
    vcs = (view_change(1, 0, (cert(0, 1, 1),)), view_change(1, 2), view_change(1, 3))
    _, carried = carried_over(CONFIG, vcs)
    pps = tuple(sign(PrePrepare(1, seq, d, b, 1)) for seq, d, b in carried)
    nv = sign(NewView(1, vcs, pps, 1))
    assert valid_new_view(CONFIG, VERIFY, nv)
    assert not valid_new_view(CONFIG, VERIFY, sign(replace(nv, pre_prepares=())))
    assert not valid_new_view(CONFIG, VERIFY, sign(replace(nv, view_changes=vcs[:2])))
    assert not valid_new_view(CONFIG, VERIFY, sign(replace(nv, view_changes=(*vcs[:2], vcs[1]))))
    null = (sign(PrePrepare(1, 1, EMPTY_BATCH_DIGEST, (), 1)),)
    assert not valid_new_view(CONFIG, VERIFY, sign(replace(nv, pre_prepares=null)))
    assert not valid_new_view(CONFIG, VERIFY, sign(replace(nv, replica=2)))
