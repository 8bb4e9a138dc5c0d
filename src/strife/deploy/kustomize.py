"""The rendered objects as a kustomize tree, and a small kustomize in Python.

`write` lays out `base/`, `components/<name>/` and `overlays/<name>/` with
their `kustomization.yaml`; `build` turns a folder back into its objects the
way `kubectl kustomize` does for the features this tree uses (resources,
components, namespace, images and JSON 6902 patches with a kind, name or
label selector target), so CI validates the overlays without kubectl.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from strife.deploy.render import IMAGE, Rendered

Manifest = dict[str, Any]

KUSTOMIZATION = "kustomization.yaml"
_HEADER = (
    "# Rendered by `strife deploy render --config {source}`; edit the topology, not this file.\n"
)
_CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "ClusterIssuer"})


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (inline patches, seed files) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(objects: list[Manifest], source: str) -> str:
    body = yaml.dump_all(
        objects, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100
    )
    return _HEADER.format(source=source) + str(body)


def tree(rendered: Rendered, source: str) -> dict[str, str]:
    """Relative path -> file text, for every file of the tree."""
    files: dict[str, str] = {}

    def folder(path: str, objects: dict[str, list[Manifest]], kustomization: Manifest) -> None:
        for name, items in objects.items():
            files[f"{path}/{name}"] = _dump(items, source)
        files[f"{path}/{KUSTOMIZATION}"] = _dump([kustomization], source)

    folder(
        "base",
        rendered.base,
        {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": list(rendered.base),
        },
    )
    for name, objects in rendered.components.items():
        folder(
            f"components/{name}",
            objects,
            {
                "apiVersion": "kustomize.config.k8s.io/v1alpha1",
                "kind": "Component",
                "resources": list(objects),
            },
        )
    for name, overlay in rendered.overlays.items():
        kustomization: Manifest = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": overlay.namespace,
            "resources": ["../../base", *overlay.files],
            "components": [f"../../components/{c}" for c in overlay.components],
            "images": [{"name": IMAGE, "newName": overlay.image, "newTag": overlay.tag}],
        }
        if overlay.patches:
            kustomization["patches"] = [p.as_kustomize() for p in overlay.patches]
        folder(f"overlays/{name}", overlay.files, kustomization)
    return files


def write(rendered: Rendered, out: Path, source: str) -> list[Path]:
    """Write the tree under `out`, removing YAML files of ours it no longer has
    (a bank taken out of the topology); the paths written."""
    files = tree(rendered, source)
    for sub in ("base", "components", "overlays"):
        for stale in sorted((out / sub).rglob("*.yaml")) if (out / sub).is_dir() else []:
            if stale.relative_to(out).as_posix() not in files:
                stale.unlink()
    written = []
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


# --------------------------------------------------------------------------- build


def _load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def build(folder: Path) -> list[Manifest]:
    """The objects a kustomization folder stands for, as `kubectl kustomize` builds them."""
    kustomization = _load(folder / KUSTOMIZATION)[0]
    objects: list[Manifest] = []
    for entry in kustomization.get("resources", []):
        target = folder / entry
        objects += build(target) if target.is_dir() else _load(target)
    for entry in kustomization.get("components", []):
        objects += build(folder / entry)
    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load(patch["patch"]) if isinstance(patch["patch"], str) else patch["patch"]
        matched = [obj for obj in objects if _matches(obj, patch["target"])]
        if not matched:
            raise ValueError(f"{folder}: patch target {patch['target']} matches nothing")
        for obj in matched:
            for op in ops:
                _apply(obj, op)
    for image in kustomization.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    if "namespace" in kustomization:
        for obj in objects:
            _set_namespace(obj, kustomization["namespace"])
    return objects


def _matches(obj: Manifest, target: Manifest) -> bool:
    if obj.get("kind") != target.get("kind"):
        return False
    if "name" in target and obj["metadata"]["name"] != target["name"]:
        return False
    if "labelSelector" in target:
        labels = obj["metadata"].get("labels", {})
        for term in target["labelSelector"].split(","):
            key, _, value = term.partition("=")
            if labels.get(key.strip()) != value.strip():
                return False
    return True


def _apply(obj: Manifest, op: Manifest) -> None:
    """One JSON 6902 operation: add or replace (all this tree uses)."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    value = copy.deepcopy(op["value"])
    if op["op"] == "add" and isinstance(node, list):
        if last == "-":
            node.append(value)
        else:
            node.insert(int(last), value)
    elif op["op"] in ("add", "replace"):
        if op["op"] == "replace" and (
            (isinstance(node, list) and int(last) >= len(node))
            or (isinstance(node, dict) and last not in node)
        ):
            raise ValueError(f"replace of a missing path {op['path']}")
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    else:
        raise ValueError(f"unsupported patch operation {op['op']!r}")


def _pod_spec(obj: Manifest) -> Manifest | None:
    spec = obj.get("spec", {})
    if obj.get("kind") in ("Deployment", "StatefulSet", "Job"):
        pod: Manifest = spec["template"]["spec"]
        return pod
    return None


def _set_image(obj: Manifest, image: Manifest) -> None:
    pod = _pod_spec(obj)
    if pod is None:
        return
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        name = container["image"].split("@")[0].rsplit(":", 1)[0]
        if name == image["name"]:
            container["image"] = f"{image.get('newName', name)}:{image['newTag']}"


def _set_namespace(obj: Manifest, namespace: str) -> None:
    if obj["kind"] in _CLUSTER_SCOPED:
        return
    obj["metadata"]["namespace"] = namespace
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj.get("subjects", []):
            if subject.get("kind") == "ServiceAccount":
                subject["namespace"] = namespace
