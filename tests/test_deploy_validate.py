"""CI's manifest check: every overlay builds and every object passes the
Kubernetes schemas; a bad manifest fails it."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from strife.cluster.topology import load_topology
from strife.deploy.cli import deploy
from strife.deploy.kustomize import build, write
from strife.deploy.render import render
from strife.deploy.validate import check_cert_manager, kubernetes_versions, validate_objects

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = REPO / "deploy" / "kubernetes" / "overlays"

Manifest = dict[str, Any]


def _kind(objects: list[Manifest], kind: str) -> Manifest:
    return next(o for o in objects if o["kind"] == kind)


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_object_of_every_overlay_is_valid(overlay: str) -> None:
    objects = build(OVERLAYS / overlay)
    kinds = {o["kind"] for o in objects}
    assert {"StatefulSet", "Deployment", "Service", "NetworkPolicy"} <= kinds
    assert {"PodDisruptionBudget"} <= kinds
    assert ("Certificate" in kinds) is (overlay == "prod")
    assert ("Job" in kinds) is (overlay == "dev")
    assert validate_objects(objects, kubernetes_versions()) == []
    namespace = {"dev": "strife-dev", "prod": "strife"}[overlay]
    assert {o["metadata"]["namespace"] for o in objects} == {namespace}


def test_the_validate_command_passes_the_checked_in_overlays() -> None:
    result = CliRunner().invoke(deploy, ["validate", str(OVERLAYS / "dev"), str(OVERLAYS / "prod")])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok") == 2


def test_a_bad_manifest_fails() -> None:
    objects = build(OVERLAYS / "prod")
    statefulset = copy.deepcopy(_kind(objects, "StatefulSet"))
    statefulset["spec"]["replicas"] = "two"
    unknown = copy.deepcopy(_kind(objects, "Service"))
    unknown["spec"]["clusterIp"] = "None"  # a misspelt field: strict schemas refuse it
    probe = copy.deepcopy(_kind(objects, "Deployment"))
    del probe["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["port"]
    for bad in (statefulset, unknown, probe):
        assert validate_objects([bad], kubernetes_versions()), bad["kind"]


def test_the_validate_command_fails_on_a_bad_manifest(tmp_path: Path) -> None:
    write(render(load_topology(REPO / "deploy" / "three-banks.toml")), tmp_path, "t.toml")
    path = tmp_path / "base" / "disruptionbudgets.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    docs[0]["spec"]["maxUnavailable"] = {"pods": 1}
    path.write_text(yaml.safe_dump_all(docs))
    result = CliRunner().invoke(deploy, ["validate", str(tmp_path / "overlays" / "dev")])
    assert result.exit_code == 1
    assert "PodDisruptionBudget/strife-banks" in result.output


def test_custom_resources_get_their_own_check() -> None:
    objects = build(OVERLAYS / "prod")
    certificate = copy.deepcopy(_kind(objects, "Certificate"))
    assert check_cert_manager(certificate) == []
    certificate["spec"]["privateKey"]["algorithm"] = "DSA"
    certificate["spec"]["usage"] = ["server auth"]
    del certificate["spec"]["secretName"]
    problems = "\n".join(check_cert_manager(certificate))
    assert "DSA" in problems and "usage" in problems and "secretName" in problems
    unknown = {"apiVersion": "cert-manager.io/v1", "kind": "Order", "metadata": {"name": "x"}}
    assert validate_objects([unknown], kubernetes_versions()) != []


def test_the_hosted_topology_renders_valid_manifests(tmp_path: Path) -> None:
    topology = load_topology(REPO / "deploy" / "fifteen-banks-hosted.toml")
    write(render(topology), tmp_path, "fifteen-banks-hosted.toml")
    for overlay in ("dev", "prod"):
        assert validate_objects(build(tmp_path / "overlays" / overlay), kubernetes_versions()) == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_kubectl_kustomize_builds_the_same_objects(overlay: str) -> None:
    """The Python build stands in for kustomize in CI; where kubectl exists,
    both must agree object for object."""
    built = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    theirs = [d for d in yaml.safe_load_all(built.stdout) if d]

    def key(obj: Manifest) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    ours = build(OVERLAYS / overlay)
    assert sorted(map(key, theirs)) == sorted(map(key, ours))
    by_key = {key(o): o for o in ours}
    for obj in theirs:
        assert obj == by_key[key(obj)], key(obj)
