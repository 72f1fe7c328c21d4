"""Progress for the operator: rank 0 writes a JSON annotation on its own pod, which the operator
mirrors into the job's status (`kubectl get rljobs` shows step/total, reward, accuracy).

The annotation's one schema, for the writer here and the operator that reads it, is
`lvr_trainer.contracts.progress.ProgressReport`.

Active only inside a pod started by the operator (LVR_POD_NAME and LVR_POD_NAMESPACE set); the pod's
ServiceAccount may patch just its own pod. A failed report is logged once and never stops training.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from lvr_trainer.contracts.progress import DEFAULT_ANNOTATION, clean_report

# metric key -> progress field, first match wins
_FIELDS = {"loss": ("train/loss",), "reward": ("reward/total",),
           "accuracy": ("val/accuracy", "rollout/accuracy")}


def progress_payload(step: int, total: int, values: dict[str, float], checkpoint: str | None,
                     facts: dict[str, str] | None = None) -> dict:
    """The annotation's JSON object (pure); `facts` are constant for the run (e.g. initial_weights). A value
    the schema refuses (a NaN loss) is left out."""
    out: dict = {**(facts or {}), "step": step, "total_steps": total,
                 "updated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    for field, keys in _FIELDS.items():
        value = next((values[k] for k in keys if k in values), None)
        if value is not None:
            out[field] = round(float(value), 6)
    if checkpoint:
        out["last_checkpoint"] = checkpoint
    report, _ = clean_report(out)
    return report.model_dump(exclude_none=True)


def _patch_own_pod(name: str, namespace: str, annotation: str) -> Callable[[dict], None]:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()  # the local cluster's pods get a KUBECONFIG instead
    core = client.CoreV1Api()

    def patch(payload: dict) -> None:
        text = json.dumps(payload, allow_nan=False)
        core.patch_namespaced_pod(name, namespace, {"metadata": {"annotations": {annotation: text}}})
    return patch


class PodProgressReporter:
    """`report(step, values, checkpoint)` at most every `every_s` seconds; the first report and the last
    step always go. `clock` (seconds, monotonic) is injectable for tests."""

    def __init__(self, total_steps: int, patch: Callable[[dict], None], every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.patch, self.every_s, self.clock = total_steps, patch, every_s, clock
        self.last_sent: float | None = None  # None: nothing sent yet, so the next report goes
        self.facts: dict[str, str] = {}      # sent with every report (RunLogger sets initial_weights)
        self.failed = False

    @classmethod
    def from_env(cls, total_steps: int, env=os.environ) -> PodProgressReporter | None:
        name, ns = env.get("LVR_POD_NAME"), env.get("LVR_POD_NAMESPACE")
        if not name or not ns:
            return None
        try:
            patch = _patch_own_pod(name, ns, env.get("LVR_PROGRESS_ANNOTATION", DEFAULT_ANNOTATION))
        except Exception as err:  # no client, no credentials: train anyway
            print(f"progress: cannot report to pod {ns}/{name} ({err}); continuing", file=sys.stderr)
            return None
        return cls(total_steps, patch)

    def report(self, step: int, values: dict[str, float], checkpoint: str | None = None,
               force: bool = False) -> None:
        now = self.clock()
        throttled = self.last_sent is not None and now - self.last_sent < self.every_s
        if throttled and not force and step < self.total:
            return
        try:
            self.patch(progress_payload(step, self.total, values, checkpoint, self.facts))
            self.last_sent = now
        except Exception as err:
            if not self.failed:
                print(f"progress: pod annotation patch failed ({err}); training continues", file=sys.stderr)
            self.failed = True
