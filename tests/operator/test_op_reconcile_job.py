"""reconcile_job: the job's whole life as pure state transitions (observed pods in, plan out)."""

from __future__ import annotations

from lvr_operator.reconcile.model import Create, Delete, DeleteOwner, condition, parse_time, status_patch
from op_helpers import (ALL_CHILDREN, NOW, dataset, job, later, observed, pod_in, run, created_pods,
                        with_status)


def _cond(plan, type_):
    return condition(plan.status["conditions"], type_)


def _started(obj=None, **kw):
    """(job with status after the gang was created, its two pods)."""
    obj = obj or job(**kw)
    plan = run(obj, observed())
    return with_status(obj, plan.status), created_pods(plan)


def test_fresh_job_creates_all_children_and_the_whole_gang():
    plan = run(job(), observed())
    kinds = sorted(a.obj["kind"] for a in plan.actions if isinstance(a, Create))
    assert kinds == ["ConfigMap", "Pod", "Pod", "Role", "RoleBinding", "Service", "ServiceAccount"]
    assert plan.status["phase"] == "Created" and plan.status["startTime"] == "2026-11-24T12:00:00Z"
    assert plan.status["modelUri"] == "s3://models/base" and plan.status["observedGeneration"] == 1
    assert [e.reason for e in plan.events] == ["GangCreated"]
    assert _cond(plan, "DependenciesReady")["status"] == "True"


def test_missing_dataset_waits_with_invalid_spec_condition_and_creates_nothing():
    plan = run(job(), observed(dataset_obj=None))
    assert plan.actions == [] and plan.status["phase"] == "WaitingForDependencies"
    c = _cond(plan, "InvalidSpec")
    assert c["status"] == "True" and c["reason"] == "DatasetNotFound" and "'ds' not found" in c["message"]
    assert plan.waiting and plan.requeue_after == 10


def test_dataset_not_ready_condition_says_what_it_waits_for():
    plan = run(job(), observed(dataset_obj=dataset("Caching")))
    c = _cond(plan, "DependenciesReady")
    assert c["status"] == "False" and c["reason"] == "DatasetNotReady" and "(now Caching)" in c["message"]
    assert plan.actions == []


def test_rl_job_waits_for_sft_then_starts_from_its_checkpoint():
    obj = job(model={"fromSFTJob": "sft"})
    sft = {"kind": "SFTJob", "spec": {"output": {"uri": "s3://ckpt/sft"}}, "status": {"phase": "Running"}}
    plan = run(obj, observed(sft_job=sft))
    assert _cond(plan, "DependenciesReady")["reason"] == "SFTJobNotSucceeded" and plan.actions == []
    sft["status"] = {"phase": "Succeeded", "progress": {"lastCheckpoint": "s3://ckpt/sft/step-9"}}
    plan = run(with_status(obj, plan.status), observed(sft_job=sft))
    # the loadable model directory inside the checkpoint, and the trainer config says so
    assert plan.status["modelUri"] == "s3://ckpt/sft/step-9/model" and len(created_pods(plan)) == 2
    config = next(a.obj for a in plan.actions if a.obj["kind"] == "ConfigMap")
    assert "path: s3://ckpt/sft/step-9/model" in config["data"]["trainer.yaml"]
    sft["status"] = {"phase": "Succeeded", "progress": {}}
    plan = run(obj, observed(sft_job=sft))
    assert plan.status["phase"] == "Failed" and "reported no checkpoint" in plan.status["message"]
    sft["status"] = {"phase": "Failed", "message": "boom"}
    plan = run(obj, observed(sft_job=sft))
    assert plan.status["phase"] == "Failed" and _cond(plan, "Failed")["reason"] == "DependencyFailed"


def test_gang_is_not_created_until_every_worker_fits():
    plan = run(job(), observed(free_slots=1))
    assert created_pods(plan) == [] and plan.status["phase"] == "Pending"
    assert _cond(plan, "Created")["reason"] == "InsufficientResources" and "1 can be placed" in plan.waiting
    assert len(created_pods(run(job(), observed(free_slots=2)))) == 2


