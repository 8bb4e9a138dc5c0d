"""The identities a topology needs in a cluster, and how each becomes a Secret.

One Secret per process identity, named `strife-<label>` with the keys of an
identity folder (`ca.crt`, `tls.crt`, `tls.key`), so a Secret mounted as a
volume is exactly what `--certs DIR` reads. Two routes fill them: cert-manager
`Certificate`s (rendered here) or the `issue-secrets` Job (`secrets.py`);
both issue what `strife-certs` issues: the SPIFFE id as the one URI SAN and
the identity host names callers verify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strife.bft.cluster import replica_names
from strife.cluster.topology import Topology
from strife.security import certs

Manifest = dict[str, Any]

CA_SECRET = "strife-ca"
CA_ISSUER = "strife-ca"
BOOTSTRAP_ISSUER = "strife-selfsigned"
TOKEN_KEY_SECRET = "strife-token-signing"
TOKEN_KEY_FILE = "token-signing.key"
# Leaves are read at start: a renewed one is picked up by the rolling restart
# an operator runs inside `renewBefore` (docs/deployment.md).
LEAF_DURATION = "2160h"  # 90 days
LEAF_RENEW_BEFORE = "720h"  # 30 days
CA_DURATION = "87600h"  # 10 years, as `strife-certs init`


@dataclass(frozen=True)
class Identity:
    role: str
    name: str
    serves: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The identity folder's name, as `strife-certs dev` writes it."""
        return "balancer" if self.role == "balancer" else f"{self.role}-{self.name}"

    @property
    def secret(self) -> str:
        return f"strife-{self.label}"


def planned_identities(topology: Topology) -> list[Identity]:
    """The balancer, every bank, every bank host (naming its banks), every
    replica of a replicated bank (`bank/vault-0`, as a local cluster names it)
    and every gateway."""
    plan = [Identity("balancer", "balancer")]
    plan += [Identity("bank", bank.name) for bank in topology.banks]
    for process, banks in topology.bank_processes().items():
        if banks != (process,):
            plan.append(Identity("bank", process, serves=banks))
    plan += [
        Identity("bank", name)
        for spec in topology.replicated
        for name in replica_names(spec.name, spec.replicas)
    ]
    plan += [Identity("gateway", name) for name in topology.gateways]
    return plan


def dns_names(identity: Identity, trust_domain: str) -> list[str]:
    """The host names `strife-certs` puts in a service certificate."""
    names = [identity.name, *(b for b in identity.serves if b != identity.name)]
    return [
        certs.role_host(trust_domain, identity.role),
        *(certs.identity_host(trust_domain, identity.role, n) for n in names),
    ]


def certificate(identity: Identity, trust_domain: str) -> Manifest:
    return {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": identity.secret, "labels": {"app.kubernetes.io/part-of": "strife"}},
        "spec": {
            "secretName": identity.secret,
            "commonName": identity.name,
            "subject": {
                "organizations": [certs.ORGANIZATION],
                "organizationalUnits": [identity.role],
            },
            "uris": [certs.spiffe_id(trust_domain, identity.role, identity.name)],
            "dnsNames": dns_names(identity, trust_domain),
            "duration": LEAF_DURATION,
            "renewBefore": LEAF_RENEW_BEFORE,
            "privateKey": {
                "algorithm": "ECDSA",
                "size": 256,
                "encoding": "PKCS8",
                "rotationPolicy": "Always",
            },
            "usages": ["digital signature", "server auth", "client auth"],
            "issuerRef": {"name": CA_ISSUER, "kind": "Issuer", "group": "cert-manager.io"},
        },
    }


def cert_manager_objects(topology: Topology, trust_domain: str) -> list[Manifest]:
    """A CA bootstrapped by a self-signed issuer, an issuer over it, one
    Certificate per identity, and the gateways' shared token-signing key."""
    labels = {"app.kubernetes.io/part-of": "strife"}
    objects: list[Manifest] = [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": BOOTSTRAP_ISSUER, "labels": dict(labels)},
            "spec": {"selfSigned": {}},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": CA_SECRET, "labels": dict(labels)},
            "spec": {
                "isCA": True,
                "secretName": CA_SECRET,
                "commonName": "Strife Private CA",
                "subject": {"organizations": [certs.ORGANIZATION]},
                # The CA names its trust domain, as `strife-certs init` does.
                "uris": [f"spiffe://{trust_domain}"],
                "duration": CA_DURATION,
                "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8"},
                "usages": ["cert sign", "crl sign"],
                "issuerRef": {
                    "name": BOOTSTRAP_ISSUER,
                    "kind": "Issuer",
                    "group": "cert-manager.io",
                },
            },
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": CA_ISSUER, "labels": dict(labels)},
            "spec": {"ca": {"secretName": CA_SECRET}},
        },
    ]
    objects += [certificate(identity, trust_domain) for identity in planned_identities(topology)]
    # Every gateway replica signs and checks customers' tokens with one Ed25519
    # key. A Certificate that never rotates its key is how cert-manager keeps
    # one: the gateways read its tls.key and nothing else.
    objects.append(
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": TOKEN_KEY_SECRET, "labels": dict(labels)},
            "spec": {
                "secretName": TOKEN_KEY_SECRET,
                "commonName": "strife token signing",
                "duration": CA_DURATION,
                "privateKey": {
                    "algorithm": "Ed25519",
                    "encoding": "PKCS8",
                    "rotationPolicy": "Never",
                },
                "usages": ["digital signature"],
                "issuerRef": {"name": CA_ISSUER, "kind": "Issuer", "group": "cert-manager.io"},
            },
        }
    )
    return objects
