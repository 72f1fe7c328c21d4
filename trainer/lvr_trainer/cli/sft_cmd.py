"""`lvr sft`: stage 1, chain-of-thought supervised fine-tuning."""

from __future__ import annotations

from lvr_trainer.cli.common import add_training_parser

STAGE = "sft"


def register(sub) -> None:
    add_training_parser(sub, "sft", "chain-of-thought SFT of a video LLM (run under torchrun for several ranks)",
                        "trainer config YAML (see examples/)").set_defaults(func=_run)


def _run(args) -> int:
    from lvr_trainer.cli.common import load_trainer_config, run_reporting, run_summary_tail

    cfg = load_trainer_config(args.config, STAGE)
    from lvr_trainer.train.preemption import StopOnSigterm
    from lvr_trainer.config import ConfigError
    from lvr_trainer.data.split import DataError
    from lvr_trainer.train.sft import run_sft

    with StopOnSigterm() as stop:      # a deleted / preempted pod: checkpoint, then exit EXIT_PREEMPTED
        summary = run_reporting(lambda: run_sft(cfg, resume=args.resume, stop=stop), DataError, ConfigError)
    losses = summary["losses"]
    if losses:
        print(f"sft: steps {summary['start_step']}->{summary['steps']}, loss {losses[0]:.4f} -> {losses[-1]:.4f}, "
              + run_summary_tail(summary))
    return 0
