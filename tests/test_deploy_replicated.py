"""`strife deploy render` of a topology with `[[replicated_banks]]`: the shape
is valid Kubernetes, and what each pod is told to read (group file, its
signing key, its certificate, its peers' addresses) is what both identity
routes issue and what the Services and volumes deliver."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from strife.bft.group import Group
from strife.bft.node import AUTHZ, INVOKE
from strife.cluster.topology import load_topology, parse_topology
from strife.deploy.cli import deploy
from strife.deploy.identities import planned_identities
from strife.deploy.kustomize import build
from strife.deploy.networkpolicy import (
    GROUP_LABEL,
    PART_OF,
    ROLE_LABEL,
    group_policy,
    replica_callers,
)
from strife.deploy.render import GRPC_PORT, HEALTH_PORT, RenderError, render
from strife.deploy.replicated import (
    GROUP_FILE,
    SIGNING_KEY,
    ManifestStore,
    clients,
    issue_group_keys,
    key_secret,
    layouts,
    parse_layout_arg,
    public_key,
)
from strife.deploy.secrets_job import issue_missing, parse_identity_arg
from strife.deploy.validate import kubernetes_versions, validate_objects
from strife.rpc.authz import AuthzTable
from strife.security.certs import ROLES

from .test_deploy_networkpolicy import admitted

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "deploy" / "bft.toml"
REPLICAS = [f"bank-vault-{i}" for i in range(4)]

Manifest = dict[str, Any]


class FakeStore:
    """Secrets and ConfigMaps of one namespace, counting rewrites."""

    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, bytes]] = {}
        self.configs: dict[str, dict[str, str]] = {}
        self.rewrites: list[str] = []

    def get(self, name: str) -> dict[str, bytes] | None:
        return self.secrets.get(name)

    def create(self, name: str, data: dict[str, bytes], kind: str) -> None:
        assert name not in self.secrets, f"{name} created twice"
        self.secrets[name] = data

    def get_config(self, name: str) -> dict[str, str] | None:
        return self.configs.get(name)

    def put_config(self, name: str, data: dict[str, str], *, replace: bool) -> None:
        assert replace is (name in self.configs)
        if replace:
            self.rewrites.append(name)
        self.configs[name] = data


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bft-k8s")
    result = CliRunner().invoke(deploy, ["render", "--config", str(SOURCE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def overlays(tree: Path) -> dict[str, list[Manifest]]:
    return {name: build(tree / "overlays" / name) for name in ("dev", "prod")}


def _named(objects: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _args(container: Manifest, flag: str) -> list[str]:
    args: list[str] = container["args"]
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


def _pod(obj: Manifest) -> tuple[Manifest, Manifest]:
    spec: Manifest = obj["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for term in selector.get("matchExpressions", []):
        present = term["key"] in labels
        if term["operator"] == "DoesNotExist" and present:
            return False
        if term["operator"] == "In" and labels.get(term["key"]) not in term["values"]:
            return False
    return True


# ------------------------------------------------------------------ the shape


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_both_overlays_pass_the_strict_schemas(
    overlays: dict[str, list[Manifest]], overlay: str
) -> None:
    objects = overlays[overlay]
    assert validate_objects(objects, kubernetes_versions()) == []
    assert set(REPLICAS) <= set(_named(objects, "StatefulSet"))
    assert ("Job" in {o["kind"] for o in objects}) is (overlay == "dev")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kubectl_kustomize_builds_the_same_objects(
    tree: Path, overlays: dict[str, list[Manifest]], overlay: str
) -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(built.stdout) if o}
    ours = {(o["kind"], o["metadata"]["name"]): o for o in overlays[overlay]}
    assert theirs == ours


def test_each_replica_is_a_bank_process_of_its_own(overlays: dict[str, list[Manifest]]) -> None:
    """One pod, one volume, one certificate and one signing key per replica,
    a headless Service for its address, probes and resources as a bank's."""
    objects = overlays["prod"]
    sets, services = _named(objects, "StatefulSet"), _named(objects, "Service")
    bank_container = _pod(sets["bank-alpha"])[1]
    for i, name in enumerate(REPLICAS):
        sts = sets[name]
        pod, container = _pod(sts)
        assert sts["spec"]["replicas"] == 1
        assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["data"]
        assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
        assert _args(container, "--replica") == [f"vault-{i}"]
        assert _args(container, "--db") == [f"/data/replica-vault-{i}.db"]
        mounted = {
            source["secret"]["name"]
            for volume in pod["volumes"]
            for source in volume.get("projected", {}).get("sources", [])
            if "secret" in source
        }
        # Its own keys only: one replica's compromise must not hand over a quorum's.
        assert mounted == {f"strife-{name}", f"strife-bft-{name}"}
        labels = sts["spec"]["template"]["metadata"]["labels"]
        service = services[name]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term[0]["podAffinityTerm"]["labelSelector"] == {
            "matchLabels": {GROUP_LABEL: "vault"}
        }
        assert container["resources"] == bank_container["resources"]
        assert (
            pod["terminationGracePeriodSeconds"]
            == _pod(sets["bank-alpha"])[0]["terminationGracePeriodSeconds"]
        )
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == HEALTH_PORT
        assert container["readinessProbe"]["grpc"]["service"] == "strife.bft.Replica"
    # prod puts every bank's volume, replicas' too, on 50 Gi.
    storage = {
        sets[n]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        for n in REPLICAS
    }
    assert storage == {"50Gi"}