def test_restart_after_crash_mid_create_adds_only_missing_pods():
    obj, pods = _started()
    plan = run(job(), observed(pod_in(pods[0], "pending"), children={("ConfigMap", "r1-rl-config")}, free_slots=0))
    names = sorted(a.key for a in plan.actions if isinstance(a, Create))
    assert ("Pod", "r1-rl-worker-1") in names and ("Pod", "r1-rl-worker-0") not in names
    assert ("ConfigMap", "r1-rl-config") not in names and len(names) == 5


def test_running_and_progress_mirrored_from_rank_0():
    obj, pods = _started()
    report = {"step": 25, "total_steps": 100, "reward": 0.5, "accuracy": 0.4, "last_checkpoint": "s3://c/20"}
    plan = run(obj, observed(pod_in(pods[0], "running", progress=report), pod_in(pods[1], "running")))
    assert plan.status["phase"] == "Running" and plan.status["workers"] == 2 and plan.actions == []
    p = plan.status["progress"]
    assert (p["summary"], p["percent"], p["reward"], p["lastCheckpoint"]) == ("25/100", 25, 0.5, "s3://c/20")


def test_unschedulable_worker_is_named_with_the_schedulers_reason():
    obj, pods = _started()
    stuck = pod_in(pods[1], "pending")
    stuck["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]
    plan = run(obj, observed(pod_in(pods[0], "running"), stuck))
    assert plan.status["phase"] == "Created" and plan.actions == []
    message = plan.status["message"]
    assert pods[1]["metadata"]["name"] in message and "Insufficient nvidia.com/gpu" in message
    assert "cannot be scheduled" in message


def test_failed_worker_restarts_whole_gang_after_backoff_from_checkpoint():
    obj, pods = _started()
    obj["status"]["progress"] = {"lastCheckpoint": "s3://c/20"}
    plan = run(obj, observed(pod_in(pods[0], "running"), pod_in(pods[1], "failed", exit_code=3)))
    assert sorted(a.name for a in plan.actions) == ["r1-rl-worker-0", "r1-rl-worker-1"]
    assert plan.status["phase"] == "Restarting" and plan.status["restarts"] == 1
    assert plan.status["nextRestartTime"] == "2026-11-24T12:00:10Z" and plan.requeue_after == 10
    assert plan.events[0].type == "Warning" and "exited with code 3" in plan.events[0].message
    obj = with_status(obj, plan.status)
    assert created_pods(run(obj, observed(now=later(5)))) == []          # still backing off
    plan = run(obj, observed(now=later(11)))
    new = created_pods(plan)
    assert len(new) == 2 and all(p["metadata"]["labels"]["longvideo.dev/attempt"] == "1" for p in new)
    assert plan.status["phase"] == "Created"
    env = {e["name"]: e.get("value") for e in new[0]["spec"]["containers"][0]["env"]}
    assert env["LVR_RESUME_FROM"] == "s3://c/20"


def test_backoff_doubles_and_limit_fails_with_exit_code_and_logs():
    obj, pods = _started()
    obj["status"]["restarts"] = 1
    pods = [pod_in(p, "running") for p in pods]
    for p in pods:
        p["metadata"]["labels"]["longvideo.dev/attempt"] = "1"
    pods[0] = pod_in(pods[0], "failed", exit_code=137)
    plan = run(obj, observed(*pods))
    assert plan.status["nextRestartTime"] == "2026-11-24T12:00:20Z"      # 10 s x 2
    obj["status"]["restarts"] = 2
    for p in pods:
        p["metadata"]["labels"]["longvideo.dev/attempt"] = "2"
    plan = run(obj, observed(*pods, logs={"r1-rl-worker-0": "loading\nCUDA out of memory"}))
    assert plan.status["phase"] == "Failed" and plan.status["completionTime"]
    msg = _cond(plan, "Failed")["message"]
    assert "worker 0" in msg and "code 137" in msg and "backoffLimit 2" in msg and "CUDA out of memory" in msg
    assert [a.name for a in plan.actions] == ["r1-rl-worker-1"]                # the survivor is stopped


def test_a_trainer_whose_memory_plan_does_not_fit_fails_the_job_at_once_naming_the_fix():
    """The trainer's pre-flight (exit 3 under `lvr`, 1 under torchrun, its verdict in the termination message):
    the same plan on the same GPUs fails again, so the job fails without a restart, quoting the plan."""
    from lvr_trainer.contracts.exits import DOES_NOT_FIT_MARK

    obj, pods = _started()
    verdict = (f"{DOES_NOT_FIT_MARK}: the plan needs 51.1 GiB per GPU of 40.0 (11.1 over; the largest part is "
               "activations, 20.0 GiB). Would fit: parallel.sequence_parallel: 8")
    plan = run(obj, observed(pod_in(pods[0], "failed", exit_code=1, message=verdict), pod_in(pods[1], "running")))
    assert plan.status["phase"] == "Failed" and plan.status.get("restarts") in (None, 0)
    cond = _cond(plan, "Failed")
    assert cond["reason"] == "DoesNotFit" and "largest part is activations" in cond["message"]
    assert "resources.gpuMemory" in cond["message"] and "admitBeyondPlan" in cond["message"]
    assert [a.name for a in plan.actions] == ["r1-rl-worker-1"]


def test_a_trainer_refused_another_jobs_output_fails_the_job_at_once_naming_the_owner():
    from lvr_trainer.contracts.exits import OUTPUT_IN_USE_MARK

    obj, pods = _started()
    why = f"{OUTPUT_IN_USE_MARK}: output s3://c/runs belongs to 'SFTJob/ns/other', not 'RLJob/ns/r1': ..."
    plan = run(obj, observed(pod_in(pods[0], "failed", exit_code=1, message=why), pod_in(pods[1], "running")))
    cond = _cond(plan, "Failed")
    assert plan.status["phase"] == "Failed" and cond["reason"] == "OutputInUse"
    assert "belongs to 'SFTJob/ns/other'" in cond["message"] and not plan.status.get("restarts")


def test_the_trainer_config_carries_the_gpu_memory_and_whether_to_admit_beyond_the_plan():
    from lvr_operator.api import RLJobSpec
    from lvr_operator.manifests.trainer_config import build_trainer_config

    obj, _ = _started()
    spec = RLJobSpec.model_validate(obj["spec"])
    cfg = build_trainer_config(spec, None, "s3://m", "x")
    assert (cfg.parallel.gpu_memory, cfg.parallel.memory_check) == ("80Gi", "refuse")
    spec = RLJobSpec.model_validate({**obj["spec"], "resources": {**obj["spec"].get("resources", {}),
                                                                  "gpuMemory": "141Gi"},
                                     "runPolicy": {"admitBeyondPlan": True}})
    cfg = build_trainer_config(spec, None, "s3://m", "x")
    assert (cfg.parallel.gpu_memory, cfg.parallel.memory_check) == ("141Gi", "warn")


def test_stale_attempt_pods_are_deleted_before_recreating():
    obj, pods = _started()
    obj["status"]["restarts"] = 1
    plan = run(obj, observed(pod_in(pods[0], "running")))
    assert plan.actions == [Delete("Pod", "r1-rl-worker-0")] and plan.requeue_after == 2


def test_active_deadline_fails_and_deletes_pods():
    obj, pods = _started(runPolicy={"activeDeadlineSeconds": 60})
    plan = run(obj, observed(*(pod_in(p, "running") for p in pods), now=later(30)))
    assert plan.status["phase"] == "Running" and plan.requeue_after == 30
    plan = run(obj, observed(*(pod_in(p, "running") for p in pods), now=later(61)))
    assert plan.status["phase"] == "Failed" and _cond(plan, "Failed")["reason"] == "DeadlineExceeded"
    assert len([a for a in plan.actions if isinstance(a, Delete)]) == 2


def test_suspend_deletes_pods_and_resume_recreates_them():
    obj, pods = _started()
    obj["spec"]["runPolicy"]["suspend"] = True
    plan = run(obj, observed(*(pod_in(p, "running") for p in pods)))
    assert plan.status["phase"] == "Suspended" and len(plan.actions) == 2
    obj = with_status(obj, plan.status)
    obj["spec"]["runPolicy"]["suspend"] = False
    plan = run(obj, observed(children=ALL_CHILDREN, now=later(100)))
    assert len(created_pods(plan)) == 2 and plan.status["phase"] == "Created"
    assert plan.status["startTime"] == "2026-11-24T12:01:40Z" and _cond(plan, "Suspended")["reason"] == "JobResumed"


def test_unknown_trainer_key_is_invalid_spec_until_edited():
    obj = job(trainer={"train": {"steps": 5}, "optim": {"lrr": 0.1}})
    plan = run(obj, observed())
    assert plan.status["phase"] == "Failed" and plan.actions == []
    assert "spec.trainer.optim.lrr" in plan.invalid and "did you mean 'lr'" in plan.invalid
    assert _cond(plan, "InvalidSpec")["status"] == "True"
    obj = with_status(obj, plan.status)
    assert run(obj, observed()).actions == []                               # stays Failed
    obj["spec"]["trainer"] = {"train": {"steps": 5}}
    obj["metadata"]["generation"] = 2
    plan = run(obj, observed())
    assert plan.status["phase"] == "Created" and len(created_pods(plan)) == 2


def test_gpus_not_divisible_by_sp_size_is_invalid():
    plan = run(job(resources={"nodes": 1, "gpusPerNode": 6}), observed())
    assert "does not divide the 6 processes" in plan.invalid and "1, 2, 3, 6" in plan.invalid


def test_a_worker_that_cannot_start_is_named_in_the_status():
    obj, pods = _started()
    stuck = pod_in(pods[1], "pending")
    stuck["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ImagePullBackOff",
                                                                    "message": "Back-off pulling image x"}}
    plan = run(obj, observed(pod_in(pods[0], "running"), stuck))
    assert plan.status["phase"] == "Created" and plan.status["conditions"]
    assert "1/2 worker(s) running; pod r1-rl-worker-1: container trainer: ImagePullBackOff: Back-off pulling image x" \
        == plan.status["message"]


