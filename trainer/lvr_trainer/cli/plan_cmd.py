"""`lvr plan`: the per-GPU memory of a job before it runs, by component, with the verdict (exit 0 fits, 3 not)."""

from __future__ import annotations

import json

from lvr_trainer.contracts.exits import EXIT_DOES_NOT_FIT
from lvr_trainer.plan import parse_bytes


def register(sub) -> None:
    p = sub.add_parser("plan", help="per-GPU memory of a training job before it runs (exit 0: fits, 3: does not)")
    p.add_argument("--config", required=True, help="the trainer config (YAML) of the job")
    p.add_argument("--stage", choices=["sft", "rl"], help="default: rl when the config has an rl section")
    p.add_argument("--gpus", type=int, default=8, help="trainer GPUs of the job (a sidecar's excluded); default 8")
    p.add_argument("--gpus-per-node", type=int, help="hsdp: GPUs per node (default: --gpus)")
    p.add_argument("--gpu-memory", default="80GiB", help="memory of one GPU, e.g. 80GiB, 80GB, 141Gi; "
                   "default 80GiB")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import ConfigError, load_config
    from lvr_trainer.plan import plan_memory
    from lvr_trainer.planning import layout_of, model_shape, workload_of

    try:
        cfg = load_config(args.config)
        stage = args.stage or ("rl" if cfg.rl is not None else "sft")
        gpu_bytes = parse_bytes(args.gpu_memory)
        shape = model_shape(cfg.model)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        raise CLIError(str(err)) from None
    plan = plan_memory(shape, workload_of(cfg, stage), layout_of(cfg, stage, args.gpus, args.gpus_per_node, shape),
                       gpu_bytes)
    print(json.dumps(plan.to_json(), indent=2) if args.json else render(plan, args.config, stage))
    return 0 if plan.fits else EXIT_DOES_NOT_FIT


def render(plan, source: str, stage: str) -> str:
    """The plan as a table with its verdict (pure)."""
    from lvr_trainer.plan import GIB

    s, w, lay = plan.shape, plan.workload, plan.layout
    strategy = ("hsdp" if lay.shard_ranks else "fsdp") if lay.sharded else "ddp"
    lines = [f"lvr plan: {source} ({stage}): {s.model_type}, {s.language_params / 1e9:.2f}B language + "
             f"{s.vision_params / 1e9:.2f}B vision parameters; {lay.gpus} GPUs x {plan.gpu_bytes / GIB:.1f} GiB, "
             f"{strategy}, SP {lay.sequence_parallel}",
             f"  {w.frames} frames -> {w.video_tokens:,} video tokens; G {w.group_size} x {w.reply_tokens} reply "
             f"tokens; {w.sequence_tokens:,} tokens per forward ({-(-w.sequence_tokens // lay.sequence_parallel):,} "
             "per rank)",
             f"| {'component':<12} | {'GiB per GPU':>11} | note",
             f"|{'-' * 14}|{'-' * 13}:|------"]
    lines += [f"| {c.name:<12} | {c.bytes / GIB:>11.2f} | {c.note}" for c in plan.components]
    lines.append(f"| {'total':<12} | {plan.total / GIB:>11.2f} | of {plan.gpu_bytes / GIB:.2f}")
    if plan.fits:
        lines.append(f"fits: {(plan.gpu_bytes - plan.total) / GIB:.1f} GiB to spare per GPU")
    else:
        big = plan.largest()
        lines.append(f"does not fit: {(plan.total - plan.gpu_bytes) / GIB:.1f} GiB over; the largest part is "
                     f"{big.name} ({big.bytes / GIB:.1f} GiB). Each of these would fit:")
        lines += [f"  - {a}" for a in plan.advice]
    return "\n".join(lines)
