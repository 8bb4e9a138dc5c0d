"""A topology TOML rendered as Kubernetes objects: the kustomize base, its
components and the `dev` and `prod` overlays.

The topology is the one `strife cluster up` runs (`strife.cluster.topology`),
so a local cluster and a Kubernetes one come from one description: each bank
process (a bank, or a `host` serving several) is a StatefulSet with a volume
for its SQLite files; the gateways are one StatefulSet whose pod names are the
coordinator names banks record; the balancer, whose registry is rebuilt from
heartbeats, is a Deployment behind a Service. Each replica of a replicated
bank is a bank process of its own (`bank-vault-0`), with its own volume, its
own certificate and signing key, and a headless Service whose name is its
address in the group file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from strife.bft.node import SERVICE as REPLICA_SERVICE
from strife.cluster.seeds import generated_rows
from strife.cluster.topology import BankSpec, ReplicatedBankSpec, Topology
from strife.deploy.identities import (
    TOKEN_KEY_FILE,
    TOKEN_KEY_SECRET,
    Identity,
    cert_manager_objects,
    planned_identities,
)
from strife.deploy.networkpolicy import (
    GROUP_LABEL,
    ROLE_LABEL,
    allowed_callers,
    group_policy,
    network_policies,
    replica_callers,
)
from strife.deploy.replicated import (
    GROUP_FILE,
    SIGNING_KEY,
    GroupLayout,
    clients,
    key_label,
    key_secret,
    layouts,
    replica_key_identity,
    replica_process,
)
from strife.deploy.secrets_job import issue_secrets_job
from strife.security.certs import DEFAULT_TRUST_DOMAIN

Manifest = dict[str, Any]

IMAGE = "strife"
GRPC_PORT = 7400
HEALTH_PORT = 7401
METRICS_PORT = 7402
# Every server's --grace; the pod gets the grace plus the time to close its
# databases and deregister before the kubelet's SIGKILL.
GRACE_S = 10.0
SHUTDOWN_MARGIN_S = 5
RUN_AS = 10001
# Measured resident memory (docs/deployment.md, "Resources"), with headroom.
MEMORY_REQUEST = {"bank": "128Mi", "bank-host": "160Mi", "gateway": "96Mi", "balancer": "80Mi"}
MEMORY_LIMIT = {"bank": "256Mi", "bank-host": "320Mi", "gateway": "192Mi", "balancer": "160Mi"}
CPU_REQUEST = {"bank": "250m", "bank-host": "500m", "gateway": "250m", "balancer": "100m"}
STORAGE = {"bank": "10Gi", "gateway": "10Gi"}
SERVICE_NAMES = {
    "bank": "strife.v1.BankService",
    "gateway": "strife.v1.PaymentGateway",
    "balancer": "strife.v1.LoadBalancer",
    "replica": REPLICA_SERVICE,
}
# Where pods find the replicated banks' group files and their signing keys.
GROUPS_DIR = "/groups"
SIGNING_KEYS_DIR = "bft"
_ORDINAL = re.compile(r"(?P<prefix>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<n>[0-9]+)")


class RenderError(ValueError):
    """A topology that has no faithful Kubernetes shape."""


@dataclass(frozen=True)
class Patch:
    """A JSON 6902 patch and the objects it applies to, as kustomize's `patches`."""

    kind: str
    ops: tuple[Manifest, ...]
    name: str | None = None
    label_selector: str | None = None

    def as_kustomize(self) -> Manifest:
        target: Manifest = {"kind": self.kind}
        if self.name:
            target["name"] = self.name
        if self.label_selector:
            target["labelSelector"] = self.label_selector
        return {"target": target, "patch": yaml.safe_dump(list(self.ops), sort_keys=False)}