def test_success_stops_sidecars_then_ttl_deletes_the_job():
    obj, pods = _started(runPolicy={"ttlSecondsAfterFinished": 60})
    done = [pod_in(p, "succeeded") for p in pods]
    for p in done:       # trainer exited 0, the pod still Running (another container, or a slow kubelet)
        p["status"]["phase"] = "Running"
    plan = run(obj, observed(*done))
    assert plan.status["phase"] == "Succeeded" and len(plan.actions) == 2
    obj = with_status(obj, plan.status)
    assert run(obj, observed(now=later(30))).requeue_after == 30
    assert run(obj, observed(now=later(61))).actions == [DeleteOwner()]


def test_reconcile_is_idempotent_and_patches_nothing_when_nothing_changed():
    obj, pods = _started()
    obs = observed(*(pod_in(p, "running") for p in pods))
    first = run(obj, obs)
    again = run(with_status(obj, first.status), obs)
    assert again.actions == [] and again.events == []
    assert status_patch(first.status, again.status) is None


def test_children_not_listed_while_the_gang_is_complete():
    """observe_job skips the 5 child lists when every pod exists (children=None): nothing is recreated;
    if a pod is missing and children were not listed, every child is (re)created, AlreadyExists is fine."""
    obj, pods = _started()
    plan = run(obj, observed(*(pod_in(p, "running") for p in pods), children=None))
    assert plan.actions == [] and plan.status["phase"] == "Running"
    plan = run(obj, observed(pod_in(pods[0], "running"), children=None))
    assert sorted(a.key for a in plan.actions if isinstance(a, Create))[-1] == ("ServiceAccount", "r1-rl-trainer")
    assert [p["metadata"]["name"] for p in created_pods(plan)] == ["r1-rl-worker-1"] and len(plan.actions) == 6


