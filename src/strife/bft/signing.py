"""Who said it: signing and verifying PBFT messages.

A replica signs every protocol message it sends and verifies every one it
receives against the public key configured for the claimed sender, so a
message's `replica` (or a request's `client`) field is believed only when its
signature says so. The protocol needs only `Signer` and `Verifier`; two schemes
implement them:

- `Ed25519Signer` / `Ed25519Verifier` (from `cryptography`): what a deployment
  uses, and what part of the simulator's runs use.
- `KeyedHashSigner` / `KeyedHashVerifier`: HMAC-SHA256 with one secret per
  identity, some 30 to 80 times cheaper, for the simulator's thousands of seeds.
  Whoever verifies holds every secret, so it proves nothing between mutually
  distrustful processes; in the simulator a Byzantine replica is handed only its
  own signer, which is all the protocol's argument needs.

Identities are strings: `replica-<i>` for replica i, and a client's own id.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "Ed25519Signer",
    "Ed25519Verifier",
    "KeyedHashSigner",
    "KeyedHashVerifier",
    "Keys",
    "Signer",
    "Verifier",
    "ed25519_keys",
    "keyed_hash_keys",
    "replica_identity",
]


def replica_identity(replica: int) -> str:
    return f"replica-{replica}"


class Signer(Protocol):
    """Signs for one identity."""

    @property
    def identity(self) -> str: ...

    def sign(self, payload: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a signature against the key configured for `identity`."""

    def verify(self, identity: str, payload: bytes, signature: bytes) -> bool: ...


@dataclass(frozen=True)
class Ed25519Signer:
    identity: str
    key: Ed25519PrivateKey

    def sign(self, payload: bytes) -> bytes:
        return self.key.sign(payload)


class Ed25519Verifier:
    """Verifies against configured public keys; an unknown identity never verifies."""

    def __init__(self, keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    def verify(self, identity: str, payload: bytes, signature: bytes) -> bool:
        key = self._keys.get(identity)
        if key is None or len(signature) != 64:
            return False
        try:
            key.verify(signature, payload)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class KeyedHashSigner:
    identity: str
    secret: bytes

    def sign(self, payload: bytes) -> bytes:
        return hmac.digest(self.secret, payload, "sha256")


class KeyedHashVerifier:
    def __init__(self, secrets: Mapping[str, bytes]) -> None:
        self._secrets = dict(secrets)

    def verify(self, identity: str, payload: bytes, signature: bytes) -> bool:
        secret = self._secrets.get(identity)
        if secret is None:
            return False
        return hmac.compare_digest(hmac.digest(secret, payload, "sha256"), signature)


@dataclass(frozen=True)
class Keys:
    """One signer per identity, and a verifier that knows them all (what a config holds)."""

    signers: Mapping[str, Signer]
    verifier: Verifier

    def signer(self, identity: str) -> Signer:
        return self.signers[identity]


def ed25519_keys(identities: Iterable[str], seed: int | None = None) -> Keys:
    """Ed25519 key pairs: fresh ones, or derived from `seed` (a replayable simulation)."""
    private = {
        name: Ed25519PrivateKey.generate()
        if seed is None
        else Ed25519PrivateKey.from_private_bytes(_derive(seed, name))
        for name in identities
    }
    return Keys(
        signers={name: Ed25519Signer(name, key) for name, key in private.items()},
        verifier=Ed25519Verifier({name: key.public_key() for name, key in private.items()}),
    )


def keyed_hash_keys(identities: Iterable[str], seed: int = 0) -> Keys:
    """Deterministic keyed-hash secrets derived from `seed` (test and simulation only)."""
    secrets = {name: _derive(seed, name) for name in identities}
    return Keys(
        signers={name: KeyedHashSigner(name, secret) for name, secret in secrets.items()},
        verifier=KeyedHashVerifier(secrets),
    )


def _derive(seed: int, name: str) -> bytes:
    return hashlib.sha256(f"strife-bft/test-key/{seed}/{name}".encode()).digest()
