"""`strife deploy render`: the checked-in manifests are a fresh render of the
topology, and the render carries what the processes need to run there."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from strife.cluster.topology import load_topology, parse_topology
from strife.deploy.cli import deploy
from strife.deploy.identities import TOKEN_KEY_SECRET, planned_identities
from strife.deploy.kustomize import build, tree
from strife.deploy.render import (
    GRACE_S,
    HEALTH_PORT,
    RenderError,
    gateway_set,
    render,
)
from strife.deploy.secrets_job import identity_arg
from strife.security.certs import identity_host

REPO = Path(__file__).resolve().parents[1]
CHECKED_IN = REPO / "deploy" / "kubernetes"
SOURCE = REPO / "deploy" / "three-banks.toml"

Manifest = dict[str, Any]


def _workloads(objects: list[Manifest]) -> list[Manifest]:
    return [o for o in objects if o["kind"] in ("StatefulSet", "Deployment")]


def _arg(container: Manifest, flag: str) -> str:
    args: list[str] = container["args"]
    return args[args.index(flag) + 1]


def test_checked_in_manifests_are_a_fresh_render() -> None:
    fresh = tree(render(load_topology(SOURCE)), source=SOURCE.name)
    on_disk = {
        p.relative_to(CHECKED_IN).as_posix(): p.read_text() for p in CHECKED_IN.rglob("*.yaml")
    }
    assert sorted(on_disk) == sorted(fresh), "files differ: run `strife deploy render`"
    for name, text in fresh.items():
        assert on_disk[name] == text, (
            f"{name} drifted: run `strife deploy render --config {SOURCE.relative_to(REPO)}`"
        )


def test_render_command_writes_the_tree_and_removes_what_is_gone(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    stale = out / "base" / "bank-old.yaml"
    stale.parent.mkdir(parents=True)
    stale.write_text("# a bank no longer in the topology\n")
    result = CliRunner().invoke(deploy, ["render", "--config", str(SOURCE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert (out / "overlays" / "prod" / "kustomization.yaml").is_file()
    assert len(build(out / "overlays" / "dev")) > 0


def test_a_topology_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[banks]]\nname = "alpha"\n[gateways]\nnames = ["east", "west"]\n')
    result = CliRunner().invoke(deploy, ["render", "--config", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "gateway names must be PREFIX-N" in result.output


def test_gateway_names_are_the_statefulset_pod_names() -> None:
    assert gateway_set(("gw-1", "gw-2", "gw-3")).__dict__ == {
        "statefulset": "gw",
        "first": 1,
        "replicas": 3,
    }
    assert gateway_set(("edge-0",)).first == 0
    for names in [("gw-1", "gw-3"), ("gw-1", "edge-2"), ("GW-1",), ("gw-2", "gw-1")]:
        with pytest.raises(RenderError):
            gateway_set(names)


def test_every_pod_is_given_time_for_its_grace_period() -> None:
    for obj in _workloads(build(CHECKED_IN / "overlays" / "prod")):
        pod = obj["spec"]["template"]["spec"]
        container = pod["containers"][0]
        grace = float(_arg(container, "--grace"))
        assert grace == GRACE_S
        assert pod["terminationGracePeriodSeconds"] > math.ceil(grace)
        # Probes reach the plaintext health port the process is told to open.
        assert _arg(container, "--health-listen").endswith(f":{HEALTH_PORT}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"]["port"] == HEALTH_PORT


def test_hosted_banks_share_a_statefulset_with_every_identity() -> None:
    topology = load_topology(REPO / "deploy" / "fifteen-banks-hosted.toml")
    objects = [o for files in render(topology).base.values() for o in files]
    sets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    assert sorted(sets) == ["bank-central", "bank-east", "bank-west", "gw"]
    east = sets["bank-east"]["spec"]["template"]["spec"]
    args = east["containers"][0]["args"]
    served = [args[i + 1] for i, a in enumerate(args) if a == "--bank"]
    assert served == ["alpha", "delta", "eta", "kappa", "nu"]
    assert _arg(east["containers"][0], "--bank-certs") == "/certs"
    mounted = {s["secret"]["name"] for s in east["volumes"][0]["projected"]["sources"]}
    assert mounted == {"strife-bank-east", *(f"strife-bank-{b}" for b in served)}
    # The host's identity names every bank it serves, as `strife-certs --serves` does.
    host = next(i for i in planned_identities(topology) if i.name == "east")
    assert identity_arg(host) == "bank/east:alpha,delta,eta,kappa,nu"


def test_every_mounted_secret_is_issued_by_both_routes() -> None:
    """Each Secret a pod mounts has a cert-manager Certificate and a place in
    the Job's list, with the SPIFFE id and host names callers check."""
    for overlay in ("dev", "prod"):
        objects = build(CHECKED_IN / "overlays" / overlay)
        mounted = {
            source["secret"]["name"]
            for obj in _workloads(objects)
            for volume in obj["spec"]["template"]["spec"]["volumes"]
            for source in volume.get("projected", {}).get("sources", [])
        }
        if overlay == "prod":
            certificates = {
                o["spec"]["secretName"]: o for o in objects if o["kind"] == "Certificate"
            }
            assert mounted <= set(certificates)
            alpha = certificates["strife-bank-alpha"]["spec"]
            assert alpha["uris"] == ["spiffe://strife.local/bank/alpha"]
            assert identity_host("strife.local", "bank", "alpha") in alpha["dnsNames"]
        else:
            plan = planned_identities(load_topology(SOURCE))
            job = next(o for o in objects if o["kind"] == "Job")
            args = job["spec"]["template"]["spec"]["containers"][0]["args"]
            listed = [args[i + 1] for i, a in enumerate(args) if a == "--identity"]
            assert listed == [identity_arg(i) for i in plan]
            assert mounted <= {i.secret for i in plan} | {TOKEN_KEY_SECRET}


