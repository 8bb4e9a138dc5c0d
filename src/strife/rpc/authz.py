"""Method-level authorization: which certificate roles may call what.

Deny by default: a method missing from the table is refused, so a new RPC is
closed until someone decides who may call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from strife.security.certs import ROLES

ANY_ROLE = frozenset(ROLES)

# Served by every Strife process, open to any authenticated peer.
COMMON_METHODS: dict[str, frozenset[str]] = {
    "/grpc.health.v1.Health/Check": ANY_ROLE,
    "/grpc.health.v1.Health/Watch": ANY_ROLE,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ANY_ROLE,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": ANY_ROLE,
}


class AuthzTable:
    def __init__(self, rules: Mapping[str, Iterable[str]] | None = None) -> None:
        self._rules: dict[str, frozenset[str]] = dict(COMMON_METHODS)
        for method, roles in (rules or {}).items():
            self.allow(method, roles)

    def allow(self, method: str, roles: Iterable[str]) -> None:
        allowed = frozenset(roles)
        unknown = allowed - ANY_ROLE
        if unknown or not method.startswith("/"):
            raise ValueError(f"bad rule {method!r}: {sorted(unknown)}")
        self._rules[method] = allowed

    def allowed_roles(self, method: str) -> frozenset[str]:
        return self._rules.get(method, frozenset())


def service_methods(service_full_name: str, methods: Iterable[str]) -> list[str]:
    return [f"/{service_full_name}/{m}" for m in methods]