def test_a_crashed_rollout_sidecar_is_named_while_running_and_in_the_failure():
    obj, pods = _started(rollout={"mode": "sidecar"}, trainer={"train": {"steps": 100}})   # 7 trainer GPUs: SP 1
    assert [c["name"] for c in pods[0]["spec"]["containers"]] == ["trainer", "rollout"]
    crash = {"terminated": {"exitCode": 1, "reason": "Error",
                            "message": "ValueError: unknown model preset 'tinny'"}}
    p0, p1 = pod_in(pods[0], "running"), pod_in(pods[1], "running")
    p1["status"]["containerStatuses"][1]["state"] = crash        # the trainer still waits for /health
    plan = run(obj, observed(p0, p1))
    assert plan.status["message"] == ("all 2 worker(s) running; pod r1-rl-worker-1: rollout sidecar exited with "
                                      "code 1 (Error): ValueError: unknown model preset 'tinny'")
    obj = with_status(obj, plan.status)
    p1 = pod_in(pods[1], "failed", exit_code=2, message="RolloutServerError: rollout server not ready")
    p1["status"]["containerStatuses"][1]["state"] = crash
    plan = run(obj, observed(p0, p1))
    assert plan.status["phase"] == "Restarting"
    assert "exited with code 2" in plan.status["message"] and "its rollout sidecar exited with code 1" \
        in plan.status["message"] and "unknown model preset 'tinny'" in plan.status["message"]


