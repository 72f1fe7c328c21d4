"""Where a run puts its checkpoints: one definition for the trainer that writes them and the operator
that hands an SFTJob's result to an RLJob (torch-free).

    <output>/checkpoints/step-000123/model/       a Hugging Face model directory (`from_pretrained`)
    <output>/checkpoints/step-000123/trainer_state.pt
    <output>/checkpoints/step-000123/state/       FSDP jobs: every rank's shards of the master weights and
                                                  optimizer state (torch.distributed.checkpoint)
    <output>/checkpoints/latest                   the newest complete checkpoint's name
"""

from __future__ import annotations

CHECKPOINTS = "checkpoints"
LATEST = "latest"
MODEL_DIR = "model"
TRAINER_STATE = "trainer_state.pt"
SHARDED_STATE = "state"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_model_uri(checkpoint: str) -> str:
    """The loadable model directory inside a checkpoint (a local path or an s3:// URI)."""
    return f"{checkpoint.rstrip('/')}/{MODEL_DIR}"
