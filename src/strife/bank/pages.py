"""History page tokens: opaque, sealed by the bank, bound to the account they page.

A token carries where the next page starts (the ledger sequence number to
continue below). It is sealed with AES-256-GCM under the bank's own key, kept
in its database (`BankStore.page_token_key`), so a token:

- is opaque: the caller learns nothing from it, and must not parse it;
- is tamper-evident: any changed, cut or added character fails its tag;
- is bound to its query: the bank's name and the account id are the
  associated data, so a token for one account (or one bank) is refused for
  another. The page size is not bound: a client may change it between pages.
- survives a restart of the bank (the key is in the database), and is
  refused by every other bank, including the others of the same process.

The layout is `base64url(version || nonce || AES-GCM(seq as 8 bytes))`,
unpadded. A damaged or foreign token is `None` to `open_page_token`; the
service answers it INVALID_ARGUMENT / INVALID_PAGE_TOKEN.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = b"\x01"
NONCE_BYTES = 12
SEQ_BYTES = 8
TAG_BYTES = 16
RAW_BYTES = len(VERSION) + NONCE_BYTES + SEQ_BYTES + TAG_BYTES
# Longer than any token the bank makes, so it can be refused before decoding.
MAX_TOKEN_CHARS = 64
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER


def _bound_to(bank: str, account_id: str) -> bytes:
    """Associated data: unambiguous for any two strings (NULs, separators included)."""
    return json.dumps(["strife-page-token", bank, account_id]).encode()


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def seal_page_token(key: bytes, bank: str, account_id: str, before_seq: int) -> str:
    """A token for the page of `account_id`'s history below `before_seq`."""
    if not 0 < before_seq <= MAX_SEQ:
        raise ValueError(f"sequence number out of range: {before_seq}")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(
        nonce, before_seq.to_bytes(SEQ_BYTES, "big"), _bound_to(bank, account_id)
    )
    return _encode(VERSION + nonce + sealed)


def open_page_token(key: bytes, bank: str, account_id: str, token: str) -> int | None:
    """The sequence number to continue below, or None unless the token is one this
    bank sealed, unchanged, for this account."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    # One spelling per token: no padding, no stray or non-canonical characters.
    if len(raw) != RAW_BYTES or raw[:1] != VERSION or _encode(raw) != token:
        return None
    nonce, sealed = raw[1 : 1 + NONCE_BYTES], raw[1 + NONCE_BYTES :]
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, _bound_to(bank, account_id))
    except InvalidTag:
        return None
    before = int.from_bytes(plain, "big")
    return before if 0 < before <= MAX_SEQ else None