@dataclass(frozen=True)
class Overlay:
    namespace: str
    image: str
    tag: str
    components: tuple[str, ...]
    patches: tuple[Patch, ...] = ()
    files: dict[str, list[Manifest]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rendered:
    """Files of objects, per kustomization folder."""

    base: dict[str, list[Manifest]]
    components: dict[str, dict[str, list[Manifest]]]
    overlays: dict[str, Overlay]


@dataclass(frozen=True)
class Gateways:
    """The gateways' StatefulSet: its name and first ordinal make the replicas'
    pod names, which are their coordinator names (gw-1, gw-2, ...)."""

    statefulset: str
    first: int
    replicas: int


def gateway_set(names: tuple[str, ...]) -> Gateways:
    """The StatefulSet whose pods are exactly these names, or a RenderError."""
    parsed = [_ORDINAL.fullmatch(n) for n in names]
    if not all(parsed) or len({m["prefix"] for m in parsed if m}) != 1:
        raise RenderError(
            "gateway names must be PREFIX-N with one lowercase prefix (gw-1, gw-2, ...): "
            "they are the pod names of one StatefulSet"
        )
    numbers = [int(m["n"]) for m in parsed if m]
    first = numbers[0]
    if numbers != list(range(first, first + len(numbers))):
        raise RenderError("gateway numbers must be consecutive and in order (gw-1, gw-2, ...)")
    prefix = parsed[0]["prefix"] if parsed[0] else ""
    return Gateways(statefulset=prefix, first=first, replicas=len(names))


def _labels(component: str, instance: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "strife",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": instance,
        "app.kubernetes.io/part-of": "strife",
        ROLE_LABEL: component,
    }


def _selector(component: str, instance: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": instance, ROLE_LABEL: component}


def _server_args(listen: str) -> list[str]:
    return [
        "--listen",
        listen,
        "--health-listen",
        f"0.0.0.0:{HEALTH_PORT}",
        "--metrics-listen",
        f"0.0.0.0:{METRICS_PORT}",
        "--grace",
        f"{GRACE_S:g}",
        "--log-format",
        "json",
    ]


def _signing_key_path(identity: str) -> str:
    """Where a BFT signing key is mounted, relative to /certs: `bft/bank-vault-0.key`."""
    return f"{SIGNING_KEYS_DIR}/{key_label(identity)}.key"


def _identity_volume(
    identities: list[Identity], token_key: bool = False, signing_keys: Sequence[str] = ()
) -> Manifest:
    """One read-only folder, /certs, holding `<label>/{ca.crt,tls.crt,tls.key}`
    for each identity (what --certs and --bank-certs read), and the BFT signing
    keys of `signing_keys` (client identities) under `bft/`."""
    sources: list[Manifest] = [
        {
            "secret": {
                "name": identity.secret,
                "items": [
                    {"key": key, "path": f"{identity.label}/{key}"}
                    for key in ("ca.crt", "tls.crt", "tls.key")
                ],
            }
        }
        for identity in identities
    ]
    if token_key:
        sources.append(
            {
                "secret": {
                    "name": TOKEN_KEY_SECRET,
                    "items": [{"key": "tls.key", "path": TOKEN_KEY_FILE}],
                }
            }
        )
    sources += [
        {
            "secret": {
                "name": key_secret(identity),
                "items": [{"key": SIGNING_KEY, "path": _signing_key_path(identity)}],
            }
        }
        for identity in signing_keys
    ]
    # Group-readable: the files belong to root and the pod's fsGroup.
    return {"name": "identities", "projected": {"defaultMode": 0o440, "sources": sources}}


def _groups_volume(groups: Sequence[GroupLayout]) -> Manifest:
    """/groups/<bank>.toml for each group: the group files, public data."""
    return {
        "name": "groups",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {
                    "configMap": {
                        "name": group.config_map,
                        "items": [{"key": GROUP_FILE, "path": f"{group.bank}.toml"}],
                    }
                }
                for group in groups
            ],
        },
    }


def _group_file(bank: str) -> str:
    return f"{GROUPS_DIR}/{bank}.toml"


