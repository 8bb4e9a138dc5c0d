"""Identities as Secrets without cert-manager: a Job that issues them in-cluster.

The Job runs `python -m strife.deploy issue-secrets`, which does what
`strife-certs dev` does for a local cluster, against the Kubernetes API
instead of a folder: it keeps the CA Secret if there is one (else creates
it), and issues only the identities whose Secrets are missing, so running it
again after adding a bank or a gateway issues just those. The Secrets have
cert-manager's layout (`ca.crt`, `tls.crt`, `tls.key`), so the workloads
mount either route's the same way, and a cert-manager CA issuer can sign
with the CA Secret later. Given replicated banks (`--bft-group`), it also
issues their signing keys and writes their group files
(`strife.deploy.replicated`).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from strife.deploy.identities import CA_SECRET, TOKEN_KEY_SECRET, Identity
from strife.deploy.replicated import GroupLayout, layout_arg
from strife.security import certs

Manifest = dict[str, Any]

SERVICE_ACCOUNT = "strife-issue-secrets"
_SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_LABELS = {"app.kubernetes.io/part-of": "strife"}


class SecretStore(Protocol):
    def get(self, name: str) -> dict[str, bytes] | None: ...

    def create(self, name: str, data: dict[str, bytes], kind: str) -> None: ...


def identity_arg(identity: Identity) -> str:
    """`role/name`, or `bank/host:alpha,beta` for a host serving several banks."""
    served = f":{','.join(identity.serves)}" if identity.serves else ""
    return f"{identity.role}/{identity.name}{served}"


def parse_identity_arg(value: str) -> Identity:
    head, _, served = value.partition(":")
    role, sep, name = head.partition("/")
    if not sep or role not in certs.SERVICE_ROLES or not name:
        raise ValueError(f"expected ROLE/NAME[:BANK,...] with a service role, got {value!r}")
    return Identity(role, name, tuple(b for b in served.split(",") if b))


def issue_missing(
    store: SecretStore, identities: Iterable[Identity], trust_domain: str
) -> list[str]:
    """Create the CA, identity and token-key Secrets that do not exist yet;
    the names created, in order."""
    created: list[str] = []
    found = store.get(CA_SECRET)
    if found is None:
        ca = certs.create_ca(trust_domain=trust_domain)
        ca_pem = certs.cert_to_pem(ca.cert)
        store.create(
            CA_SECRET,
            {"ca.crt": ca_pem, "tls.crt": ca_pem, "tls.key": certs.key_to_pem(ca.key)},
            "kubernetes.io/tls",
        )
        created.append(CA_SECRET)
    else:
        ca = certs.Authority(
            key=certs.key_from_pem(found["tls.key"]), cert=certs.cert_from_pem(found["tls.crt"])
        )
    for identity in identities:
        if store.get(identity.secret) is not None:
            continue
        leaf = certs.issue(
            ca,
            role=identity.role,
            name=identity.name,
            trust_domain=trust_domain,
            hosts=(),
            serves=identity.serves,
        )
        store.create(
            identity.secret,
            {
                "ca.crt": certs.cert_to_pem(ca.cert),
                "tls.crt": certs.cert_to_pem(leaf.cert),
                "tls.key": certs.key_to_pem(leaf.key),
            },
            "kubernetes.io/tls",
        )
        created.append(identity.secret)
    if store.get(TOKEN_KEY_SECRET) is None:
        key = Ed25519PrivateKey.generate()
        store.create(TOKEN_KEY_SECRET, {"tls.key": certs.key_to_pem(key)}, "Opaque")
        created.append(TOKEN_KEY_SECRET)
    return created


class InClusterSecrets:
    """Secrets (and the replicated banks' ConfigMaps) of the pod's own
    namespace, through the API server, with the pod's service-account token
    (stdlib only: the image carries no client)."""

    def __init__(self, sa_dir: Path = _SA_DIR) -> None:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        self.namespace = (sa_dir / "namespace").read_text().strip()
        namespace_url = f"https://{host}:{port}/api/v1/namespaces/{self.namespace}"
        self._base = f"{namespace_url}/secrets"
        self._configmaps = f"{namespace_url}/configmaps"
        self._token = (sa_dir / "token").read_text().strip()
        self._tls = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))

    def _call(self, method: str, url: str, body: Manifest | None = None) -> Manifest | None:
        request = urllib.request.Request(
            url,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=self._tls, timeout=30) as response:
                answer: Manifest = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            # 404: no such Secret; 409: another run created it first.
            if exc.code in (404, 409):
                return None
            raise

    def get(self, name: str) -> dict[str, bytes] | None:
        found = self._call("GET", f"{self._base}/{name}")
        if found is None:
            return None
        return {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}

    def create(self, name: str, data: dict[str, bytes], kind: str) -> None:
        self._call(
            "POST",
            self._base,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "labels": dict(_LABELS)},
                "type": kind,
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            },
        )

    def get_config(self, name: str) -> dict[str, str] | None:
        found = self._call("GET", f"{self._configmaps}/{name}")
        return None if found is None else dict(found.get("data") or {})

    def put_config(self, name: str, data: dict[str, str], *, replace: bool) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": dict(_LABELS)},
            "data": data,
        }
        if replace:
            self._call("PUT", f"{self._configmaps}/{name}", body)
        else:
            self._call("POST", self._configmaps, body)


def issue_secrets_job(
    identities: Iterable[Identity],
    trust_domain: str,
    groups: Sequence[GroupLayout] = (),
    clients: Sequence[str] = (),
) -> list[Manifest]:
    """The Job, its service account, and a Role that may read and create
    Secrets, and with replicated banks read, create and rewrite their group
    ConfigMaps, nothing else."""
    args = ["-m", "strife.deploy", "issue-secrets", "--trust-domain", trust_domain]
    args += [a for identity in identities for a in ("--identity", identity_arg(identity))]
    args += [a for group in groups for a in ("--bft-group", layout_arg(group))]
    args += [a for client in clients if groups for a in ("--bft-client", client)]
    rules: list[Manifest] = [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}
    ]
    if groups:
        # `create` cannot be limited by name; reading and rewriting can.
        rules += [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [g.config_map for g in groups],
                "verbs": ["get", "update"],
            },
        ]
    labels = {**_LABELS, "app.kubernetes.io/component": "issue-secrets"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "labels": dict(labels)},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": SERVICE_ACCOUNT, "labels": dict(labels)},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": SERVICE_ACCOUNT, "labels": dict(labels)},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": SERVICE_ACCOUNT,
            },
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT}],
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "strife-issue-secrets", "labels": dict(labels)},
            "spec": {
                "backoffLimit": 4,
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "restartPolicy": "OnFailure",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "runAsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "issue-secrets",
                                "image": "strife",
                                "command": ["python"],
                                "args": args,
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "64Mi"},
                                    "limits": {"memory": "128Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                            }
                        ],
                    },
                },
            },
        },
    ]
