"""The rendered NetworkPolicies against the authorization tables: a caller
role reaches a serving role's gRPC port exactly when some method of that
role's own services allows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from strife.deploy import networkpolicy
from strife.deploy.kustomize import build
from strife.deploy.networkpolicy import ROLE_LABEL, Served, allowed_callers, served_by_role
from strife.deploy.render import GRPC_PORT, METRICS_PORT
from strife.rpc.authz import COMMON_METHODS, AuthzTable
from strife.security.certs import ROLES, SERVICE_ROLES

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = REPO / "deploy" / "kubernetes" / "overlays"

Manifest = dict[str, Any]


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and In/NotIn/Exists)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for term in selector.get("matchExpressions", []):
        present, value = term["key"] in labels, labels.get(term["key"])
        if term["operator"] == "In" and value not in term["values"]:
            return False
        if term["operator"] == "NotIn" and value in term["values"]:
            return False
        if term["operator"] == "Exists" and not present:
            return False
    return True


def admitted(
    policies: list[Manifest], caller: dict[str, str], callee: dict[str, str], port: int
) -> bool:
    """NetworkPolicy semantics for ingress between pods of one namespace:
    unselected pods admit everything; selected ones admit what any policy's
    rule allows (from a matching pod, to a listed port)."""
    selecting = [p for p in policies if _selects(p["spec"]["podSelector"], callee)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                # A namespaceSelector peer is another namespace's pods: none here.
                if "namespaceSelector" in peer:
                    continue
                if _selects(peer["podSelector"], caller):
                    return True
    return False


def _pod_labels(objects: list[Manifest], role: str) -> dict[str, str]:
    """The labels of a running pod of `role`, read from its workload's template."""
    for obj in objects:
        if obj["kind"] in ("StatefulSet", "Deployment"):
            labels: dict[str, str] = obj["spec"]["template"]["metadata"]["labels"]
            if labels.get(ROLE_LABEL) == role:
                return labels
    raise AssertionError(f"no workload of role {role}")


def _allowed_by_tables() -> set[tuple[str, str]]:
    """(caller, callee) pairs, straight from `AuthzTable.allowed_roles` over every method."""
    pairs = set()
    for callee, served in served_by_role().items():
        for service in served.services:
            for method in networkpolicy.service_method_paths(service):
                if method in COMMON_METHODS:
                    continue
                pairs |= {(r, callee) for r in ROLES if r in served.table.allowed_roles(method)}
    return pairs


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_network_admits_exactly_what_the_tables_allow(overlay: str) -> None:
    objects = build(OVERLAYS / overlay)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    allowed = _allowed_by_tables()
    assert ("client", "gateway") in allowed and ("bank", "gateway") in allowed
    for callee in SERVICE_ROLES:
        callee_labels = _pod_labels(objects, callee)
        for caller in ROLES:
            caller_labels = {**callee_labels, ROLE_LABEL: caller}
            expected = (caller, callee) in allowed
            assert admitted(policies, caller_labels, callee_labels, GRPC_PORT) is expected, (
                f"{caller} -> {callee}: tables say {expected}"
            )
            # Nothing in the namespace reaches the metrics or health ports.
            assert not admitted(policies, caller_labels, callee_labels, METRICS_PORT)


def test_the_expected_call_graph() -> None:
    """The graph the issue names: clients to gateways, gateways to banks, banks
    to gateways (GetDecision), everyone to the balancer; admins read."""
    callers = allowed_callers()
    assert callers == {
        "gateway": frozenset({"client", "admin", "bank"}),
        "bank": frozenset({"gateway", "admin"}),
        "balancer": frozenset(ROLES),
    }


def test_a_change_in_a_table_changes_the_policy() -> None:
    """Derived, not copied: granting clients a bank method opens the bank to them."""
    served = served_by_role()
    bank = served["bank"]
    widened = AuthzTable()
    for method in networkpolicy.service_method_paths(bank.services[0]):
        widened.allow(method, bank.table.allowed_roles(method))
    widened.allow(f"/{bank.services[0]}/GetAccountBalance", ["gateway", "admin", "client"])
    callers = allowed_callers({**served, "bank": Served(widened, bank.services)})
    assert "client" in callers["bank"]
    policies = networkpolicy.network_policies(callers, grpc_port=GRPC_PORT, metrics_port=9)
    bank_policy = next(p for p in policies if p["metadata"]["name"] == "strife-bank-ingress")
    assert admitted(
        policies, {ROLE_LABEL: "client"}, {ROLE_LABEL: "bank", **networkpolicy.PART_OF}, GRPC_PORT
    )
    assert bank_policy["spec"]["podSelector"] == {"matchLabels": {ROLE_LABEL: "bank"}}


def test_health_and_reflection_open_no_path() -> None:
    """Every role may call health on any process, but that alone opens nothing."""
    only_common = {"bank": Served(AuthzTable(), ("strife.v1.BankService",))}
    assert allowed_callers(only_common) == {"bank": frozenset()}
    policies = networkpolicy.network_policies(
        allowed_callers(only_common), grpc_port=GRPC_PORT, metrics_port=METRICS_PORT
    )
    bank = {ROLE_LABEL: "bank", **networkpolicy.PART_OF}
    assert not any(admitted(policies, {ROLE_LABEL: r}, bank, GRPC_PORT) for r in ROLES)
