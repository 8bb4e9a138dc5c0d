"""`strife deploy`: Kubernetes manifests from a topology TOML, and their checks.

Rendering needs PyYAML and validation kubernetes-validate; the image has
neither, and its certificate Job runs `issue-secrets` from here, so each
command imports what it needs when it runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from strife.security.certs import DEFAULT_TRUST_DOMAIN

DEFAULT_OUT = Path("deploy/kubernetes")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def deploy() -> None:
    """Run Strife on Kubernetes: render manifests from the cluster's topology."""


@deploy.command("render")
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Topology TOML, the same `strife cluster up --config` reads.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT,
    show_default=True,
    help="Where base/, components/ and overlays/ go.",
)
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
def render_cmd(config: Path, out: Path, trust_domain: str) -> None:
    """Write the kustomize base, components and the dev and prod overlays."""
    from strife.cluster.topology import TopologyError, load_topology
    from strife.deploy.kustomize import write
    from strife.deploy.render import RenderError, render

    try:
        rendered = render(load_topology(config), trust_domain)
    except (TopologyError, RenderError) as exc:
        raise click.ClickException(str(exc)) from exc
    written = write(rendered, out, source=config.name)
    click.echo(f"{len(written)} files under {out} from {config}")
    for name in rendered.overlays:
        click.echo(f"  kubectl apply -k {out / 'overlays' / name}")


@deploy.command("validate")
@click.argument("folders", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
def validate_cmd(folders: tuple[Path, ...]) -> None:
    """Build each kustomization folder and check every object against the
    Kubernetes schemas (default: every overlay under deploy/kubernetes)."""
    from strife.deploy.kustomize import build
    from strife.deploy.validate import kubernetes_versions, validate_objects

    targets = list(folders) or sorted((DEFAULT_OUT / "overlays").iterdir())
    versions = kubernetes_versions()
    failed = False
    for folder in targets:
        objects = build(folder)
        errors = validate_objects(objects, versions)
        failed = failed or bool(errors)
        status = "ok" if not errors else f"{len(errors)} errors"
        click.echo(f"{folder}: {len(objects)} objects, Kubernetes {', '.join(versions)}: {status}")
        for error in errors:
            click.echo(f"  {error}")
    if failed:
        raise SystemExit(1)


@deploy.command("issue-secrets")
@click.option(
    "--identity",
    "identities",
    multiple=True,
    required=True,
    help="ROLE/NAME, or bank/HOST:BANK,... for a host of several banks; repeatable.",
)
@click.option(
    "--bft-group",
    "groups",
    multiple=True,
    help="BANK=REPLICA@HOST:PORT,...: a replicated bank whose keys and group file to issue.",
)
@click.option(
    "--bft-client",
    "bft_clients",
    multiple=True,
    help="ROLE/NAME of a client every group lists (each gateway, admin/admin); repeatable.",
)
@click.option("--trust-domain", default=DEFAULT_TRUST_DOMAIN, show_default=True)
def issue_secrets_cmd(
    identities: tuple[str, ...],
    groups: tuple[str, ...],
    bft_clients: tuple[str, ...],
    trust_domain: str,
) -> None:
    """In a cluster's Job: create the CA and identity Secrets that are missing,
    and the replicated banks' signing keys and group files."""
    from strife.deploy.replicated import issue_group_keys, parse_layout_arg
    from strife.deploy.secrets_job import InClusterSecrets, issue_missing, parse_identity_arg

    try:
        plan = [parse_identity_arg(value) for value in identities]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--identity") from exc
    try:
        layouts = [parse_layout_arg(value) for value in groups]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--bft-group") from exc
    store = InClusterSecrets()
    created = issue_missing(store, plan, trust_domain)
    created += issue_group_keys(store, layouts, bft_clients)
    click.echo(f"namespace {store.namespace}: wrote {', '.join(created) or 'nothing'}")


@deploy.command("issue-bft-keys")
@click.option(
    "--config",
    "config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Topology TOML with [[replicated_banks]], the one `render` was given.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Manifest file of Secrets and ConfigMaps; the keys of an existing one are kept.",
)
def issue_bft_keys_cmd(config: Path, out: Path) -> None:
    """Without the certificate Job (prod): the replicated banks' signing keys
    and group files, as manifests to apply. The file holds private keys."""
    import yaml

    from strife.cluster.topology import TopologyError, load_topology
    from strife.deploy.render import GRPC_PORT
    from strife.deploy.replicated import ManifestStore, clients, issue_group_keys, layouts

    try:
        topology = load_topology(config)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from exc
    if not topology.replicated:
        raise click.ClickException(f"{config} has no [[replicated_banks]]")
    previous = [d for d in yaml.safe_load_all(out.read_text()) if d] if out.exists() else []
    store = ManifestStore(previous)
    written = issue_group_keys(store, layouts(topology, GRPC_PORT), clients(topology))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch(mode=0o600, exist_ok=True)
    out.chmod(0o600)
    out.write_text(yaml.safe_dump_all(store.objects(), sort_keys=False))
    click.echo(f"{out}: wrote {', '.join(written) or 'nothing new'}")
    click.echo(f"  kubectl -n NAMESPACE apply -f {out}")
