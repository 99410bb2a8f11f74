"""Renders a kustomization without kubectl: the subset of kustomize (v5) that deploy/kubernetes
uses, and an error naming anything else, so a manifest can never be skipped silently.

Implemented, as kustomize does them:
- `resources`: YAML files (several documents each) inside the kustomization's directory, and
  directories holding a kustomization of their own (rendered first, as kustomize does);
- `configMapGenerator`: `name` plus `files` (`path` or `key=path`, inside the directory); the
  name gets kustomize's content-hash suffix ([`config_map_hash`]), and pod templates'
  references to the generated name (volumes, envFrom, env valueFrom) follow it;
- `patches`: inline or file JSON 6902 patches (add, remove, replace, test) on a target named by
  group, version, kind and name (a patch that matches nothing is an error here);
- `images`: `name` with `newName`, `newTag` or `digest`, on every container and init container.

`python3 deploy/tests/kustomize_lite.py DIR` prints the rendered documents as YAML.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "configMapGenerator", "images", "patches"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is wrong."""


def render(root: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize root` would print (order aside)."""
    docs, _ = _render(Path(root).resolve())
    return docs


def _kustomization(root: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        f = root / name
        if f.is_file():
            k = yaml.safe_load(f.read_text())
            if not isinstance(k, dict):
                raise KustomizeError(f"{f}: not a mapping")
            unknown = set(k) - SUPPORTED_FIELDS
            if unknown:
                raise KustomizeError(
                    f"{f}: fields {sorted(unknown)} are not implemented by {__file__}; "
                    "implement them there or keep to " + ", ".join(sorted(SUPPORTED_FIELDS))
                )
            return k
    raise KustomizeError(f"{root}: no kustomization file")


def _inside(root: Path, rel: str) -> Path:
    """`rel` under `root`, refused when it leaves it (kustomize's load restrictor)."""
    p = (root / rel).resolve()
    if not p.is_relative_to(root):
        raise KustomizeError(
            f"{root}: {rel!r} is outside the kustomization's directory; kustomize refuses it"
        )
    return p


def _render(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The rendered documents and the generated ConfigMap names (given -> with hash)."""
    k = _kustomization(root)
    docs: list[dict[str, Any]] = []
    generated: dict[str, str] = {}
    for entry in k.get("resources", []):
        p = (root / entry).resolve()
        if p.is_dir():
            sub_docs, sub_generated = _render(p)
            docs += sub_docs
            generated.update(sub_generated)
        else:
            p = _inside(root, entry)
            for d in yaml.safe_load_all(p.read_text()):
                if d is None:
                    continue
                if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                    raise KustomizeError(f"{p}: a document without apiVersion and kind")
                docs.append(d)
    for gen in k.get("configMapGenerator", []):
        cm, given = _config_map(root, gen)
        generated[given] = cm["metadata"]["name"]
        docs.append(cm)
    for patch in k.get("patches", []):
        _apply_patch(root, docs, patch)
    for image in k.get("images", []):
        _set_image(docs, image)
    for d in docs:
        _follow_config_map_names(d, generated)
    return docs, generated


def _config_map(root: Path, gen: dict[str, Any]) -> tuple[dict[str, Any], str]:
    unknown = set(gen) - {"name", "files"}
    if unknown:
        raise KustomizeError(f"configMapGenerator: {sorted(unknown)} not implemented")
    data: dict[str, str] = {}
    for spec in gen.get("files", []):
        key, _, path = spec.rpartition("=")
        path = path or spec
        f = _inside(root, path)
        data[key or f.name] = f.read_text()
    name = gen["name"]
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}
    cm["metadata"]["name"] = f"{name}-{config_map_hash(data)}"
    return cm, name


def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix for a ConfigMap (api/hasher/hasher.go): sha256 of Go's JSON of
    {kind, name, data}, its first ten hex digits with 0 1 3 a e written g h k m t. kustomize
    v5 looks the name up as the single field "metadata/name", finds none and hashes "" (so
    the name never changes the suffix); checked against `kubectl kustomize` (kustomize 5.5)."""
    encoded = json.dumps(
        {"data": data, "kind": "ConfigMap", "name": ""},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    # Go's encoding/json escapes these for safe embedding in HTML.
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(ch, esc)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _group_version(d: dict[str, Any]) -> tuple[str, str]:
    group, _, version = d["apiVersion"].rpartition("/")
    return group, version


def _apply_patch(root: Path, docs: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    unknown = set(patch) - {"target", "patch", "path"}
    if unknown:
        raise KustomizeError(f"patches: {sorted(unknown)} not implemented")
    target = patch.get("target") or {}
    t_unknown = set(target) - {"group", "version", "kind", "name"}
    if t_unknown:
        raise KustomizeError(f"patches.target: {sorted(t_unknown)} not implemented")
    text = patch["patch"] if "patch" in patch else _inside(root, patch["path"]).read_text()
    ops = yaml.safe_load(text)
    if not isinstance(ops, list):
        raise KustomizeError("patches: only JSON 6902 patches (a list of operations) are implemented")
    hits = 0
    for d in docs:
        group, version = _group_version(d)
        want = {"group": group, "version": version, "kind": d["kind"], "name": d["metadata"]["name"]}
        if all(want[key] == value for key, value in target.items()):
            for op in ops:
                json_patch(d, op)
            hits += 1
    if hits == 0:
        raise KustomizeError(f"patches: target {target} matches no resource")


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"JSON pointer {path!r} must start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, remove, replace, test) on `doc`, in place."""
    kind = op.get("op")
    if kind not in ("add", "remove", "replace", "test"):
        raise KustomizeError(f"JSON patch op {kind!r} not implemented")
    *parents, last = _pointer(op["path"])
    at = doc
    for part in parents:
        try:
            at = at[int(part)] if isinstance(at, list) else at[part]
        except (KeyError, IndexError, ValueError) as e:
            raise KustomizeError(f"JSON patch {op['path']}: no {part!r} ({e})") from None
    value = copy.deepcopy(op.get("value"))
    if isinstance(at, list):
        i = len(at) if (last == "-" and kind == "add") else int(last)
        if kind == "add":
            if not 0 <= i <= len(at):
                raise KustomizeError(f"JSON patch {op['path']}: index out of range")
            at.insert(i, value)
            return
        if not 0 <= i < len(at):
            raise KustomizeError(f"JSON patch {op['path']}: index out of range")
        if kind == "remove":
            del at[i]
        elif kind == "replace":
            at[i] = value
        elif at[i] != value:
            raise KustomizeError(f"JSON patch test {op['path']} failed")
        return
    if not isinstance(at, dict):
        raise KustomizeError(f"JSON patch {op['path']}: parent is not an object")
    if kind != "add" and last not in at:
        raise KustomizeError(f"JSON patch {kind} {op['path']}: no such member")
    if kind in ("add", "replace"):
        at[last] = value
    elif kind == "remove":
        del at[last]
    elif at[last] != value:
        raise KustomizeError(f"JSON patch test {op['path']} failed")


def pod_spec(d: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload or a Pod, else None."""
    if d["kind"] in WORKLOAD_KINDS:
        return d["spec"]["template"]["spec"]
    if d["kind"] == "Pod":
        return d["spec"]
    return None


def _containers(d: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(d)
    if spec is None:
        return []
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def _split_image(image: str) -> tuple[str, str, str]:
    """name, tag, digest (either may be empty)."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


def _set_image(docs: list[dict[str, Any]], image: dict[str, Any]) -> None:
    unknown = set(image) - {"name", "newName", "newTag", "digest"}
    if unknown:
        raise KustomizeError(f"images: {sorted(unknown)} not implemented")
    for d in docs:
        for c in _containers(d):
            name, tag, digest = _split_image(c["image"])
            if name != image["name"]:
                continue
            name = image.get("newName", name)
            if "newTag" in image:
                tag, digest = str(image["newTag"]), ""
            if "digest" in image:
                tag, digest = "", image["digest"]
            c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _follow_config_map_names(d: dict[str, Any], generated: dict[str, str]) -> None:
    spec = pod_spec(d)
    if spec is None or not generated:
        return

    def rename(ref: dict[str, Any] | None) -> None:
        if ref and ref.get("name") in generated:
            ref["name"] = generated[ref["name"]]

    for v in spec.get("volumes", []):
        rename(v.get("configMap"))
        for source in (v.get("projected") or {}).get("sources", []):
            rename(source.get("configMap"))
    for c in _containers(d):
        for src in c.get("envFrom", []):
            rename(src.get("configMapRef"))
        for e in c.get("env", []):
            rename((e.get("valueFrom") or {}).get("configMapKeyRef"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: kustomize_lite.py DIR")
    yaml.safe_dump_all(render(Path(sys.argv[1])), sys.stdout, sort_keys=False)