def _running(obj, pods):
    """The job after a reconcile that saw both workers running."""
    plan = run(obj, observed(*(pod_in(p, "running") for p in pods)))
    assert plan.status["phase"] == "Running"
    return with_status(obj, plan.status)


def test_a_deleted_worker_is_a_preemption_restarted_at_once_without_charging_backoff():
    obj, pods = _started()
    assert pods[0]["spec"]["terminationGracePeriodSeconds"] == 60
    obj = _running(obj, pods)
    gone = pod_in(pods[1], "running")
    gone["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:00Z"       # kubectl delete pod / a drain
    plan = run(obj, observed(pod_in(pods[0], "running"), gone))
    assert plan.actions == [Delete("Pod", "r1-rl-worker-0")]                 # the survivor checkpoints on SIGTERM too
    assert plan.status["phase"] == "Restarting" and plan.status["preemptions"] == 1
    assert not plan.status.get("restarts") and "nextRestartTime" not in plan.status
    c = _cond(plan, "Restarting")
    assert c["reason"] == "Preempted" and "worker 1 (pod r1-rl-worker-1) was deleted" in c["message"]
    assert "not counted against backoffLimit" in c["message"]
    obj = with_status(obj, plan.status)
    # the old attempt's pods are waited out, then the new attempt (1) starts at once: no backoff
    assert created_pods(run(obj, observed(gone))) == []
    new = created_pods(run(obj, observed()))
    assert [p["metadata"]["labels"]["longvideo.dev/attempt"] for p in new] == ["1", "1"]


def test_preemptions_back_off_exponentially_and_fail_past_max_preemptions_with_the_history():
    obj, pods = _started(runPolicy={"backoffSeconds": 10, "maxBackoffSeconds": 25, "maxPreemptions": 3})
    obj = _running(obj, pods)
    delays = []
    for n in range(1, 4):
        for pod in pods:                   # the gang of the current attempt
            pod["metadata"]["labels"]["longvideo.dev/attempt"] = str(n - 1)
        evicted = pod_in(pods[1], "running")
        evicted["status"].update(reason="Evicted", message=f"eviction {n}")
        plan = run(obj, observed(pod_in(pods[0], "running"), evicted))
        assert plan.status["phase"] == "Restarting" and plan.status["preemptions"] == n
        due = plan.status.get("nextRestartTime")
        delays.append(0 if due is None else (parse_time(due) - NOW).total_seconds())
        assert f"preemption {n}/3" in plan.status["message"]
        obj = with_status(obj, {**plan.status, "phase": "Running"})
    assert delays == [0, 10, 20]
    assert run(with_status(obj, {**obj["status"], "phase": "Restarting"}), observed()).actions == []  # backing off
    for pod in pods:
        pod["metadata"]["labels"]["longvideo.dev/attempt"] = "3"
    evicted = pod_in(pods[1], "running")
    evicted["status"].update(reason="Evicted", message="eviction 4")
    plan = run(obj, observed(pod_in(pods[0], "running"), evicted))
    assert plan.status["phase"] == "Failed" and plan.status["preemptions"] == 4
    c = _cond(plan, "Failed")
    assert c["reason"] == "PreemptionLimitExceeded" and "runPolicy.maxPreemptions 3" in c["message"]
    assert all(f"eviction {n}" in c["message"] for n in range(1, 5))
    assert Delete("Pod", "r1-rl-worker-0") in plan.actions and len(plan.status["preemptionHistory"]) == 4


def test_a_trainer_stopped_on_sigterm_or_an_evicted_pod_is_a_preemption_and_failures_still_count():
    obj, pods = _started()
    obj = _running(obj, pods)
    for pod in (pod_in(pods[1], "failed", exit_code=1, message="lvr-preempted: stopped on SIGTERM at step 7; ..."),
                pod_in(pods[1], "failed", exit_code=83)):
        plan = run(obj, observed(pod_in(pods[0], "failed", exit_code=1), pod))   # rank 0 lost its peer
        assert plan.status["preemptions"] == 1 and not plan.status.get("restarts"), pod["status"]
        assert "stopped on SIGTERM" in plan.status["message"]
    evicted = pod_in(pods[0], "failed", exit_code=137)
    evicted["status"].update(reason="Evicted", message="The node was low on resource: memory.")
    plan = run(obj, observed(evicted, pod_in(pods[1], "running")))
    assert plan.status["preemptions"] == 1 and "was evicted: The node was low" in plan.status["message"]
    disrupted = pod_in(pods[0], "running")
    disrupted["status"]["conditions"] = [{"type": "DisruptionTarget", "status": "True",
                                          "reason": "PreemptionByScheduler", "message": "preempted by a-job"}]
    plan = run(obj, observed(disrupted, pod_in(pods[1], "running")))
    assert plan.status["preemptions"] == 1 and "PreemptionByScheduler: preempted by a-job" in plan.status["message"]
    # an ordinary crash is still a failure, charged against backoffLimit
    plan = run(obj, observed(pod_in(pods[0], "running"), pod_in(pods[1], "failed", exit_code=3)))
    assert plan.status["restarts"] == 1 and not plan.status.get("preemptions")


def test_pods_still_terminating_after_a_suspend_are_not_a_preemption():
    obj, pods = _started()
    obj = _running(obj, pods)
    obj["spec"]["runPolicy"] = {"suspend": True}
    plan = run(obj, observed(*(pod_in(p, "running") for p in pods)))
    assert plan.status["phase"] == "Suspended"
    obj = with_status(obj, plan.status)
    obj["spec"]["runPolicy"] = {"suspend": False}
    leaving = pod_in(pods[0], "running")
    leaving["metadata"]["deletionTimestamp"] = "2026-11-24T12:00:00Z"
    plan = run(obj, observed(leaving))
    assert not plan.status.get("preemptions")


def test_a_queued_gang_is_one_kueue_pod_group_and_waits_at_kueues_gate():
    """Kueue's plain-pod contract: the queue label, one pod group name and its total count on every worker;
    the operator's own capacity gate steps aside (Kueue's quota admits); a gated pod's wait is explained."""
    obj = job(runPolicy={"queueName": "gpu-team", "backoffLimit": 2})
    plan = run(obj, observed(free_slots=0))            # no free GPUs by our count: Kueue decides, not us
    pods = created_pods(plan)
    assert len(pods) == 2
    for p in pods:
        labels, annotations = p["metadata"]["labels"], p["metadata"]["annotations"]
        assert labels["kueue.x-k8s.io/queue-name"] == "gpu-team"
        assert labels["kueue.x-k8s.io/pod-group-name"] == "r1"
        assert annotations["kueue.x-k8s.io/pod-group-total-count"] == "2"
        assert p["spec"]["schedulingGates"] == [{"name": "kueue.x-k8s.io/admission"}]   # suspended until admitted
    obj = with_status(obj, plan.status)
    gated = [pod_in(p, "pending") for p in pods]
    plan = run(obj, observed(*gated))
    assert plan.status["phase"] == "Created" and plan.actions == []
    plain = created_pods(run(job(), observed()))[0]
    assert "schedulingGates" not in plain["spec"] and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]
    assert "waits for Kueue to admit the gang (queue gpu-team" in plan.status["message"]


