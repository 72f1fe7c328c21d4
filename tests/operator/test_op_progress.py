"""Progress from rank 0's annotation into the status: one wire schema with the trainer, NaN left out and
counted, and a status the API server refuses reported in a condition instead of retried forever."""

from __future__ import annotations

import json

from kubernetes import client
from kubernetes.client.rest import ApiException

from lvr_operator.api.jobs import JobProgress
from lvr_operator.cluster import Cluster
from lvr_operator.reconcile.model import Create, Plan
from lvr_trainer.contracts.progress import ProgressReport
from op_helpers import created_pods, job, observed, pod_in, run, with_status


def _running(annotation: str):
    """A reconcile of a running 2-worker job whose rank 0 annotated its pod with `annotation`."""
    plan = run(job(), observed())
    obj, pods = with_status(job(), plan.status), [pod_in(p, "running") for p in created_pods(plan)]
    pods[0]["metadata"]["annotations"] = {"longvideo.dev/progress": annotation}
    return run(obj, observed(*pods))


def test_a_nan_loss_is_dropped_and_counted_and_the_status_is_valid_json():
    plan = _running('{"step": 5, "total_steps": 10, "loss": NaN, "reward": Infinity, "accuracy": 0.5}')
    progress = plan.status["progress"]
    assert progress["step"] == 5 and progress["summary"] == "5/10" and progress["accuracy"] == 0.5
    assert "loss" not in progress and "reward" not in progress and progress["droppedValues"] == 2
    json.dumps(plan.status, allow_nan=False)
    assert "droppedValues" not in _running('{"step": 6, "total_steps": 10, "loss": 0.25}').status["progress"]


def test_an_oversized_annotation_is_not_read():
    plan = _running(json.dumps({"step": 1, "last_checkpoint": "s3://" + "x" * 5000}))
    assert plan.status["progress"] == {"droppedValues": 1}


def test_the_wire_and_the_status_share_one_schema():
    status_fields = {f.alias for f in JobProgress.model_fields.values()}
    wire = ProgressReport(step=1, total_steps=2, loss=0.1, reward=0.2, accuracy=0.3, last_checkpoint="c",
                          initial_weights="w", updated_at="t").status_fields()
    assert set(wire) <= status_fields and len(wire) == len(ProgressReport.model_fields)


class _Custom:
    def __init__(self, refuse: int):
        self.refuse, self.patches = refuse, []

    def patch_namespaced_custom_object_status(self, *args):
        self.patches.append(args[-1]["status"])
        if self.refuse:
            self.refuse -= 1
            err = ApiException(status=400, reason="Bad Request")
            err.body = json.dumps({"message": "json: cannot unmarshal NaN into status.progress.loss"})
            raise err


def test_a_refused_status_patch_is_a_condition_and_nothing_acts_on_it():
    cluster = Cluster(client.ApiClient())
    cluster.custom = _Custom(refuse=1)
    created = []
    cluster._act = lambda owner, action: created.append(action)
    cluster.post_event = lambda *_: None
    obj = with_status(job(), {"phase": "Running", "conditions": []})
    cluster.apply(obj, Plan({"phase": "Running", "progress": {"loss": "bad"}}, [Create({"kind": "Pod"})]))
    assert created == [] and len(cluster.custom.patches) == 2
    (cond,) = cluster.custom.patches[1]["conditions"]
    assert cond["type"] == "StatusUpdateRefused" and cond["status"] == "True"
    assert "cannot unmarshal NaN" in cond["message"]
    # the next reconcile's status clears it
    later = run(with_status(job(), {"phase": "Pending", "conditions": [cond]}), observed())
    cleared = next(c for c in later.status["conditions"] if c["type"] == "StatusUpdateRefused")
    assert cleared["status"] == "False"
