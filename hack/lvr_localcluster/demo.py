"""`make demo`: the main job end to end on the local cluster, narrated.

cluster up -> `helm install` the operator -> a synthetic long-video dataset into the cluster's S3 ->
`examples/local/` applied (LongVideoDataset, SFTJob, RLJob from the SFTJob) -> progress as `kubectl get`
shows it -> `lvr eval` of the SFT and RL checkpoints, read from S3, side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from lvr_localcluster.controlplane import REPO_ROOT
from lvr_localcluster.mainjob import (EXAMPLES, S3Target, Narrator, apply, compare, eval_checkpoint, get,
                                      install_operator, load_examples, lvr, upload_tree)

NAMESPACE = "default"
DATA_URI = "s3://lvr/demo/data"
RUNS_PREFIX = "demo/runs/"
# examples/local/dataset.yaml reads DATA_URI; the synthetic data as the SFT reference run makes it
# (examples/sft_tiny.yaml): a CoT teacher that slips on 60% of the first/last questions.
SYNTH = {"videos": 1200, "seconds": 16, "fps": 4, "size": "112x112", "seed": 1, "teacher-slip": 0.6}
SYNTH_ARGS = [a for k, v in SYNTH.items() for a in (f"--{k}", str(v))] + ["--slip-on", "first_of", "last_of"]


def say(text: str = "") -> None:
    print(text, flush=True)


def cluster_up(state_dir: Path) -> dict:
    from lvr_localcluster.__main__ import cmd_up

    if cmd_up(state_dir, 180) != 0:
        raise SystemExit("demo: the local cluster did not start (see above)")
    return json.loads((state_dir / "serve.json").read_text())


def _same_synth(manifest: Path) -> bool:
    """Whether `manifest` (lvr data synth's) describes the data SYNTH makes, so it can be reused."""
    try:
        spec = json.loads(manifest.read_text())["spec"]
    except (OSError, ValueError, KeyError):
        return False
    return (spec.get("videos"), spec.get("seed"), spec.get("teacher_slip")) == (SYNTH["videos"], SYNTH["seed"],
                                                                                 SYNTH["teacher-slip"])


def fresh_start(custom, s3: S3Target, docs: list[dict]) -> None:
    """A rerun starts over: the examples' resources deleted, their outputs removed from S3 (the jobs
    would otherwise resume from the previous run's checkpoints)."""
    from kubernetes.client.rest import ApiException
    from minio import Minio

    for doc in reversed(docs):
        try:
            custom.delete_namespaced_custom_object("longvideo.dev", "v1alpha1", NAMESPACE,
                                                   doc["kind"].lower() + "s", doc["metadata"]["name"])
        except ApiException as err:
            if err.status != 404:
                raise
    for doc in docs:
        while True:
            try:
                get(custom, NAMESPACE, doc["kind"], doc["metadata"]["name"])
                time.sleep(0.5)
            except ApiException:
                break
    client = Minio(s3.url.split("://", 1)[1], s3.access_key, s3.secret_key, secure=False)
    for obj in client.list_objects("lvr", prefix=RUNS_PREFIX, recursive=True):
        client.remove_object("lvr", obj.object_name)
    for obj in client.list_objects("lvr", prefix="demo/embeddings/", recursive=True):
        client.remove_object("lvr", obj.object_name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lvr_localcluster.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "demo-data", help="local copy of the dataset")
    parser.add_argument("--state-dir", type=Path, default=REPO_ROOT / ".cluster", help="the local cluster's dir")
    args = parser.parse_args(argv)
    from kubernetes import client, config

    t0 = time.monotonic()
    times: dict[str, float] = {}
    say("== 1. the local cluster (real kube-apiserver, scheduler, controller-manager; S3 on 127.0.0.1:9000)")
    info = cluster_up(args.state_dir)
    kubeconfig = Path(info["kubeconfig"])
    api = config.new_client_from_config(config_file=str(kubeconfig))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    secret = core.read_namespaced_secret("lvr-s3", "default")
    import base64

    def field_(k):
        return base64.b64decode(secret.data[k]).decode()
    s3 = S3Target(info["s3"]["endpoint"], field_("accessKey"), field_("secretKey"))
    say("\n== 2. helm install the operator (chart charts/longvideo-rl; MinIO off: the cluster brings S3)")
    say(install_operator(kubeconfig, "lvr", "lvr-system").strip().splitlines()[0])
    times["cluster + operator"] = time.monotonic() - t0

    t = time.monotonic()
    say(f"\n== 3. a synthetic long-video dataset -> {DATA_URI}")
    if not _same_synth(args.data / "manifest.json"):
        shutil.rmtree(args.data, ignore_errors=True)
        report = lvr("data", "synth", "--out", str(args.data), *SYNTH_ARGS, capture=True)
        say(next(line for line in report.splitlines() if line.startswith("wrote")))
    else:
        say(f"reusing {args.data} (delete it to synthesise again)")
    say(f"uploaded {upload_tree(s3, args.data, DATA_URI)} files (videos and JSONL splits)")
    times["dataset synth + upload"] = time.monotonic() - t

    docs = load_examples()
    fresh_start(custom, s3, docs)
    say(f"\n== 4. kubectl apply -f {EXAMPLES.relative_to(REPO_ROOT)}/   "
        f"({', '.join(d['kind'] + '/' + d['metadata']['name'] for d in docs)})")
    apply(custom, NAMESPACE, docs)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    ds, sft, rl = names
    narrator = Narrator(custom, NAMESPACE, names, say)
    t = time.monotonic()
    narrator.wait(*ds, {"Ready", "Failed"}, 900)
    times["dataset (validate + cache)"] = time.monotonic() - t
    t = time.monotonic()
    sft_status = narrator.wait(*sft, {"Succeeded", "Failed"}, 1800)
    times["SFTJob"] = time.monotonic() - t
    t = time.monotonic()
    rl_status = narrator.wait(*rl, {"Succeeded", "Failed"}, 1800)
    times["RLJob"] = time.monotonic() - t
    if rl_status["phase"] != "Succeeded" or sft_status["phase"] != "Succeeded":
        say(f"\nthe run did not succeed: SFTJob {sft_status.get('message')}; RLJob {rl_status.get('message')}")
        return 1

    t = time.monotonic()
    say("\n== 5. lvr eval of both checkpoints (read from S3) on the held-out test split")
    out = REPO_ROOT / "runs" / "demo"
    sft_model = sft_status["progress"]["lastCheckpoint"] + "/model"
    rl_model = rl_status["progress"]["lastCheckpoint"] + "/model"
    test = str(args.data / "test.jsonl")
    for label, model in (("SFT", sft_model), ("RL", rl_model)):
        result = eval_checkpoint(model, test, out / f"eval-{label.lower()}", s3, 3136, 160)
        say(f"{label}: {model}: strict accuracy {result_accuracy(result):.1%}")
    say("\nSFT (before) vs RL (after), per category, paired on the same questions:\n")
    say(compare(out / "eval-sft", out / "eval-rl"))
    times["eval (2 checkpoints)"] = time.monotonic() - t
    say("| phase | seconds |\n|---|---:|")
    for phase, seconds in times.items():
        say(f"| {phase} | {seconds:.0f} |")
    say(f"| total | {time.monotonic() - t0:.0f} |")
    say(f"""
A tiny random-init Qwen2.5-VL (hidden 64) on synthetic videos, on CPU: the figures show the pipeline
works and learns, not what a 7B model does. Look around:
  export KUBECONFIG={kubeconfig}
  kubectl get longvideodatasets,sftjobs,rljobs        # phases, progress, accuracy
  kubectl describe rljob {rl[1]}                      # conditions and events
  kubectl -n lvr-system get pods                      # the operator (helm release `lvr`)
  ls {args.state_dir}/pods/default/                    # pod logs (this cluster has no `kubectl logs`)
  tensorboard --logdir {args.state_dir}/pods/default   # each trainer pod's event files (under home/.cache/lvr/runs)
Stop everything: make cluster-down""")
    return 0


def result_accuracy(result: dict) -> float:
    """Overall strict accuracy from `lvr eval`'s results.json (its first frame count)."""
    summary = next(iter(result["by_frames"].values()))
    return float(summary["strict"]["by_category"]["overall"]["accuracy"])


if __name__ == "__main__":
    sys.exit(main())
