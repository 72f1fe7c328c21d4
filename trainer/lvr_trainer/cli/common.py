"""Helpers shared by the CLI modules."""

from __future__ import annotations


def add_training_parser(sub, name: str, help: str, config_help: str):
    """`lvr NAME --config FILE [--resume]`: the arguments every training stage takes."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--resume", action="store_true", help="continue from output.dir's latest checkpoint")
    return p


def run_summary_tail(summary: dict) -> str:
    """The end of a training stage's closing line: wall time, vision passes, records, checkpoint."""
    return (f"{summary['seconds']:.1f}s, {summary['vision_passes']} vision passes for {summary['records']} "
            f"records; checkpoint {summary['checkpoint']}")


def load_trainer_config(path: str, stage: str):
    """The trainer config at `path`, checked for what `lvr <stage>` can run (the same check the operator
    makes at admission: lvr_trainer.runnable), or a CLIError naming the file and every bad key."""
    import os

    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import ConfigError, load_config
    from lvr_trainer.runnable import attention_heads, check_runnable

    try:
        cfg = load_config(path)
        check_runnable(cfg, stage=stage, source=path, world_size=int(os.environ.get("WORLD_SIZE", "1")),
                       heads=attention_heads(cfg.model))
        return cfg
    except ConfigError as err:
        raise CLIError(str(err)) from None


def run_reporting(fn, *errors: type[Exception]):
    """`fn()`, with the listed user-facing errors turned into a CLIError (message, no traceback); a run that
    returns leaves its process groups together with the other ranks."""
    from lvr_trainer.cli import CLIError
    from lvr_trainer.parallel.world import leave_world

    try:
        result = fn()
    except errors as err:
        raise CLIError(str(err)) from None
    leave_world()
    return result