def test_a_coscheduling_pod_group_is_created_before_the_pods_and_named_on_them():
    obj = job(placement={"schedulerName": "scheduler-plugins-scheduler"},
              runPolicy={"podGroup": {"scheduleTimeoutSeconds": 120}})
    plan = run(obj, observed(pod_groups=True))
    kinds = [a.obj["kind"] for a in plan.actions if isinstance(a, Create)]
    assert kinds.index("PodGroup") < kinds.index("Pod")
    group = next(a.obj for a in plan.actions if isinstance(a, Create) and a.obj["kind"] == "PodGroup")
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and group["metadata"]["name"] == "r1-rl-gang"
    assert group["spec"] == {"minMember": 2, "scheduleTimeoutSeconds": 120}
    assert group["metadata"]["ownerReferences"][0]["uid"] == "uid-job"
    for p in created_pods(plan):
        assert p["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "r1-rl-gang"
        assert p["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    # without the PodGroup API the job says what to install, and creates nothing
    plan = run(obj, observed(pod_groups=False))
    assert plan.actions == [] and "scheduler-plugins" in plan.status["message"]
    assert _cond(plan, "InvalidSpec")["reason"] == "PodGroupAPIMissing"


def test_operator_rbac_may_create_pod_groups():
    from lvr_operator.manifests.rbac import workload_rules

    assert any(r["apiGroups"] == ["scheduling.x-k8s.io"] and "podgroups" in r["resources"] and "create" in r["verbs"]
               for r in workload_rules())


def test_a_trainer_spec_change_while_pods_run_is_reported_and_applies_at_the_next_start():
    obj, pods = _started()
    assert obj["status"]["trainerConfigDigest"]
    obj = _running(obj, pods)
    edited = with_status(job(trainer={"train": {"steps": 200}, "parallel": {"sequence_parallel": 4}}), obj["status"])
    edited["metadata"]["generation"] = 2
    plan = run(edited, observed(*(pod_in(p, "running") for p in pods)))
    assert plan.actions == [] and plan.status["phase"] == "Running"          # the running gang is left alone
    c = _cond(plan, "TrainerConfigChanged")
    assert c["status"] == "True" and "applies when the gang next starts" in c["message"]
    # a worker fails: the new gang gets the edited config (the ConfigMap is replaced) and the report clears
    failed = run(with_status(edited, plan.status), observed(pod_in(pods[0], "failed", exit_code=1),
                                                            pod_in(pods[1], "running")))
    restarted = with_status(edited, failed.status)
    plan = run(restarted, observed(now=later(60)))
    cm = next(a for a in plan.actions if isinstance(a, Create) and a.obj["kind"] == "ConfigMap")
    assert cm.replace and "steps: 200" in cm.obj["data"]["trainer.yaml"]
    assert plan.status["trainerConfigDigest"] != obj["status"]["trainerConfigDigest"]
    new = [pod_in(p, "running") for p in created_pods(plan)]
    plan = run(with_status(restarted, plan.status), observed(*new))
    assert _cond(plan, "TrainerConfigChanged")["status"] == "False"


def test_status_messages_are_bounded_and_keep_the_last_log_lines():
    from lvr_operator.reconcile.model import MAX_MESSAGE

    obj, pods = _started(runPolicy={"backoffLimit": 0})
    log = "\n".join(f"line {i} " + "x" * 200 for i in range(2000)) + "\nCUDA out of memory"
    plan = run(obj, observed(pod_in(pods[0], "failed", exit_code=1, message=log), pod_in(pods[1], "running"),
                             logs={"r1-rl-worker-0": log}))
    assert plan.status["phase"] == "Failed" and len(plan.status["message"]) <= MAX_MESSAGE
    assert all(len(c["message"]) <= MAX_MESSAGE for c in plan.status["conditions"])
    assert plan.status["message"].endswith("CUDA out of memory") and "[...]" in plan.status["message"]


def test_every_status_the_operator_writes_passes_its_typed_model():
    """Ctx.finish checks the status against JobStatus / DatasetStatus (the CRDs' status schemas): a real
    reconcile passes, a misspelt field or a wrong type is a StatusSchemaError naming it."""
    import pytest

    from lvr_operator.api.jobs import JobStatus
    from lvr_operator.reconcile.context import Ctx, StatusSchemaError
    from op_helpers import SETTINGS

    JobStatus.model_validate(run(job(), observed()).status)
    for bad in ({"workerz": 1}, {"restarts": "twice"}):
        ctx = Ctx(job(), observed(), SETTINGS)
        ctx.status.update(bad)
        with pytest.raises(StatusSchemaError, match=next(iter(bad))):
            ctx.finish()
