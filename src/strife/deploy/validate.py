"""Every rendered object checked against Kubernetes' own schemas.

Core kinds are checked against the strict schemas (unknown fields are errors)
that `kubernetes-validate` ships, so it works offline. cert-manager's kinds are
custom resources with no schema there; they get a check of the fields Strife
relies on instead, and an unknown custom kind is an error rather than a pass.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from kubernetes_validate import utils  # type: ignore[import-untyped]
from referencing import Registry, Resource

Manifest = dict[str, Any]

# StatefulSet `ordinals` (the gateways' names) is GA from 1.31; newest is
# whatever the installed kubernetes-validate ships.
OLDEST_SUPPORTED = "1.31.0"
_CERT_MANAGER = "cert-manager.io/v1"
_KEY_ALGORITHMS = {"RSA", "ECDSA", "Ed25519"}
_USAGES = {
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "server auth",
    "client auth",
}


def kubernetes_versions() -> list[str]:
    return [OLDEST_SUPPORTED, str(utils.latest_version())]


class NoSchemaError(LookupError):
    pass


@functools.cache
def _definitions(schema_dir: str) -> Registry[Any]:
    contents = utils.schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", "")
    return Resource.from_contents(contents) @ Registry()


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> Any:
    """kubernetes-validate's strict schema for one kind, built once (its own
    `validate` reloads the definitions on every call, seconds per object)."""
    wanted = utils.major_minor(version)
    newest = [v for v in utils.all_versions() if utils.major_minor(v) <= wanted][-1]
    schema_dir = f"v{newest}-local-strict"
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    try:
        schema = utils.schema_contents(
            f"kubernetes-json-schema/{schema_dir}/{kind.lower()}-{group}.json", version
        )
    except FileNotFoundError as exc:
        raise NoSchemaError(f"no schema for {api_version} {kind} in Kubernetes {wanted}") from exc
    registry = Resource.from_contents(schema) @ _definitions(schema_dir)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _name(obj: Manifest) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def check_cert_manager(obj: Manifest) -> list[str]:
    """cert-manager v1 Certificate and Issuer: the fields and values used here."""
    where, spec, errors = _name(obj), obj.get("spec"), []
    if not isinstance(spec, dict):
        return [f"{where}: no spec"]
    if obj["kind"] == "Issuer":
        kinds = [k for k in ("selfSigned", "ca") if k in spec]
        if len(kinds) != 1:
            errors.append(f"{where}: exactly one of selfSigned, ca")
        elif kinds == ["ca"] and not spec["ca"].get("secretName"):
            errors.append(f"{where}: ca.secretName is required")
        return errors
    if obj["kind"] != "Certificate":
        return [f"{where}: no schema for {_CERT_MANAGER} {obj['kind']}"]
    if not spec.get("secretName"):
        errors.append(f"{where}: secretName is required")
    issuer = spec.get("issuerRef", {})
    if not issuer.get("name") or issuer.get("kind") not in ("Issuer", "ClusterIssuer"):
        errors.append(f"{where}: issuerRef needs a name and kind Issuer or ClusterIssuer")
    key = spec.get("privateKey", {})
    if key.get("algorithm", "RSA") not in _KEY_ALGORITHMS:
        errors.append(f"{where}: privateKey.algorithm {key.get('algorithm')!r}")
    if key.get("rotationPolicy", "Always") not in ("Always", "Never"):
        errors.append(f"{where}: privateKey.rotationPolicy {key.get('rotationPolicy')!r}")
    if key.get("encoding", "PKCS1") not in ("PKCS1", "PKCS8"):
        errors.append(f"{where}: privateKey.encoding {key.get('encoding')!r}")
    if bad := set(spec.get("usages", [])) - _USAGES:
        errors.append(f"{where}: unknown usages {sorted(bad)}")
    if not (spec.get("commonName") or spec.get("dnsNames") or spec.get("uris")):
        errors.append(f"{where}: needs a commonName, dnsNames or uris")
    known = {
        "secretName",
        "commonName",
        "subject",
        "uris",
        "dnsNames",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
        "isCA",
    }
    if extra := set(spec) - known:
        errors.append(f"{where}: unexpected fields {sorted(extra)}")
    return errors


def validate_objects(objects: Iterable[Manifest], versions: Iterable[str]) -> list[str]:
    """Every problem found, as `Kind/name: message` lines; [] when all pass."""
    errors: list[str] = []
    objects = list(objects)
    for version in versions:
        for obj in objects:
            if obj.get("apiVersion") == _CERT_MANAGER:
                errors += check_cert_manager(obj)
                continue
            try:
                validator = _validator(version, obj.get("apiVersion", ""), obj.get("kind", ""))
            except NoSchemaError as exc:
                errors.append(f"{_name(obj)}: {exc}")
                continue
            for error in validator.iter_errors(obj):
                path = "/".join(str(p) for p in error.absolute_path)
                errors.append(f"{_name(obj)} ({version}): {path}: {error.message}")
    return sorted(set(errors))
