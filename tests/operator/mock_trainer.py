"""A stand-in for `torchrun ... lvr rl`: reports progress on its own pod like rank 0 does, then exits.

    python mock_trainer.py --steps 3 --exit-code 0 [--sleep 0.3] [--fail-attempts 1]

Uses the pod's ServiceAccount (KUBECONFIG set by the kubelet stand-in) and the narrow per-job Role.
`--fail-attempts N`: exit 7 while the pod's attempt label is below N (tests gang restarts).
`--nan-loss`: the report's loss is NaN, which json.dumps writes as the non-JSON token `NaN`.
"""

import argparse
import json
import os
import sys
import time

from kubernetes import client, config


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--exit-code", type=int, default=0)
    p.add_argument("--sleep", type=float, default=0.3)
    p.add_argument("--fail-attempts", type=int, default=0)
    p.add_argument("--nan-loss", action="store_true", help="report loss NaN (as json.dumps writes it)")
    args = p.parse_args()
    config.load_kube_config()
    core = client.CoreV1Api()
    name, ns = os.environ["LVR_POD_NAME"], os.environ["LVR_POD_NAMESPACE"]
    pod = core.read_namespaced_pod(name, ns)
    attempt = int(pod.metadata.labels.get("longvideo.dev/attempt", "0"))
    rank = int(os.environ.get("LVR_NODE_RANK", "0"))
    for step in range(1, args.steps + 1):
        time.sleep(args.sleep)
        if rank == 0:
            report = {"step": step, "total_steps": args.steps, "reward": step / args.steps, "accuracy": 0.5,
                      "last_checkpoint": f"s3://ckpt/step-{step}"}
            if args.nan_loss:
                report["loss"] = float("nan")
            core.patch_namespaced_pod(name, ns, {"metadata": {"annotations": {
                os.environ["LVR_PROGRESS_ANNOTATION"]: json.dumps(report)}}})
        print(f"step {step}/{args.steps}", flush=True)
    if attempt < args.fail_attempts:
        print("simulated NCCL timeout", flush=True)
        return 7
    return args.exit_code


if __name__ == "__main__":
    sys.exit(main())
