"""A pod's volumes as local directories, and each container's mounts as (mountPath, local path) pairs.

There is no mount namespace: a container sees its volumes at local paths under the pod's directory, and
the kubelet stand-in rewrites mountPath prefixes in argv, env and workingDir (podenv.rewrite_paths) and
publishes the mapping as LVR_LOCAL_MOUNTS. Supported: configMap, secret, emptyDir, hostPath, downwardAPI
and projected (configMap/secret/downwardAPI sources). ConfigMap/Secret contents are copied at pod start
and not refreshed.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from lvr_localcluster.podenv import ContainerConfigError, Lookup, field_value


def _write_items(target: Path, data: dict[str, bytes], items: list[dict] | None, mode: int) -> None:
    """Write keys as files (all keys, or only `items` with their paths), like the kubelet's atomic writer."""
    target.mkdir(parents=True, exist_ok=True)
    chosen = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else [(k, k, mode) for k in data]
    for key, rel, file_mode in chosen:
        if key not in data:
            raise ContainerConfigError("CreateContainerConfigError", f"key {key!r} not found for volume item {rel}")
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(file_mode & 0o777 | 0o600)  # owner keeps read/write: we are not root in a container


def _object_data(kind: str, namespace: str, name: str, optional: bool, lookup: Lookup) -> dict[str, bytes] | None:
    obj = lookup(kind, namespace, name)
    if obj is None:
        if optional:
            return None
        raise ContainerConfigError("CreateContainerConfigError", f"{kind[:-1]} {namespace}/{name} not found "
                                   "(needed by a volume); create it and the pod will start")
    if kind == "secrets":
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        return data
    data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return data


def _downward_files(pod: dict, items: list[dict]) -> dict[str, bytes]:
    return {i["path"]: field_value(pod, i["fieldRef"]["fieldPath"]).encode() for i in items if "fieldRef" in i}


def _fill(volume: dict, target: Path, pod: dict, lookup: Lookup) -> Path:
    namespace = pod["metadata"]["namespace"]
    if "emptyDir" in volume:
        target.mkdir(parents=True, exist_ok=True)
    elif "hostPath" in volume:
        return Path(volume["hostPath"]["path"])  # the machine's own path: this "node" is the machine
    elif "configMap" in volume or "secret" in volume:
        source = volume.get("configMap") or volume["secret"]
        kind, name = ("configmaps", source.get("name")) if "configMap" in volume else ("secrets", source["secretName"])
        data = _object_data(kind, namespace, name, source.get("optional", False), lookup) or {}
        _write_items(target, data, source.get("items"), source.get("defaultMode", 0o644))
    elif "downwardAPI" in volume:
        files = _downward_files(pod, volume["downwardAPI"].get("items", []))
        _write_items(target, files, None, volume["downwardAPI"].get("defaultMode", 0o644))
    elif "projected" in volume:
        _fill_projected(volume["projected"], target, pod, lookup)
    else:
        kinds = ", ".join(k for k in volume if k != "name")
        raise ContainerConfigError("CreateContainerConfigError", f"volume {volume['name']!r}: type {kinds} is not "
                                   "supported by the local kubelet (see hack/lvr_localcluster/README.md)")
    return target


def _fill_projected(projected: dict, target: Path, pod: dict, lookup: Lookup) -> None:
    namespace, mode = pod["metadata"]["namespace"], projected.get("defaultMode", 0o644)
    target.mkdir(parents=True, exist_ok=True)
    for source in projected.get("sources", []):
        if "configMap" in source or "secret" in source:
            ref = source.get("configMap") or source["secret"]
            kind = "configmaps" if "configMap" in source else "secrets"
            data = _object_data(kind, namespace, ref["name"], ref.get("optional", False), lookup) or {}
            _write_items(target, data, ref.get("items"), mode)
        elif "downwardAPI" in source:
            _write_items(target, _downward_files(pod, source["downwardAPI"].get("items", [])), None, mode)
        # serviceAccountToken sources are skipped: pods get a kubeconfig instead (KUBECONFIG, see README)


def materialise_volumes(pod: dict, root: Path, lookup: Lookup) -> dict[str, Path]:
    """Create every volume of `pod` under `root`/<volume name>; return name -> local directory."""
    return {v["name"]: _fill(v, root / v["name"], pod, lookup) for v in pod["spec"].get("volumes") or []}


def container_mounts(container: dict, volumes: dict[str, Path]) -> list[tuple[str, str]]:
    """[(mountPath, local path)] for one container, longest mountPath first (for prefix rewriting)."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise ContainerConfigError("CreateContainerConfigError", f"volumeMount {mount['name']!r} has no volume")
        local = volumes[mount["name"]] / mount.get("subPath", "")
        if mount.get("subPath"):
            local.parent.mkdir(parents=True, exist_ok=True)
        mounts.append((mount["mountPath"], os.path.normpath(local)))
    return sorted(mounts, key=lambda m: len(m[0]), reverse=True)