def _probe(service: str, period_s: int, failures: int) -> Manifest:
    return {
        "grpc": {"port": HEALTH_PORT, "service": service},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _container(
    role: str, sizing: str, command: str, args: list[str], mounts: list[Manifest]
) -> Manifest:
    return {
        "name": role,
        "image": IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": [command],
        "args": args,
        "env": [
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # Up to a minute to open (and recover) its databases before liveness counts.
        "startupProbe": _probe("", 2, 30),
        "livenessProbe": _probe("", 10, 3),
        "readinessProbe": _probe(SERVICE_NAMES[role], 5, 2),
        "resources": {
            "requests": {"cpu": CPU_REQUEST[sizing], "memory": MEMORY_REQUEST[sizing]},
            "limits": {"memory": MEMORY_LIMIT[sizing]},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "identities", "mountPath": "/certs", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
    }


def _pod_spec(container: Manifest, volumes: list[Manifest]) -> Manifest:
    return {
        "terminationGracePeriodSeconds": math.ceil(GRACE_S) + SHUTDOWN_MARGIN_S,
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {}}],
    }


def _claim(size: str) -> Manifest:
    return {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def _headless(name: str, component: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": _labels(component, name)},
        "spec": {
            "clusterIP": "None",
            "selector": _selector(component, name),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def bank_objects(topology: Topology, process: str, banks: tuple[str, ...]) -> list[Manifest]:
    """One bank process: its headless Service and its one-replica StatefulSet."""
    name = f"bank-{process}"
    hosted = banks != (process,)
    identities = [Identity("bank", process, serves=banks if hosted else ())]
    if hosted:
        identities += [Identity("bank", bank) for bank in banks]
    args = [
        "--name",
        process,
        *(a for bank in banks if hosted for a in ("--bank", bank)),
        "--data-dir",
        "/data",
        "--certs",
        f"/certs/bank-{process}",
        *(["--bank-certs", "/certs"] if hosted else []),
        "--balancer",
        f"balancer:{GRPC_PORT}",
        "--in-doubt-timeout",
        f"{topology.timeouts.in_doubt_s:g}",
        # Creates each bank's database on the volume's first start; an existing
        # database of the same bank is left as it is (docs/deployment.md).
        "--init",
        *_server_args(f"$(POD_IP):{GRPC_PORT}"),
    ]
    container = _container(
        "bank",
        "bank-host" if hosted else "bank",
        "strife-bank",
        args,
        [{"name": "data", "mountPath": "/data"}],
    )
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": _labels("bank", name)},
        "spec": {
            "serviceName": name,
            # One writer per database: never two pods of one bank.
            "replicas": 1,
            "selector": {"matchLabels": _selector("bank", name)},
            "template": {
                "metadata": {"labels": _labels("bank", name)},
                "spec": _pod_spec(container, [_identity_volume(identities)]),
            },
            "volumeClaimTemplates": [_claim(STORAGE["bank"])],
        },
    }
    return [_headless(name, "bank"), statefulset]


def replica_objects(
    topology: Topology, spec: ReplicatedBankSpec, layout: GroupLayout
) -> list[Manifest]:
    """A replicated bank: per replica, a one-pod StatefulSet with its own
    volume and a headless Service whose name is the replica's address in the
    group file. One StatefulSet per replica rather than one of n pods: a pod
    template is the same for every pod, so one set's pods would all mount
    every replica's signing key and certificate, and one compromised replica
    would hold a quorum's keys; PBFT tolerates f faulty replicas only if each
    holds its own key alone."""
    objects: list[Manifest] = []
    for name in layout.names:
        process = replica_process(name)
        labels = {
            **_labels("bank", process),
            "app.kubernetes.io/component": "bank-replica",
            GROUP_LABEL: spec.name,
        }
        args = [
            "--group",
            _group_file(spec.name),
            "--replica",
            name,
            "--signing-key",
            f"/certs/{_signing_key_path(replica_key_identity(name))}",
            "--db",
            f"/data/replica-{name}.db",
            "--certs",
            f"/certs/{process}",
            # Where the resolver finds the coordinators of legs left in doubt.
            "--balancer",
            f"balancer:{GRPC_PORT}",
            "--in-doubt-timeout",
            f"{topology.timeouts.in_doubt_s:g}",
            # Peers dial the Service's name; nothing advertises this address.
            *_server_args(f"0.0.0.0:{GRPC_PORT}"),
        ]
        container = _container(
            "replica",
            "bank",
            "strife-bank-replica",
            args,
            [
                {"name": "data", "mountPath": "/data"},
                {"name": "groups", "mountPath": GROUPS_DIR, "readOnly": True},
            ],
        )
        pod = _pod_spec(
            container,
            [
                _identity_volume(
                    [Identity("bank", name)], signing_keys=[replica_key_identity(name)]
                ),
                _groups_volume([layout]),
            ],
        )
        # Replicas on distinct nodes fail independently, which is what f counts.
        pod["affinity"] = {
            "podAntiAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {GROUP_LABEL: spec.name}},
                        },
                    }
                ]
            }
        }
        service = _headless(process, "bank")
        service["metadata"]["labels"] = dict(labels)
        # The group's peers and clients need a replica's address while it
        # starts or recovers too; PBFT, not readiness, decides whom to trust.
        service["spec"]["publishNotReadyAddresses"] = True
        objects += [
            service,
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": process, "labels": dict(labels)},
                "spec": {
                    "serviceName": process,
                    # One writer per journal.
                    "replicas": 1,
                    "selector": {"matchLabels": _selector("bank", process)},
                    "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
                    "volumeClaimTemplates": [_claim(STORAGE["bank"])],
                },
            },
        ]
    return objects


