"""`lvr sft`: stage 1, chain-of-thought supervised fine-tuning."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sft", help="chain-of-thought SFT of a video LLM (run under torchrun for several ranks)")
    p.add_argument("--config", required=True, help="trainer config YAML (see examples/)")
    p.add_argument("--resume", action="store_true", help="continue from output.dir's latest checkpoint")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from lvr_trainer.cli.common import load_trainer_config, run_reporting

    cfg = load_trainer_config(args.config)
    from lvr_trainer.config import ConfigError
    from lvr_trainer.train.setup import DataError
    from lvr_trainer.train.sft import run_sft

    summary = run_reporting(lambda: run_sft(cfg, resume=args.resume), DataError, ConfigError)
    losses = summary["losses"]
    if losses:
        print(f"sft: steps {summary['start_step']}->{summary['steps']}, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
              f"{summary['seconds']:.1f}s, {summary['vision_passes']} vision passes for "
              f"{summary['records']} records; checkpoint {summary['checkpoint']}")
    return 0
