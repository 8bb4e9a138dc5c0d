"""Customer authentication: the bearer token on every PaymentGateway call but Login."""

from __future__ import annotations

import grpc

from strife.errors import Reason
from strife.gateway.tokens import Claims, TokenAuthority, TokenError
from strife.observability import context as request_context
from strife.observability.context import RequestInfo
from strife.rpc.interceptors import CallRefusedError, Metadata

GATEWAY_SERVICE = "strife.v1.PaymentGateway"
OPEN_METHODS = frozenset({f"/{GATEWAY_SERVICE}/Login"})


class TokenCheck:
    """Runs after peer authorization: the certificate says "a client", the token says who."""

    def __init__(self, tokens: TokenAuthority) -> None:
        self._tokens = tokens

    def applies_to(self, method: str) -> bool:
        return method.startswith(f"/{GATEWAY_SERVICE}/") and method not in OPEN_METHODS

    def check(self, metadata: Metadata, info: RequestInfo) -> None:
        token = ""
        for key, value in metadata:
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise CallRefusedError(
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.TOKEN_MISSING,
                "send `authorization: Bearer <access token>` (from Login)",
            )
        try:
            claims = self._tokens.verify(token)
        except TokenError as exc:
            raise CallRefusedError(grpc.StatusCode.UNAUTHENTICATED, exc.reason, str(exc)) from None
        # Per call, after the verified-token cache: a string comparison.
        if claims.cert_sha256 != info.peer_cert_sha256:
            raise CallRefusedError(
                grpc.StatusCode.UNAUTHENTICATED,
                Reason.TOKEN_NOT_BOUND_TO_PEER,
                "the access token was issued over another client certificate; log in again"
                " with this one",
            )
        info.customer = claims.customer_id
        info.principal = claims


def current_claims() -> Claims:
    info = request_context.current()
    assert info is not None and isinstance(info.principal, Claims), "TokenCheck not installed"
    return info.principal
