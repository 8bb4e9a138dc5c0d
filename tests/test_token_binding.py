"""Access tokens are bound to the client certificate they were issued over (RFC 8705).

A token used to work over any client certificate, so a leaked one was as good as
the customer's password until it expired.
"""

from __future__ import annotations

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.gateway.auth import TokenCheck
from strife.gateway.tokens import ALGORITHM, TokenAuthority
from strife.observability.context import RequestInfo
from strife.rpc.interceptors import CallRefusedError

MINE, OTHER = "A" * 43, "B" * 43
METHOD = "/strife.v1.PaymentGateway/GetBalance"


def _call(check: TokenCheck, token: str, thumbprint: str) -> RequestInfo:
    info = RequestInfo(request_id="r", method=METHOD, peer_cert_sha256=thumbprint)
    check.check((("authorization", f"Bearer {token}"),), info)
    return info


def _refused(check: TokenCheck, token: str, thumbprint: str) -> CallRefusedError:
    with pytest.raises(CallRefusedError) as caught:
        _call(check, token, thumbprint)
    assert caught.value.code is grpc.StatusCode.UNAUTHENTICATED
    return caught.value


def test_a_token_works_only_over_the_certificate_it_was_issued_over() -> None:
    key = Ed25519PrivateKey.generate()
    check = TokenCheck(TokenAuthority(key))
    token, _ = check._tokens.issue("c-ada", "alpha", ["alpha/ada-usd"], cert_sha256=MINE)
    payload = jwt.decode(token, key.public_key(), algorithms=[ALGORITHM], audience="strife-gateway")
    assert payload["cnf"] == {"x5t#S256": MINE}
    assert _call(check, token, MINE).customer == "c-ada"  # now cached
    for _ in range(2):  # the binding is checked on every call, cached or not
        assert _refused(check, token, OTHER).reason == "TOKEN_NOT_BOUND_TO_PEER"
        assert _refused(check, token, "").reason == "TOKEN_NOT_BOUND_TO_PEER"
    assert _call(check, token, MINE).customer == "c-ada"


def test_an_unbound_or_malformed_token_is_refused_over_any_certificate() -> None:
    key = Ed25519PrivateKey.generate()
    check = TokenCheck(TokenAuthority(key))
    unbound, _ = check._tokens.issue("c-ada", "alpha", ["alpha/ada-usd"], cert_sha256="")
    assert _refused(check, unbound, MINE).reason == "TOKEN_NOT_BOUND_TO_PEER"
    claims = {"iss": "strife", "aud": "strife-gateway", "sub": "c-ada", "exp": 2**40}
    for cnf in ({"x5t#S256": 7}, ["x5t#S256", MINE], MINE):
        odd = jwt.encode({**claims, "cnf": cnf}, key, algorithm=ALGORITHM)
        assert _refused(check, odd, MINE).reason == "TOKEN_INVALID"
