"""The names that select algorithm variants: `str` Enums shared by the config and the registries.

No torch here: `lvr_trainer.config` imports these so that a config file is checked without the trainer.
"""

from __future__ import annotations

from enum import Enum


class AdvantageKind(str, Enum):
    """How a group's rewards become advantages (see `grpo.ADVANTAGES`)."""

    grpo = "grpo"  # (r - mean) / (std + eps), Shao et al. 2024 (DeepSeekMath), eq. in Sec. 4.1.2
    dr_grpo = "dr_grpo"  # r - mean, no std division, Liu et al. 2025 ("Understanding R1-Zero-like training")


class KLKind(str, Enum):
    """Per-token estimators of KL(policy || reference) (see `grpo.KL_PENALTIES`)."""

    k1 = "k1"
    abs = "abs"
    mse = "mse"
    low_var_kl = "low_var_kl"


class LossAgg(str, Enum):
    """How a (B, T) matrix of per-token losses becomes one scalar (see `grpo.agg_loss`)."""

    token_mean = "token-mean"
    seq_mean_token_mean = "seq-mean-token-mean"
    seq_mean_token_sum = "seq-mean-token-sum"


class AnswerKind(str, Enum):
    """What the reference answer of a record is, for `rewards.accuracy_reward`."""

    mc = "mc"  # an option letter
    number = "number"  # a number, compared with a relative tolerance
    text = "text"  # free text, compared after normalisation


class RewardName(str, Enum):
    """Built-in reward functions (see `rewards.REWARDS`); custom ones are given as `module:function`."""

    accuracy = "accuracy"
    format = "format"
