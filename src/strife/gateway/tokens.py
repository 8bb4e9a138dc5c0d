"""Short-lived access tokens: JWTs signed with Ed25519 (EdDSA).

Every replica of a deployment loads the same key file, so a token issued by
one replica is accepted by all. The token names the customer and the accounts
the bank listed at login, so authorization needs no extra round trip. Verified
tokens are cached until they expire: an Ed25519 verify costs ~100 µs, a dict
lookup nothing.

A token is bound to the client certificate it was issued over (RFC 8705's
confirmation claim, `cnf: {"x5t#S256": <SHA-256 of the DER certificate>}`):
the gateway compares it with the caller's verified certificate on every call
(`strife.gateway.auth.TokenCheck`), after the cache, so a leaked token is of
no use over another certificate. Clients that share one certificate (the CLI
and a load generator's customers) share the binding.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ISSUER = "strife"
AUDIENCE = "strife-gateway"
ALGORITHM = "EdDSA"
CACHE_LIMIT = 50_000
CONFIRMATION = "cnf"
THUMBPRINT = "x5t#S256"


class TokenError(Exception):
    """`reason` is TOKEN_INVALID, TOKEN_EXPIRED or TOKEN_NOT_BOUND_TO_PEER."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    customer_id: str
    bank: str
    accounts: frozenset[str]  # "bank/account_id"
    expires_at: float
    # The `x5t#S256` of the client certificate the token was issued over; ""
    # only for a token issued without one (a gateway run with --insecure),
    # which no caller holding a certificate can use.
    cert_sha256: str = ""

    def owns(self, bank: str, account_id: str) -> bool:
        """Only accounts at the customer's own bank: a bank speaks for no other's."""
        return bank == self.bank and f"{bank}/{account_id}" in self.accounts


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The deployment's signing key; created (mode 0600) when the file is missing."""
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another replica made it first; read theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return loaded


class TokenAuthority:
    def __init__(self, key: Ed25519PrivateKey, ttl_s: float = 900.0) -> None:
        self._key = key
        self._public = key.public_key()
        self.ttl_s = ttl_s
        self._cache: OrderedDict[str, Claims] = OrderedDict()

    def issue(
        self, customer_id: str, bank: str, accounts: list[str], *, cert_sha256: str
    ) -> tuple[str, float]:
        """`cert_sha256`: the `x5t#S256` of the caller's verified certificate."""
        now = time.time()
        expires_at = now + self.ttl_s
        claims: dict[str, object] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": customer_id,
            "bank": bank,
            "acc": sorted(accounts),
            "iat": int(now),
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
        }
        if cert_sha256:
            claims[CONFIRMATION] = {THUMBPRINT: cert_sha256}
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return token, expires_at

    def verify(self, token: str) -> Claims:
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at <= time.time():
                del self._cache[token]
                raise TokenError("TOKEN_EXPIRED", "the access token has expired; log in again")
            return cached
        try:
            payload = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError(
                "TOKEN_EXPIRED", "the access token has expired; log in again"
            ) from None
        except jwt.PyJWTError as exc:
            raise TokenError("TOKEN_INVALID", f"the access token is not valid: {exc}") from None
        confirmation = payload.get(CONFIRMATION, {})
        thumbprint = confirmation.get(THUMBPRINT, "") if isinstance(confirmation, dict) else None
        if not isinstance(thumbprint, str):
            raise TokenError("TOKEN_INVALID", "the access token's confirmation claim is malformed")
        claims = Claims(
            customer_id=str(payload["sub"]),
            bank=str(payload.get("bank", "")),
            accounts=frozenset(str(a) for a in payload.get("acc", [])),
            expires_at=float(payload["exp"]),
            cert_sha256=thumbprint,
        )
        self._cache[token] = claims
        if len(self._cache) > CACHE_LIMIT:
            self._cache.popitem(last=False)
        return claims
