"""`lvr`: the one command-line entry point. Each subcommand lives in its own small module.

Modules listed in COMMAND_MODULES, and those other packages declare under the `lvr.commands` entry point,
expose `register(subparsers)`; they import nothing heavy at module
level, so `lvr --help` stays fast and works without torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lvr_trainer.contracts.exits import EXIT_DOES_NOT_FIT, EXIT_PREEMPTED
from lvr_trainer.plan import DoesNotFit
from lvr_trainer.train.ownership import OutputInUse
from lvr_trainer.train.preemption import Preempted

COMMAND_MODULES = (
    "lvr_trainer.cli.data_cmd",
    "lvr_trainer.cli.config_cmd",
    "lvr_trainer.cli.sft_cmd",
    "lvr_trainer.cli.rl_cmd",
    "lvr_trainer.cli.eval_cmd",
    "lvr_trainer.cli.encode_cmd",
    "lvr_trainer.cli.rollout_cmd",
    "lvr_trainer.cli.plan_cmd",
)
COMMAND_ENTRY_POINTS = "lvr.commands"   # other installed packages' commands (the operator's: `lvr crds`, ...)


class CLIError(Exception):
    """A user-facing failure: printed as `lvr: error: ...`, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvr", description="LongVideo-RL: train VLMs to reason over long videos (CoT-SFT + GRPO, MR-SP).")
    from lvr_trainer import __version__
    parser.add_argument("--version", action="version", version=f"lvr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from importlib.metadata import entry_points

    for name in COMMAND_MODULES + tuple(ep.value for ep in entry_points(group=COMMAND_ENTRY_POINTS)):
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"lvr: error: {err}", file=sys.stderr)
        _termination_message(str(err))
        return 2
    except OutputInUse as err:
        print(f"lvr: error: {err}", file=sys.stderr)
        _termination_message(str(err))          # the operator's condition quotes it; restarting cannot help
        return 2
    except DoesNotFit as err:
        print(f"lvr: {err}", file=sys.stderr)
        _termination_message(str(err))          # the operator's condition quotes it; restarting cannot help
        return EXIT_DOES_NOT_FIT
    except Preempted as err:
        print(f"lvr: {err}", file=sys.stderr)
        _termination_message(str(err))          # what the operator reads: a preemption, not a failure
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("lvr: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        _termination_message(f"{type(err).__name__}: {err}")
        raise


def _termination_message(text: str) -> None:
    """In a pod (LVR_TERMINATION_LOG, set by the operator to the container's terminationMessagePath), the
    reason the command failed, so that the job's status quotes it instead of a launcher's traceback."""
    path = os.environ.get("LVR_TERMINATION_LOG")
    if path:
        try:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(text[:4000])
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