def test_dev_seeds_the_topology_customers_and_prod_does_not() -> None:
    dev = build(CHECKED_IN / "overlays" / "dev")
    prod = build(CHECKED_IN / "overlays" / "prod")
    seeds = next(o for o in dev if o["kind"] == "ConfigMap")
    assert sorted(seeds["data"]) == ["alpha.json", "beta.json", "gamma.json"]
    assert '"username": "alpha-3"' in seeds["data"]["alpha.json"]
    for objects, seeded in ((dev, True), (prod, False)):
        for obj in _workloads(objects):
            args = obj["spec"]["template"]["spec"]["containers"][0]["args"]
            assert ("--seed" in args) is (seeded and obj["metadata"]["name"].startswith("bank-"))


def test_requests_cover_the_measured_resident_memory() -> None:
    """docs/deployment.md: banks peak at 115 MB (five-bank hosts 127 MB),
    gateways 82 MB, the balancer 67 MB, over ten-minute runs."""
    mib = {"Mi": 1}
    measured_mb = {"bank": 115, "gateway": 82, "balancer": 67}
    for obj in _workloads(build(CHECKED_IN / "overlays" / "prod")):
        container = obj["spec"]["template"]["spec"]["containers"][0]
        request = container["resources"]["requests"]["memory"]
        value = int(request[:-2]) * mib[request[-2:]] * 1.048576
        assert value >= measured_mb[container["name"]] * 1.1, obj["metadata"]["name"]


def test_a_single_bank_topology_renders() -> None:
    topology = parse_topology(
        {"banks": [{"name": "solo"}], "gateways": {"names": ["gw-7"]}}, base=Path(".")
    )
    rendered = render(topology)
    sts = next(o for o in rendered.base["gateways.yaml"] if o["kind"] == "StatefulSet")
    assert sts["spec"]["ordinals"] == {"start": 7} and sts["spec"]["replicas"] == 1
