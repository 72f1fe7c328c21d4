"""Where a run puts its checkpoints: one definition for the trainer that writes them and the operator
that hands an SFTJob's result to an RLJob (torch-free).

    <output>/checkpoints/step-000123/model/       a Hugging Face model directory (`from_pretrained`)
    <output>/checkpoints/step-000123/trainer_state.pt
    <output>/checkpoints/step-000123/state/       FSDP jobs: every rank's shards of the master weights and
                                                  optimizer state (torch.distributed.checkpoint)
    <output>/checkpoints/latest                   the newest complete checkpoint's name
"""

from __future__ import annotations

import re

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_DIR = "model"
TRAINER_STATE = "trainer_state.pt"
SHARDED_STATE = "state"


STEP_NAME = re.compile(r"step-(\d{6,})")


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checked_step_name(text: str, where: str) -> str:
    """`text` (a `latest` marker's content) as a checkpoint name, or ValueError: only `step-NNNNNN` names a
    checkpoint, so a marker can never lead outside the checkpoints directory."""
    name = text.strip()
    if not STEP_NAME.fullmatch(name):
        raise ValueError(f"{where} names {name[:80]!r}, which is not a checkpoint name (step-NNNNNN): the marker "
                         "is corrupt or was not written by lvr. Fix or delete it (resuming then starts from the "
                         "newest step-* directory you name in it, or from scratch)")
    return name


def checkpoint_model_uri(checkpoint: str) -> str:
    """The loadable model directory inside a checkpoint (a local path or an s3:// URI)."""
    return f"{checkpoint.rstrip('/')}/{MODEL_DIR}"