def gateway_objects(topology: Topology, groups: Sequence[GroupLayout] = ()) -> list[Manifest]:
    gateways = gateway_set(topology.gateways)
    name = gateways.statefulset
    identities = [Identity("gateway", n) for n in topology.gateways]
    args = [
        "--name",
        "$(POD_NAME)",
        "--db",
        "/data/gateway.db",
        "--certs",
        "/certs/gateway-$(POD_NAME)",
        "--token-key",
        f"/certs/{TOKEN_KEY_FILE}",
        "--balancer",
        f"balancer:{GRPC_PORT}",
        "--prepare-timeout",
        f"{topology.timeouts.prepare_s:g}",
        *_server_args(f"$(POD_IP):{GRPC_PORT}"),
    ]
    mounts: list[Manifest] = [{"name": "data", "mountPath": "/data"}]
    keys = [f"gateway/{n}" for n in topology.gateways] if groups else []
    volumes = [_identity_volume(identities, token_key=True, signing_keys=keys)]
    if groups:
        # Replicated banks are reached through their f + 1 client, not the
        # balancer; each gateway signs its requests with its own key, picked
        # by pod name as its certificate is.
        args += [a for g in groups for a in ("--bank", f"{g.bank}=bft:{_group_file(g.bank)}")]
        args += ["--bft-signing-key", f"/certs/{_signing_key_path('gateway/$(POD_NAME)')}"]
        mounts.append({"name": "groups", "mountPath": GROUPS_DIR, "readOnly": True})
        volumes.append(_groups_volume(groups))
    container = _container("gateway", "gateway", "strife-gateway", args, mounts)
    spec = _pod_spec(container, volumes)
    spec["affinity"] = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": _selector("gateway", name)},
                    },
                }
            ]
        }
    }
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "labels": _labels("gateway", name)},
        "spec": {
            "serviceName": name,
            "replicas": gateways.replicas,
            "ordinals": {"start": gateways.first},
            # Replicas are peers: none waits for another to start or stop.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _selector("gateway", name)},
            "template": {"metadata": {"labels": _labels("gateway", name)}, "spec": spec},
            "volumeClaimTemplates": [_claim(STORAGE["gateway"])],
        },
    }
    return [_headless(name, "gateway"), statefulset]


def balancer_objects(topology: Topology) -> list[Manifest]:
    t = topology.timeouts
    args = [
        "--certs",
        "/certs/balancer",
        "--policy",
        topology.policy,
        "--heartbeat-interval",
        f"{t.heartbeat_s:g}",
        "--lease-ttl",
        f"{t.lease_ttl_s:g}",
        *_server_args(f"0.0.0.0:{GRPC_PORT}"),
    ]
    container = _container("balancer", "balancer", "strife-balancer", args, [])
    labels = _labels("balancer", "balancer")
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "balancer", "labels": labels},
            "spec": {
                "selector": _selector("balancer", "balancer"),
                "ports": [
                    {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
                ],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "balancer", "labels": labels},
            "spec": {
                # One registry: two balancers behind one Service would each
                # hear half the heartbeats. Recreate keeps it one at a time.
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": _selector("balancer", "balancer")},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": _pod_spec(
                        container, [_identity_volume([Identity("balancer", "balancer")])]
                    ),
                },
            },
        },
    ]


def disruption_budgets(replicated: Sequence[ReplicatedBankSpec] = ()) -> list[Manifest]:
    """A drain takes at most one bank and one gateway away at a time, and up to
    f replicas of a replicated bank, which serves on with f of them down."""
    budgets: list[Manifest] = [
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {
                "name": f"strife-{role}s",
                "labels": {"app.kubernetes.io/part-of": "strife"},
            },
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {ROLE_LABEL: role}}},
        }
        for role in ("bank", "gateway")
    ]
    if replicated:
        # The eviction API refuses a pod that two budgets cover: replicas have their group's.
        budgets[0]["spec"]["selector"]["matchExpressions"] = [
            {"key": GROUP_LABEL, "operator": "DoesNotExist"}
        ]
    budgets += [
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {
                "name": f"strife-bank-{spec.name}",
                "labels": {"app.kubernetes.io/part-of": "strife"},
            },
            "spec": {
                "maxUnavailable": (spec.replicas - 1) // 3,
                "selector": {"matchLabels": {GROUP_LABEL: spec.name}},
            },
        }
        for spec in replicated
    ]
    return budgets


def seed_config_map(topology: Topology) -> Manifest:
    """Each bank's seed customers (the topology's seed file or generated ones);
    a replicated bank's are its genesis state, the same at every replica."""
    data = {}
    banks: list[BankSpec | ReplicatedBankSpec] = [*topology.banks, *topology.replicated]
    for bank in banks:
        if bank.seed is not None:
            data[f"{bank.name}{bank.seed.suffix}"] = bank.seed.read_text()
        else:
            data[f"{bank.name}.json"] = json.dumps(
                generated_rows(bank.name, bank.customers), indent=1
            )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "strife-seeds", "labels": {"app.kubernetes.io/part-of": "strife"}},
        "data": data,
    }


