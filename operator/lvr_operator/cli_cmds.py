"""`lvr crds` (write crds/*.yaml from the API models) and `lvr operator run` (start the operator).

Registered in lvr_trainer.cli.COMMAND_MODULES; imports nothing heavy until a command runs.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def register(sub) -> None:
    c = sub.add_parser("crds", help="write the CustomResourceDefinitions (generated from the API models)")
    c.add_argument("--out", default=str(DEFAULT_CRD_DIR), help=f"output directory (default {DEFAULT_CRD_DIR})")
    c.add_argument("--check", action="store_true", help="exit 1 if the files on disk are stale; write nothing")
    c.add_argument("--rbac", action="store_true", help="also write the operator's RBAC manifest (rbac.yaml)")
    c.set_defaults(func=_crds)

    o = sub.add_parser("operator", help="run the LongVideo-RL operator (needs the `operator` extra)")
    os_ = o.add_subparsers(dest="operator_command", metavar="ACTION", required=True)
    r = os_.add_parser("run", help="reconcile LongVideoDataset, SFTJob and RLJob until interrupted")
    r.add_argument("--namespace", "-n", action="append", default=None,
                   help="watch only this namespace (repeatable; default: all namespaces)")
    r.add_argument("--trainer-image", default=os.environ.get("LVR_TRAINER_IMAGE", "longvideo-rl/trainer:latest"),
                   help="default trainer image (env LVR_TRAINER_IMAGE)")
    r.add_argument("--vllm-image", default=os.environ.get("LVR_VLLM_IMAGE", "longvideo-rl/vllm:latest"),
                   help="default vLLM sidecar image (env LVR_VLLM_IMAGE)")
    r.add_argument("--resync", type=float, default=float(os.environ.get("LVR_RESYNC_SECONDS", "10")),
                   help="seconds between periodic reconciles of every object (default 10)")
    r.add_argument("--verbose", action="store_true", help="debug logging")
    r.set_defaults(func=_run)


def _crds(args) -> int:
    from lvr_operator.crdgen import render_all
    from lvr_operator.manifests.rbac import render_rbac

    files = render_all()
    if args.rbac:
        files["rbac.yaml"] = render_rbac()
    out = Path(args.out)
    stale = [n for n, text in files.items() if not (out / n).exists() or (out / n).read_text() != text]
    if args.check:
        for n in stale:
            print(f"{out / n}: stale; run `lvr crds{' --rbac' if args.rbac else ''}` and commit the result")
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for n in stale:
        (out / n).write_text(files[n])
    print(f"{out}: {len(files)} files, {len(stale)} updated")
    return 0


def _run(args) -> int:
    from lvr_operator.runner import run_operator
    from lvr_operator.settings import OperatorSettings

    settings = OperatorSettings(trainer_image=args.trainer_image, vllm_image=args.vllm_image,
                                resync_seconds=args.resync)
    return run_operator(settings, namespaces=args.namespace, verbose=args.verbose)
