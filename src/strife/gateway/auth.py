"""Customer authentication: the bearer token on every PaymentGateway call but Login."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from strife.errors import Reason, abort
from strife.gateway.tokens import Claims, TokenAuthority, TokenError
from strife.observability import context as request_context
from strife.rpc.interceptors import Around, WrappingInterceptor

GATEWAY_SERVICE = "strife.v1.PaymentGateway"
OPEN_METHODS = frozenset({f"/{GATEWAY_SERVICE}/Login"})


class TokenInterceptor(WrappingInterceptor):
    """Runs after peer authorization: the certificate says "a client", the token says who."""

    def __init__(self, tokens: TokenAuthority) -> None:
        self._tokens = tokens

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        method = handler_call_details.method
        if not method.startswith(f"/{GATEWAY_SERVICE}/") or method in OPEN_METHODS:
            return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)

    def _around_for(self, details: Any) -> Around:
        token = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, token = value.partition(" ")
                token = token.strip() if scheme.lower() == "bearer" else ""

        @asynccontextmanager
        async def around(context: Any) -> AsyncIterator[None]:
            if not token:
                await abort(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    Reason.TOKEN_MISSING,
                    "send `authorization: Bearer <access token>` (from Login)",
                )
            try:
                claims = self._tokens.verify(token)
            except TokenError as exc:
                await abort(context, grpc.StatusCode.UNAUTHENTICATED, exc.reason, str(exc))
            info = request_context.current()
            if info is not None:
                info.customer = claims.customer_id
                info.principal = claims
            yield

        return around


def current_claims() -> Claims:
    info = request_context.current()
    assert info is not None and isinstance(info.principal, Claims), "TokenInterceptor not installed"
    return info.principal
