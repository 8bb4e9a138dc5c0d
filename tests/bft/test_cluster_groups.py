"""How a local cluster plans its replicated banks: one key per client identity,
listed alike by every group, and group files that follow the keys."""

from __future__ import annotations

from pathlib import Path

from strife.bft.cluster import ADMIN, client_key, gateway_key_args, plan_group
from strife.bft.group import Group, load_signing_key, write_signing_key


def _listed(group: Group) -> dict[str, bytes]:
    return {c.identity: c.public_key for c in group.clients}


def test_every_group_lists_the_one_key_each_gateway_signs_with(tmp_path: Path) -> None:
    gateways = ("gw-1", "gw-2")
    vault = plan_group(tmp_path, "vault", 4, gateways)
    safe = plan_group(tmp_path, "safe", 4, gateways)
    assert _listed(vault.group) == _listed(safe.group)
    for gateway in gateways:
        args = gateway_key_args(tmp_path, gateway, [vault, safe])
        assert args == ["--bft-signing-key", str(client_key(tmp_path, f"gateway/{gateway}"))]
        signer = load_signing_key(Path(args[1]), f"gateway/{gateway}")
        assert _listed(vault.group)[f"gateway/{gateway}"] == (
            signer.key.public_key().public_bytes_raw()
        )
    assert gateway_key_args(tmp_path, "gw-1", []) == []
    assert {ADMIN, "gateway/gw-1", "gateway/gw-2"} == set(_listed(vault.group))


def test_a_group_file_is_kept_while_its_keys_hold_and_rewritten_when_they_change(
    tmp_path: Path,
) -> None:
    first = plan_group(tmp_path, "vault", 4, ("gw-1",))
    again = plan_group(tmp_path, "vault", 4, ("gw-1",))
    assert again.group == first.group  # same addresses, same keys: a restart finds them
    # A client key that no longer matches the file (a group file made under an
    # older layout, or a replaced key): the file is written again, replica keys kept.
    client_key(tmp_path, "gateway/gw-1").unlink()
    write_signing_key(client_key(tmp_path, "gateway/gw-1"))
    replanned = plan_group(tmp_path, "vault", 4, ("gw-1",))
    assert _listed(replanned.group)["gateway/gw-1"] != _listed(first.group)["gateway/gw-1"]
    assert [r.public_key for r in replanned.group.replicas] == [
        r.public_key for r in first.group.replicas
    ]
    assert Group.load(replanned.group_file) == replanned.group
