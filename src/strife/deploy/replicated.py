"""Replicated banks in a cluster: signing keys as Secrets, group files as ConfigMaps.

A replica group needs what a plain bank does not: an Ed25519 signing key per
replica and per client identity (every gateway, and the admin identity the
auditor uses), and the group file listing each one's public key beside the
replicas' names and addresses (`strife.bft.group`). The keys are the source
of truth and are made once: a replica's journal holds checkpoints signed with
its key, which a new key would leave unverifiable. The group file is derived
from the keys and the plan, so it is rewritten whenever it no longer matches
them (a gateway added), never the other way round.

`issue_group_keys` does this against a store, and both identity routes run
it: the certificate Job in the cluster (`issue-secrets --bft-group ...`, the
`dev` overlay) and `strife deploy issue-bft-keys` on an operator's machine,
which writes the same Secrets and ConfigMaps as manifests to apply (`prod`).
No PyYAML here: the Job's image has none.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from strife.bft.cluster import ADMIN, GROUP_SETTINGS, replica_names
from strife.bft.config import Config
from strife.bft.group import ClientEntry, Group, ReplicaEntry
from strife.cluster.topology import Topology

Manifest = dict[str, Any]

SIGNING_KEY = "signing.key"
PREFIX = "strife-bft-"
GROUP_FILE = "group.toml"
_LABELS = {"app.kubernetes.io/part-of": "strife"}


@dataclass(frozen=True)
class GroupLayout:
    """One replicated bank as the cluster runs it: each replica's name (its
    certificate's and `--replica`'s) and the address its peers and clients dial."""

    bank: str
    replicas: tuple[tuple[str, str], ...]

    @property
    def config_map(self) -> str:
        return f"{PREFIX}{self.bank}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.replicas)


def replica_process(replica: str) -> str:
    """A replica's StatefulSet, headless Service and identity folder: `bank-vault-0`,
    as the local cluster names the process."""
    return f"bank-{replica}"


def layouts(topology: Topology, port: int) -> list[GroupLayout]:
    """Each `[[replicated_banks]]` entry: replicas `<bank>-<i>`, each reached
    at its own headless Service (`bank-<bank>-<i>:PORT`, namespace-relative)."""
    return [
        GroupLayout(
            spec.name,
            tuple(
                (name, f"{replica_process(name)}:{port}")
                for name in replica_names(spec.name, spec.replicas)
            ),
        )
        for spec in topology.replicated
    ]


def clients(topology: Topology) -> list[str]:
    """The client identities every group lists: each gateway, and the admin
    identity an auditor reads the books as (as in a local cluster)."""
    return [*(f"gateway/{name}" for name in topology.gateways), ADMIN]


def key_label(identity: str) -> str:
    """`bank/vault-0` -> `bank-vault-0`: the file and Secret suffix of a signing key."""
    return identity.replace("/", "-")


def key_secret(identity: str) -> str:
    return f"{PREFIX}{key_label(identity)}"


def replica_key_identity(replica: str) -> str:
    """A replica signs as its certificate's identity when it is a client of its
    own group (its resolver's votes); its key Secret is named after it."""
    return f"bank/{replica}"


def layout_arg(layout: GroupLayout) -> str:
    """`vault=vault-0@bank-vault-0:7400,...`: a group as one Job argument."""
    return f"{layout.bank}=" + ",".join(f"{n}@{a}" for n, a in layout.replicas)


def parse_layout_arg(value: str) -> GroupLayout:
    bank, sep, rest = value.partition("=")
    replicas = tuple(tuple(item.split("@", 1)) for item in rest.split(",") if item)
    if not sep or not bank or not replicas or any(len(r) != 2 or not all(r) for r in replicas):
        raise ValueError(f"expected BANK=REPLICA@HOST:PORT,..., got {value!r}")
    return GroupLayout(bank, tuple((r[0], r[1]) for r in replicas))


class KeyStore(Protocol):
    """Secrets and ConfigMaps of one namespace: the API server, or manifests."""

    def get(self, name: str) -> dict[str, bytes] | None: ...

    def create(self, name: str, data: dict[str, bytes], kind: str) -> None: ...

    def get_config(self, name: str) -> dict[str, str] | None: ...

    def put_config(self, name: str, data: dict[str, str], *, replace: bool) -> None: ...


def _new_key() -> bytes:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_key(pem: bytes) -> bytes:
    key = load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key.public_key().public_bytes_raw()


def group_of(layout: GroupLayout, keys: dict[str, bytes], client_ids: Sequence[str]) -> Group:
    """The group file's content, from the public keys by identity."""
    config = Config(n=len(layout.replicas), **GROUP_SETTINGS)
    return Group(
        layout.bank,
        config,
        tuple(
            ReplicaEntry(name, address, keys[replica_key_identity(name)])
            for name, address in layout.replicas
        ),
        tuple(ClientEntry(c, keys[c]) for c in client_ids),
    )


def issue_group_keys(
    store: KeyStore, groups: Iterable[GroupLayout], client_ids: Sequence[str]
) -> list[str]:
    """Create the signing-key Secrets that are missing, then write each group's
    ConfigMap if it is missing or no longer matches the keys; the names
    written, in order. An existing key is never replaced."""
    groups = list(groups)
    identities = [replica_key_identity(n) for g in groups for n in g.names]
    identities += list(client_ids) if groups else []
    written: list[str] = []
    keys: dict[str, bytes] = {}
    for identity in identities:
        secret = key_secret(identity)
        found = store.get(secret)
        if found is None:
            store.create(secret, {SIGNING_KEY: _new_key()}, "Opaque")
            written.append(secret)
            # Read back what the store holds: a concurrent run may have created it first.
            found = store.get(secret)
            if found is None:
                raise RuntimeError(f"Secret {secret} was created but cannot be read")
        keys[identity] = public_key(found[SIGNING_KEY])
    for layout in groups:
        text = group_of(layout, keys, client_ids).to_toml()
        existing = store.get_config(layout.config_map)
        if existing is not None and existing.get(GROUP_FILE) == text:
            continue
        store.put_config(layout.config_map, {GROUP_FILE: text}, replace=existing is not None)
        written.append(layout.config_map)
    return written


class ManifestStore:
    """Secrets and ConfigMaps as manifests, for `strife deploy issue-bft-keys`:
    loaded from the file a previous run wrote, or from `kubectl get -o yaml`
    (a `List`), so the keys already issued are kept; dumped back for
    `kubectl apply -f`. Only the replicated banks' objects (`strife-bft-*`)
    are taken, so a dump of a whole namespace brings no other Secret along."""

    def __init__(self, objects: Iterable[Manifest] = ()) -> None:
        self._secrets: dict[str, tuple[dict[str, bytes], str]] = {}
        self._configs: dict[str, dict[str, str]] = {}
        self._load(objects)

    def _load(self, objects: Iterable[Manifest]) -> None:
        for obj in objects:
            if obj.get("kind") == "List":
                self._load(obj.get("items") or [])
                continue
            name = obj["metadata"]["name"]
            if not name.startswith(PREFIX):
                continue
            if obj.get("kind") == "Secret":
                data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                data |= {k: v.encode() for k, v in (obj.get("stringData") or {}).items()}
                self._secrets[name] = (data, obj.get("type", "Opaque"))
            elif obj.get("kind") == "ConfigMap":
                self._configs[name] = dict(obj.get("data") or {})

    def get(self, name: str) -> dict[str, bytes] | None:
        found = self._secrets.get(name)
        return None if found is None else dict(found[0])

    def create(self, name: str, data: dict[str, bytes], kind: str) -> None:
        self._secrets.setdefault(name, (dict(data), kind))

    def get_config(self, name: str) -> dict[str, str] | None:
        found = self._configs.get(name)
        return None if found is None else dict(found)

    def put_config(self, name: str, data: dict[str, str], *, replace: bool) -> None:
        self._configs[name] = dict(data)

    def objects(self) -> list[Manifest]:
        """Every Secret, then every ConfigMap, by name."""
        secrets: list[Manifest] = [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "labels": dict(_LABELS)},
                "type": kind,
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            }
            for name, (data, kind) in sorted(self._secrets.items())
        ]
        configs: list[Manifest] = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "labels": dict(_LABELS)},
                "data": data,
            }
            for name, data in sorted(self._configs.items())
        ]
        return secrets + configs