def test_each_pod_has_one_disruption_budget_and_a_group_loses_at_most_f(
    overlays: dict[str, list[Manifest]],
) -> None:
    """The eviction API refuses pods covered by two budgets, so every pod has one."""
    objects = overlays["prod"]
    budgets = list(_named(objects, "PodDisruptionBudget").values())
    for name, sts in _named(objects, "StatefulSet").items():
        labels = sts["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        assert len(covering) == 1, (name, [b["metadata"]["name"] for b in covering])
        if name in REPLICAS:
            assert covering[0]["metadata"]["name"] == "strife-bank-vault"
            assert covering[0]["spec"]["maxUnavailable"] == 1  # f, of 4 replicas
    seven = parse_topology(
        {"banks": [{"name": "a"}], "replicated_banks": [{"name": "vault", "replicas": 7}]},
        Path("."),
    )
    seven_budgets = _named(render(seven).base["disruptionbudgets.yaml"], "PodDisruptionBudget")
    assert seven_budgets["strife-bank-vault"]["spec"]["maxUnavailable"] == 2


def test_dev_seeds_every_replica_alike_and_prod_seeds_none(
    overlays: dict[str, list[Manifest]],
) -> None:
    seeds = _named(overlays["dev"], "ConfigMap")["strife-seeds"]
    assert '"username": "vault-1"' in seeds["data"]["vault.json"]
    for overlay, expected in (("dev", ["/seeds/vault.json"]), ("prod", [])):
        for name in REPLICAS:
            container = _pod(_named(overlays[overlay], "StatefulSet")[name])[1]
            assert _args(container, "--seed") == expected


def test_a_byzantine_replica_or_a_clashing_name_is_refused() -> None:
    lying = parse_topology(
        {
            "banks": [{"name": "alpha"}],
            "replicated_banks": [{"name": "vault", "byzantine": {"1": "wrong-results"}}],
        },
        Path("."),
    )
    with pytest.raises(RenderError, match="byzantine"):
        render(lying)
    clash = parse_topology(
        {"banks": [{"name": "vault-0"}], "replicated_banks": [{"name": "vault"}]}, Path(".")
    )
    with pytest.raises(RenderError, match="bank-vault-0"):
        render(clash)


# -------------------------------------------------- what the pods will read


Lookup = Callable[[str, str], str | bytes | None]


def _read(pod: Manifest, container: Manifest, path: str) -> tuple[str, str, str]:
    """What a kubelet would put at `path` in this container: the Secret or
    ConfigMap key a mounted projected volume maps there, as (kind, name, key)."""
    for mount in container["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        for source in volume.get("projected", {}).get("sources", []):
            kind = "secret" if "secret" in source else "configMap"
            for item in source[kind]["items"]:
                if item["path"] == path.removeprefix(prefix):
                    return kind, source[kind]["name"], item["key"]
    raise AssertionError(f"nothing is mounted at {path}")


def _check_pods_agree(objects: list[Manifest], secrets: Lookup, configs: Lookup) -> None:
    """Every replica and gateway pod, read as its process would read it."""
    sets, services = _named(objects, "StatefulSet"), _named(objects, "Service")

    def content(pod: Manifest, container: Manifest, path: str) -> Any:
        kind, name, key = _read(pod, container, path)
        found = (secrets if kind == "secret" else configs)(name, key)
        assert found is not None, f"{kind} {name} has no {key}"
        return found

    identities = {i.label: i for i in planned_identities(load_topology(SOURCE))}
    group: Group | None = None
    for name in REPLICAS:
        pod, container = _pod(sets[name])
        group = Group.from_mapping(
            tomllib.loads(content(pod, container, _args(container, "--group")[0]))
        )
        replica = _args(container, "--replica")[0]
        index = group.index_of(replica)
        assert index is not None
        entry = group.replicas[index]
        # Its key is the one the group lists for it (strife-bank-replica refuses otherwise).
        key = content(pod, container, _args(container, "--signing-key")[0])
        assert public_key(key) == entry.public_key
        # Its certificate is the identity named like the replica.
        certs = _args(container, "--certs")[0]
        assert identities[certs.removeprefix("/certs/")].name == replica
        kind, secret, _key = _read(pod, container, f"{certs}/tls.crt")
        assert (kind, secret) == ("secret", identities[certs.removeprefix("/certs/")].secret)
        # Its address is a Service that reaches this pod's gRPC port.
        host, port = entry.address.rsplit(":", 1)
        service = services[host]
        labels = sets[name]["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
        target = next(p for p in service["spec"]["ports"] if p["port"] == int(port))
        assert any(
            p["name"] == target["targetPort"] and p["containerPort"] == GRPC_PORT
            for p in container["ports"]
        )
        assert labels[GROUP_LABEL] == group.bank
    assert group is not None and [c.identity for c in group.clients] == [
        "gateway/gw-1",
        "gateway/gw-2",
        "admin/admin",
    ]
    gateways = sets["gw"]
    pod, container = _pod(gateways)
    for ordinal in range(1, 1 + gateways["spec"]["replicas"]):
        pod_name = f"gw-{ordinal}"
        banks = dict(b.split("=", 1) for b in _args(container, "--bank"))
        assert banks == {"vault": "bft:/groups/vault.toml"}
        text = content(pod, container, banks["vault"].removeprefix("bft:"))
        listed = {c.identity: c.public_key for c in Group.from_mapping(tomllib.loads(text)).clients}
        path = _args(container, "--bft-signing-key")[0].replace("$(POD_NAME)", pod_name)
        assert public_key(content(pod, container, path)) == listed[f"gateway/{pod_name}"]


def test_the_job_issues_what_the_dev_pods_read(overlays: dict[str, list[Manifest]]) -> None:
    objects = overlays["dev"]
    job = _named(objects, "Job")["strife-issue-secrets"]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    store = FakeStore()
    issue_missing(store, [parse_identity_arg(a) for a in _args({"args": args}, "--identity")], "td")
    groups = [parse_layout_arg(a) for a in _args({"args": args}, "--bft-group")]
    written = issue_group_keys(store, groups, _args({"args": args}, "--bft-client"))
    assert written[-1] == "strife-bft-vault"
    _check_pods_agree(
        objects,
        lambda name, key: store.secrets.get(name, {}).get(key),
        lambda name, key: store.configs.get(name, {}).get(key),
    )
    role = _named(objects, "Role")["strife-issue-secrets"]
    updatable = [r for r in role["rules"] if "update" in r["verbs"]]
    assert updatable == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["strife-bft-vault"],
            "verbs": ["get", "update"],
        }
    ]


def test_the_offline_command_issues_what_the_prod_pods_read(
    overlays: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    out = tmp_path / "keys" / "bft-keys.yaml"
    runner = CliRunner()
    result = runner.invoke(deploy, ["issue-bft-keys", "--config", str(SOURCE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    manifests = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert validate_objects(manifests, kubernetes_versions()) == []
    store = ManifestStore(manifests)
    prod = overlays["prod"]
    _check_pods_agree(
        prod,
        lambda name, key: (store.get(name) or {}).get(key),
        lambda name, key: (store.get_config(name) or {}).get(key),
    )
    # Every Secret a prod pod mounts comes from cert-manager or from this file.
    issued = {c["spec"]["secretName"] for c in _named(prod, "Certificate").values()}
    issued |= {m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"}
    for obj in _named(prod, "StatefulSet").values():
        for volume in _pod(obj)[0]["volumes"]:
            for source in volume.get("projected", {}).get("sources", []):
                if "secret" in source:
                    assert source["secret"]["name"] in issued
    # Run again: the same keys, nothing new.
    again = runner.invoke(deploy, ["issue-bft-keys", "--config", str(SOURCE), "--out", str(out)])
    assert again.exit_code == 0 and "nothing new" in again.output
    assert [d for d in yaml.safe_load_all(out.read_text()) if d] == manifests


def test_keys_are_kept_and_the_group_file_follows_a_new_gateway() -> None:
    small = load_topology(SOURCE)
    store = FakeStore()
    first = issue_group_keys(store, layouts(small, GRPC_PORT), clients(small))
    replica_keys = {n: store.secrets[n] for n in first if n.startswith("strife-bft-bank-")}
    assert len(replica_keys) == 4
    assert issue_group_keys(store, layouts(small, GRPC_PORT), clients(small)) == []
    assert store.rewrites == []
    grown = parse_topology(
        {
            "banks": [{"name": "alpha"}],
            "replicated_banks": [{"name": "vault"}],
            "gateways": {"count": 3},
        },
        Path("."),
    )
    written = issue_group_keys(store, layouts(grown, GRPC_PORT), clients(grown))
    assert written == [key_secret("gateway/gw-3"), "strife-bft-vault"]
    assert store.rewrites == ["strife-bft-vault"]
    assert all(store.secrets[n] is data for n, data in replica_keys.items())
    group = Group.from_mapping(tomllib.loads(store.configs["strife-bft-vault"][GROUP_FILE]))
    gw3 = public_key(store.secrets[key_secret("gateway/gw-3")][SIGNING_KEY])
    assert {c.identity: c.public_key for c in group.clients}["gateway/gw-3"] == gw3
    for entry in group.replicas:
        secret = store.secrets[key_secret(f"bank/{entry.name}")]
        assert public_key(secret[SIGNING_KEY]) == entry.public_key


# ----------------------------------------------------------- the network


def _labels_of(objects: list[Manifest], name: str) -> dict[str, str]:
    labels: dict[str, str] = _named(objects, "StatefulSet")[name]["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def test_replicas_are_reached_by_what_their_table_allows() -> None:
    """Two groups, so that one group's replicas are shown not to reach the other's."""
    topology = parse_topology(
        {
            "banks": [{"name": "alpha"}],
            "replicated_banks": [{"name": "vault"}, {"name": "safe"}],
        },
        Path("."),
    )
    objects = [o for files in render(topology).base.values() for o in files]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    vault0, vault1 = _labels_of(objects, "bank-vault-0"), _labels_of(objects, "bank-vault-1")
    safe0 = _labels_of(objects, "bank-safe-0")
    plain, gateway = _labels_of(objects, "bank-alpha"), _labels_of(objects, "gw")
    assert replica_callers() == frozenset({"bank", "gateway", "admin"})
    assert admitted(policies, vault1, vault0, GRPC_PORT)  # peers of one group
    assert admitted(policies, gateway, vault0, GRPC_PORT)  # the f + 1 client
    assert admitted(policies, {**PART_OF, ROLE_LABEL: "admin"}, vault0, GRPC_PORT)  # auditor
    assert not admitted(policies, safe0, vault0, GRPC_PORT)  # another group
    assert not admitted(policies, plain, vault0, GRPC_PORT)  # a plain bank
    for role in set(ROLES) - {"bank", "gateway", "admin"}:
        assert not admitted(policies, {**PART_OF, ROLE_LABEL: role}, vault0, GRPC_PORT), role
    # Replicas reach gateways (their resolvers' GetDecision) and the balancer.
    assert admitted(policies, vault0, gateway, GRPC_PORT)
    assert admitted(policies, vault0, _balancer_labels(objects), GRPC_PORT)


def _balancer_labels(objects: list[Manifest]) -> dict[str, str]:
    labels: dict[str, str] = _named(objects, "Deployment")["balancer"]["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


def test_a_widened_replica_table_widens_the_policy() -> None:
    widened = AuthzTable({INVOKE: [*AUTHZ.allowed_roles(INVOKE), "client"]})
    callers = replica_callers(widened)
    assert "client" in callers
    policy = group_policy("vault", callers, grpc_port=GRPC_PORT)
    replica = {**PART_OF, ROLE_LABEL: "bank", GROUP_LABEL: "vault"}
    assert admitted([policy], {ROLE_LABEL: "client"}, replica, GRPC_PORT)
    assert not admitted(
        [group_policy("vault", replica_callers(), grpc_port=GRPC_PORT)],
        {ROLE_LABEL: "client"},
        replica,
        GRPC_PORT,
    )


def test_keys_read_back_from_a_cluster_dump_are_kept(tmp_path: Path) -> None:
    """`kubectl get secrets,configmaps -o yaml` (a List, other Secrets in it)
    as the offline command's file: its signing keys stay, nothing else is carried."""
    first = tmp_path / "first.yaml"
    result = CliRunner().invoke(
        deploy, ["issue-bft-keys", "--config", str(SOURCE), "--out", str(first)]
    )
    assert result.exit_code == 0, result.output
    issued = [d for d in yaml.safe_load_all(first.read_text()) if d]
    for obj in issued:
        obj["metadata"]["resourceVersion"] = "42"  # what the API server adds
    ca = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "strife-ca"}, "data": {}}
    dump = tmp_path / "dump.yaml"
    dump.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [ca, *issued]}))
    result = CliRunner().invoke(
        deploy, ["issue-bft-keys", "--config", str(SOURCE), "--out", str(dump)]
    )
    assert result.exit_code == 0 and "nothing new" in result.output, result.output
    again = [d for d in yaml.safe_load_all(dump.read_text()) if d]
    assert "strife-ca" not in {o["metadata"]["name"] for o in again}
    assert [o.get("data") for o in again] == [o.get("data") for o in issued]