def _seed_patches(topology: Topology, seeds: Manifest) -> tuple[Patch, ...]:
    """Dev only: every bank process mounts the seeds and loads its banks' rows."""
    files = {key.rsplit(".", 1)[0]: key for key in seeds["data"]}
    patches = []
    for process, banks in topology.bank_processes().items():
        ops: list[Manifest] = [
            {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
            for bank in banks
            for arg in ("--seed", f"/seeds/{files[bank]}")
        ]
        ops += _seed_mount()
        patches.append(Patch("StatefulSet", tuple(ops), name=f"bank-{process}"))
    for group in layouts(topology, GRPC_PORT):
        for name in group.names:
            ops = [
                {"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": arg}
                for arg in ("--seed", f"/seeds/{files[group.bank]}")
            ]
            ops += _seed_mount()
            patches.append(Patch("StatefulSet", tuple(ops), name=replica_process(name)))
    return tuple(patches)


def _seed_mount() -> list[Manifest]:
    """The ops that mount the seeds ConfigMap at /seeds."""
    return [
        {
            "op": "add",
            "path": "/spec/template/spec/volumes/-",
            "value": {"name": "seeds", "configMap": {"name": "strife-seeds"}},
        },
        {
            "op": "add",
            "path": "/spec/template/spec/containers/0/volumeMounts/-",
            "value": {"name": "seeds", "mountPath": "/seeds", "readOnly": True},
        },
    ]


def render(topology: Topology, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Rendered:
    if faulty := [spec.name for spec in topology.replicated if spec.byzantine]:
        raise RenderError(
            f"replicated bank {', '.join(faulty)} has byzantine replicas: a local demo's "
            "fault, not something to deploy; remove `byzantine` to render"
        )
    groups = layouts(topology, GRPC_PORT)
    banks = [
        obj
        for process, served in topology.bank_processes().items()
        for obj in bank_objects(topology, process, served)
    ]
    replicas = [
        obj
        for spec, layout in zip(topology.replicated, groups, strict=True)
        for obj in replica_objects(topology, spec, layout)
    ]
    policies = network_policies(allowed_callers(), grpc_port=GRPC_PORT, metrics_port=METRICS_PORT)
    policies += [group_policy(g.bank, replica_callers(), grpc_port=GRPC_PORT) for g in groups]
    base = {
        "balancer.yaml": balancer_objects(topology),
        "banks.yaml": banks,
        **({"replicated-banks.yaml": replicas} if replicas else {}),
        "gateways.yaml": gateway_objects(topology, groups),
        "networkpolicies.yaml": policies,
        "disruptionbudgets.yaml": disruption_budgets(topology.replicated),
    }
    names = [
        o["metadata"]["name"]
        for files in base.values()
        for o in files
        if o["kind"] == "StatefulSet"
    ]
    if clash := sorted({n for n in names if names.count(n) > 1}):
        raise RenderError(f"two processes would be StatefulSet {', '.join(clash)}")
    components = {
        "cert-manager": {"certificates.yaml": cert_manager_objects(topology, trust_domain)},
        "certs-job": {
            "issue-secrets.yaml": issue_secrets_job(
                planned_identities(topology),
                trust_domain,
                groups,
                clients(topology) if groups else [],
            )
        },
    }
    seeds = seed_config_map(topology)
    storage = "/spec/volumeClaimTemplates/0/spec/resources/requests/storage"
    overlays = {
        # One machine or a small test cluster: identities from the Job, seeded
        # customers, small volumes.
        "dev": Overlay(
            namespace="strife-dev",
            image="localhost/strife",
            tag="dev",
            components=("certs-job",),
            patches=(
                Patch("StatefulSet", ({"op": "replace", "path": storage, "value": "1Gi"},)),
                *_seed_patches(topology, seeds),
            ),
            files={"seeds.yaml": [seeds]},
        ),
        # cert-manager issues and renews the identities; no seeded customers.
        "prod": Overlay(
            namespace="strife",
            image="registry.example.com/strife",
            tag="0.1.0",
            components=("cert-manager",),
            patches=(
                Patch(
                    "StatefulSet",
                    ({"op": "replace", "path": storage, "value": "50Gi"},),
                    label_selector=f"{ROLE_LABEL}=bank",
                ),
            ),
        ),
    }
    return Rendered(base=base, components=components, overlays=overlays)
