"""`lvr rl`: stage 2, GRPO reinforcement learning from cached video embeddings."""

from __future__ import annotations

from lvr_trainer.cli.common import add_training_parser

STAGE = "rl"


def register(sub) -> None:
    add_training_parser(sub, "rl", "GRPO reinforcement learning of a video LLM (from an SFT checkpoint or any model)",
                        "trainer config YAML with an `rl:` section (see examples/)").set_defaults(func=_run)


def _run(args) -> int:
    from lvr_trainer.cli.common import load_trainer_config, run_reporting, run_summary_tail

    cfg = load_trainer_config(args.config, STAGE)
    from lvr_trainer.train.preemption import StopOnSigterm
    from lvr_trainer.train.rl import RLConfigError, run_rl
    from lvr_trainer.train.rl_rollout import RolloutUnavailable
    from lvr_trainer.data.split import DataError

    with StopOnSigterm() as stop:      # a deleted / preempted pod: checkpoint, then exit EXIT_PREEMPTED
        summary = run_reporting(lambda: run_rl(cfg, resume=args.resume, stop=stop), DataError, RLConfigError,
                                RolloutUnavailable)
    history = summary["history"]
    if history:
        first, last = history[0], history[-1]
        print(f"rl: steps {summary['start_step']}->{summary['steps']}, reward {first['reward/total']:.3f} -> "
              f"{last['reward/total']:.3f}, format {first['rollout/format_rate']:.2f} -> "
              f"{last['rollout/format_rate']:.2f}, " + run_summary_tail(summary))
    return 0
