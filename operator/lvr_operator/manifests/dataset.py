"""LongVideoDataset child: one preprocessing pod, [`lvr data build`] -> `lvr data validate` -> [`lvr encode`].

Each step writes its JSON report to /dev/termination-log, so the operator reads row and cache counts
from the pod's status without any API access from the pod.
"""

from __future__ import annotations

from typing import Any

from lvr_operator.api.common import DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS, GPU_RESOURCE
from lvr_operator.api.dataset import LongVideoDatasetSpec
from lvr_operator.manifests.common import (LABEL_ATTEMPT, LABEL_GENERATION, LABEL_ROLE, child_meta, meta,
                                           restricted)
from lvr_operator.manifests.job import TERMINATION_LOG, s3_env
from lvr_operator.manifests.trainer_config import DATA_MOUNT, LOCAL_CACHE, dataset_jsonl
from lvr_operator.settings import OperatorSettings

BUILD = "build"
VALIDATE = "validate"
ENCODE = "encode"
API_KEY_ENV = "LVR_BUILD_API_KEY"
# Run a step, keep its stdout as the termination message (the report), and keep its exit code.
_REPORT = 'out=$("$@"); rc=$?; printf "%s" "$out" > ' + TERMINATION_LOG + '; printf "%s\\n" "$out"; exit $rc'


def _step(name: str, image: str, argv: list[str], env: list[dict], mounts: list[dict]) -> dict[str, Any]:
    return {"name": name, "image": image, "command": ["sh", "-c", _REPORT, name, *argv], "env": env,
            "volumeMounts": mounts, "terminationMessagePolicy": "FallbackToLogsOnError"}


def _video_root(spec: LongVideoDatasetSpec) -> list[str]:
    return ["--video-root", spec.source.videos] if spec.source.videos else []


def build_argv(spec: LongVideoDatasetSpec) -> list[str] | None:
    """`lvr data build` writing the rows where `source.jsonl` says (its directory), or None without
    `source.build`. `--json` prints the report the operator reads (videos, clips, kept, dropped, calls)."""
    b = spec.source.build
    if b is None:
        return None
    argv = ["lvr", "data", "build", "--videos", b.videos, "--out", spec.source.jsonl.rsplit("/", 1)[0],
            "--captioner", b.captioner.url, "--reasoner", b.reasoner.url, "--clip-seconds", f"{b.clip_seconds:g}",
            "--questions-per-category", str(b.questions_per_category), "--concurrency", str(b.concurrency), "--json"]
    for flag, endpoint in (("--captioner-model", b.captioner), ("--reasoner-model", b.reasoner)):
        if endpoint.model:
            argv += [flag, endpoint.model]
    return argv + (["--api-key-env", API_KEY_ENV] if b.api_key_secret else [])


def validate_argv(spec: LongVideoDatasetSpec) -> list[str]:
    return ["lvr", "data", "validate", dataset_jsonl(spec), "--json", "--frames", str(spec.frames),
            "--max-error-rate", str(spec.max_error_rate), "--examples", "3", *_video_root(spec)]


def encode_argv(spec: LongVideoDatasetSpec) -> list[str] | None:
    """`lvr encode` (trainer/lvr_trainer/cli/encode_cmd.py), or None when the spec names no encoder.

    `--frames` and `--max-pixels` are the dataset's, the ones its jobs sample (frame indices and size are
    part of the cache key). `--max-error-rate` lets that share of videos fail (skipped and listed).
    `--json` prints the summary the operator reads from the termination message (videos, encoded, hits,
    failed, failed_videos, bytes_written, bytes_read)."""
    enc = spec.encoder
    if not (enc.model or enc.preset):
        return None
    cache = spec.cache.s3.uri() if spec.cache.s3 else LOCAL_CACHE
    argv = ["lvr", "encode", "--data", dataset_jsonl(spec), "--cache", cache, "--frames", str(spec.frames),
            "--max-pixels", str(spec.max_pixels), "--max-error-rate", str(spec.max_error_rate), "--json",
            *_video_root(spec)]
    return argv + (["--model", enc.model] if enc.model else ["--preset", str(enc.preset)])


def prep_pod(ds: dict[str, Any], spec: LongVideoDatasetSpec, name: str, attempt: int,
             settings: OperatorSettings) -> dict[str, Any]:
    """The preprocessing pod of generation metadata.generation, try `attempt`: [build] -> validate ->
    [encode], each step an init container of the next, the last one the pod's container."""
    image = spec.image or settings.trainer_image
    s3 = spec.cache.s3
    env = s3_env(s3.credentials_secret if s3 else None, s3.endpoint if s3 else None)
    mounts = [{"name": "data", "mountPath": DATA_MOUNT, "readOnly": True}] if spec.source.pvc else []
    steps = []
    if (argv := build_argv(spec)) is not None:
        steps.append(_step(BUILD, image, argv, env + _api_key_env(spec), mounts))
    steps.append(_step(VALIDATE, image, validate_argv(spec), env, mounts))
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "automountServiceAccountToken": False}
    if (encode_args := encode_argv(spec)) is not None:
        encode = _step(ENCODE, image, encode_args, env, mounts)
        if spec.resources.gpus_per_node:
            gpus = {GPU_RESOURCE: spec.resources.gpus_per_node}
            encode["resources"] = {"limits": gpus, "requests": dict(gpus)}
            pod_spec["nodeSelector"] = dict(DEFAULT_NODE_SELECTOR)
            pod_spec["tolerations"] = [dict(t) for t in DEFAULT_TOLERATIONS]
        steps.append(encode)
    if len(steps) > 1:
        pod_spec["initContainers"] = steps[:-1]
    pod_spec["containers"] = steps[-1:]
    if spec.source.pvc:
        pod_spec["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": spec.source.pvc,
                                                                          "readOnly": True}}]
    labels = {LABEL_ROLE: "preprocess", LABEL_ATTEMPT: str(attempt),
              LABEL_GENERATION: str(meta(ds).get("generation", 1))}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": child_meta(ds, name, labels), "spec": restricted(pod_spec)}


def _api_key_env(spec: LongVideoDatasetSpec) -> list[dict[str, Any]]:
    ref = spec.source.build.api_key_secret if spec.source.build else None
    if ref is None:
        return []
    return [{"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]
