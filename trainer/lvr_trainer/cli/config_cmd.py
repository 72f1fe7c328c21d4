"""`lvr config`: check a trainer config file, or print its JSON schema."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("config", help="check a trainer config file or print the config schema")
    cs = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    v = cs.add_parser("validate", help="load a YAML config and report every bad key, and what `lvr STAGE` "
                      "could not run")
    v.add_argument("file")
    v.add_argument("--stage", choices=["sft", "rl"], default="sft", help="the command the config is for "
                   "(default sft; rl also checks the rl and rollout sections)")
    v.set_defaults(func=_validate)
    s = cs.add_parser("schema", help="print the JSON schema of the trainer config")
    s.set_defaults(func=_schema)


def _validate(args) -> int:
    from lvr_trainer.cli.common import load_trainer_config

    cfg = load_trainer_config(args.file, args.stage)
    print(f"{args.file}: ok ({len(cfg.model_dump())} sections)")
    return 0


def _schema(args) -> int:
    from lvr_trainer.config import TrainerConfig

    print(json.dumps(TrainerConfig.model_json_schema(), indent=2))
    return 0
