"""NetworkPolicies derived from the authorization tables.

The tables in the service modules say which certificate roles may call which
methods; the network may carry no more than that. Each serving role admits on
its gRPC port exactly the roles its own services' methods allow. The methods
every process serves (health, reflection: `COMMON_METHODS`) are open to any
role and are left out, so a client reaches gateways and the balancer but never
a bank, whatever the health service would answer it.

A replicated bank's replicas are bank pods (their certificates' role) that
serve the replica protocol instead of BankService: each group gets its own
policy from that protocol's table, in which the bank role means the group's
own replicas (`group_policy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strife.rpc.authz import COMMON_METHODS, AuthzTable
from strife.security.certs import ROLES

Manifest = dict[str, Any]

ROLE_LABEL = "strife.local/role"
# On the pods of a replicated bank's replicas: the bank they replicate.
GROUP_LABEL = "strife.local/replicated-bank"
PART_OF = {"app.kubernetes.io/part-of": "strife"}
# Prometheus scrapes the metrics port from this namespace.
MONITORING_NAMESPACE = "monitoring"


@dataclass(frozen=True)
class Served:
    """What one serving role answers: its table and the gRPC services it registers."""

    table: AuthzTable
    services: tuple[str, ...]


def served_by_role() -> dict[str, Served]:
    """The tables and services each Strife server process registers."""
    from strife.balancer.service import SERVICE as BALANCER_SERVICE
    from strife.balancer.service import authz_table
    from strife.bank.service import AUTHZ as BANK_AUTHZ
    from strife.bank.service import SERVICE as BANK_SERVICE
    from strife.gateway.auth import GATEWAY_SERVICE
    from strife.gateway.service import AUTHZ as GATEWAY_AUTHZ
    from strife.gateway.service import COORDINATOR_SERVICE

    return {
        "balancer": Served(authz_table(), (BALANCER_SERVICE,)),
        "bank": Served(BANK_AUTHZ, (BANK_SERVICE,)),
        "gateway": Served(GATEWAY_AUTHZ, (GATEWAY_SERVICE, COORDINATOR_SERVICE)),
    }


def service_method_paths(service: str) -> list[str]:
    """Every method of a Strife gRPC service, from its generated descriptor."""
    from strife.v1 import balancer_pb2, bank_pb2, coordinator_pb2, gateway_pb2

    for module in (balancer_pb2, bank_pb2, coordinator_pb2, gateway_pb2):
        for descriptor in module.DESCRIPTOR.services_by_name.values():
            if descriptor.full_name == service:
                return [f"/{service}/{m.name}" for m in descriptor.methods]
    raise KeyError(f"no generated service {service}")


def allowed_callers(served: Mapping[str, Served] | None = None) -> dict[str, frozenset[str]]:
    """Serving role -> the caller roles its tables allow on at least one of its
    own methods (not counting health and reflection)."""
    result: dict[str, frozenset[str]] = {}
    for role, spec in (served or served_by_role()).items():
        callers: set[str] = set()
        for service in spec.services:
            for method in service_method_paths(service):
                if method not in COMMON_METHODS:
                    callers |= spec.table.allowed_roles(method)
        unknown = callers.difference(ROLES)
        if unknown:
            raise ValueError(f"{role}: unknown roles {sorted(unknown)}")
        result[role] = frozenset(callers)
    return result


def replica_callers(table: AuthzTable | None = None) -> frozenset[str]:
    """The caller roles a replica's own methods allow (the replica protocol has
    no generated descriptor: its methods are listed in `strife.bft.node`)."""
    from strife.bft.node import AUTHZ, DELIVER, INVOKE, STATUS

    table = table or AUTHZ
    callers = frozenset().union(*(table.allowed_roles(m) for m in (DELIVER, INVOKE, STATUS)))
    if unknown := callers.difference(ROLES):
        raise ValueError(f"replica: unknown roles {sorted(unknown)}")
    return callers


def group_policy(bank: str, callers: frozenset[str], *, grpc_port: int) -> Manifest:
    """What reaches one replicated bank's replicas on the gRPC port. The bank
    role is narrowed to the group's own replicas: a replica admits protocol
    messages only from its peers' certificates, and bank-role requests only
    under keys its group file lists, which are its peers'. The plain banks'
    policy selects these pods too (they are bank pods), adding nothing the
    replica table does not allow."""
    peers: list[Manifest] = []
    if others := sorted(callers - {"bank"}):
        peers.append(
            {
                "podSelector": {
                    "matchExpressions": [{"key": ROLE_LABEL, "operator": "In", "values": others}]
                }
            }
        )
    if "bank" in callers:
        peers.append({"podSelector": {"matchLabels": {ROLE_LABEL: "bank", GROUP_LABEL: bank}}})
    ingress = [{"from": peers, "ports": [{"protocol": "TCP", "port": grpc_port}]}] if peers else []
    return _ingress_policy(f"strife-bank-{bank}-ingress", {GROUP_LABEL: bank}, ingress)


def _ingress_policy(name: str, selector: dict[str, str], ingress: list[Manifest]) -> Manifest:
    """A policy admitting `ingress` to the pods `selector` matches."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": dict(PART_OF)},
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def network_policies(
    callers: Mapping[str, frozenset[str]], *, grpc_port: int, metrics_port: int
) -> list[Manifest]:
    """A default deny for every Strife pod, then one admitting policy per serving role."""
    policies: list[Manifest] = [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "strife-default-deny", "labels": dict(PART_OF)},
            "spec": {"podSelector": {"matchLabels": dict(PART_OF)}, "policyTypes": ["Ingress"]},
        }
    ]
    for role in sorted(callers):
        ingress: list[Manifest] = []
        if callers[role]:
            ingress.append(
                {
                    "from": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {
                                        "key": ROLE_LABEL,
                                        "operator": "In",
                                        "values": sorted(callers[role]),
                                    }
                                ]
                            }
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": grpc_port}],
                }
            )
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": metrics_port}],
            }
        )
        policies.append(_ingress_policy(f"strife-{role}-ingress", {ROLE_LABEL: role}, ingress))
    return policies
