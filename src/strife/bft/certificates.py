"""Checking PBFT's certificates, and deriving a new view's pre-prepares from them.

A certificate is a set of signed messages that proves something to a replica
that saw none of them: 2f+1 matching checkpoints prove a state is stable,
a pre-prepare and 2f matching prepares prove a batch prepared, 2f+1
view-changes prove what a new view must carry over. Each function here checks
one kind, from scratch, against the signers' keys; the new primary and every
backup derive the new view's pre-prepares with the same function
(`carried_over`), so a backup accepts a new view only if it would have built the
same one.
"""

from __future__ import annotations

from collections.abc import Iterable

from strife.bft.config import Config
from strife.bft.messages import (
    EMPTY_BATCH_DIGEST,
    Checkpoint,
    Message,
    NewView,
    PreparedCert,
    PrePrepare,
    Request,
    ViewChange,
    batch_digest,
)
from strife.bft.signing import Verifier, replica_identity

__all__ = [
    "Carried",
    "carried_over",
    "signed_by",
    "valid_batch",
    "valid_checkpoint_proof",
    "valid_new_view",
    "valid_prepared_cert",
    "valid_view_change",
]

Carried = tuple[int, bytes, tuple[Request, ...]]
"""A sequence number, the batch digest the new view proposes there, and the batch."""


def signed_by(verifier: Verifier, message: Message) -> bool:
    """The message's signature is its claimed sender's (a replica, or a request's client)."""
    identity = message.client if isinstance(message, Request) else replica_identity(message.replica)
    return verifier.verify(identity, message.payload, message.signature)


def valid_batch(config: Config, verifier: Verifier, pre_prepare: PrePrepare) -> bool:
    """Every request is signed by its client, and the digest is the batch's."""
    batch = pre_prepare.batch
    if len(batch) > config.batch_size or pre_prepare.digest != batch_digest(batch):
        return False
    return all(
        len(r.operation) <= config.max_operation_bytes and signed_by(verifier, r) for r in batch
    )


def _replica_ok(config: Config, replica: int) -> bool:
    return 0 <= replica < config.n


def valid_checkpoint_proof(
    config: Config, verifier: Verifier, seq: int, digest: bytes, proof: Iterable[Checkpoint]
) -> bool:
    """2f+1 distinct replicas signed a checkpoint of `digest` at `seq` (seq 0 needs none)."""
    if seq == 0:
        return True
    signers = set()
    for cp in proof:
        if cp.seq != seq or cp.state_digest != digest or not _replica_ok(config, cp.replica):
            return False
        if not signed_by(verifier, cp):
            return False
        signers.add(cp.replica)
    return len(signers) >= config.quorum


def valid_prepared_cert(config: Config, verifier: Verifier, cert: PreparedCert) -> bool:
    """A pre-prepare from its view's primary and 2f matching prepares from distinct backups."""
    pp = cert.pre_prepare
    primary = config.primary(pp.view)
    if (
        pp.replica != primary
        or not signed_by(verifier, pp)
        or not valid_batch(config, verifier, pp)
    ):
        return False
    backups = set()
    for prepare in cert.prepares:
        if (prepare.view, prepare.seq, prepare.digest) != (pp.view, pp.seq, pp.digest):
            return False
        if prepare.replica == primary or not _replica_ok(config, prepare.replica):
            return False
        if not signed_by(verifier, prepare):
            return False
        backups.add(prepare.replica)
    return len(backups) >= 2 * config.f


def valid_view_change(config: Config, verifier: Verifier, vc: ViewChange) -> bool:
    """Signed, with a proven stable checkpoint and proven prepared batches above it."""
    if vc.view < 1 or vc.stable_seq < 0 or not _replica_ok(config, vc.replica):
        return False
    if not signed_by(verifier, vc):
        return False
    if not valid_checkpoint_proof(
        config, verifier, vc.stable_seq, vc.stable_digest, vc.checkpoint_proof
    ):
        return False
    seqs = set()
    for cert in vc.prepared:
        if not vc.stable_seq < cert.seq <= vc.stable_seq + config.window:
            return False
        if cert.view >= vc.view or cert.seq in seqs:
            return False
        if not valid_prepared_cert(config, verifier, cert):
            return False
        seqs.add(cert.seq)
    return True


def carried_over(config: Config, view_changes: Iterable[ViewChange]) -> tuple[int, list[Carried]]:
    """The new view's starting checkpoint, and what it proposes above it (the paper's O set).

    Above the highest stable checkpoint in the view-changes (min-s), up to the
    highest prepared sequence number (max-s), each sequence number gets the batch
    prepared in the highest view, or the null batch if none prepared there. Ties
    (possible only with more than f faulty) go to the smallest digest, so every
    replica derives the same set.
    """
    vcs = list(view_changes)
    low = max(vc.stable_seq for vc in vcs)
    best: dict[int, PreparedCert] = {}
    for vc in vcs:
        for cert in vc.prepared:
            if cert.seq <= low:
                continue
            held = best.get(cert.seq)
            key = (cert.view, _neg(cert.pre_prepare.digest))
            if held is None or key > (held.view, _neg(held.pre_prepare.digest)):
                best[cert.seq] = cert
    high = max(best, default=low)
    carried: list[Carried] = []
    for seq in range(low + 1, high + 1):
        chosen = best.get(seq)
        if chosen is None:
            carried.append((seq, EMPTY_BATCH_DIGEST, ()))
        else:
            carried.append((seq, chosen.pre_prepare.digest, chosen.pre_prepare.batch))
    return low, carried


def _neg(digest: bytes) -> bytes:
    """Order digests so that the smallest wins a `max`."""
    return bytes(255 - b for b in digest)


def valid_new_view(config: Config, verifier: Verifier, nv: NewView) -> bool:
    """Signed by the view's primary, from 2f+1 valid view-changes, proposing what they imply."""
    primary = config.primary(nv.view)
    if nv.replica != primary or not signed_by(verifier, nv):
        return False
    senders = set()
    for vc in nv.view_changes:
        if vc.view != nv.view or vc.replica in senders:
            return False
        if not valid_view_change(config, verifier, vc):
            return False
        senders.add(vc.replica)
    if len(senders) < config.quorum:
        return False
    _, carried = carried_over(config, nv.view_changes)
    if len(carried) != len(nv.pre_prepares):
        return False
    for (seq, digest, batch), pp in zip(carried, nv.pre_prepares, strict=True):
        if (pp.view, pp.seq, pp.digest, pp.batch, pp.replica) != (
            nv.view, seq, digest, batch, primary
        ):  # fmt: skip
            return False
        if not signed_by(verifier, pp):
            return False
    return True
