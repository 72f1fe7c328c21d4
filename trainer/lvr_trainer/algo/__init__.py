"""RL algorithms as pure functions: rewards (no torch), GRPO advantages, KL penalties and policy losses.

`lvr_trainer.algo.kinds`, `.answers` and `.rewards` import no torch, so the config and the operator can
use them; `lvr_trainer.algo.grpo` needs torch.
"""
