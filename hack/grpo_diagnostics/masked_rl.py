"""Diagnostic only: GRPO with corner tokens masked out of the policy loss."""
import sys
import lvr_trainer.train.rl_update as U
orig = U.micro_loss
ids = None
def patched(model, mb, cfg, grid, autocast):
    global ids
    import torch
    if ids is None:
        tok = patched.tok
        ids = torch.tensor(tok.convert_tokens_to_ids(["top", "bottom", "left", "right"]))
    keep = ~torch.isin(mb.batch.target_ids, ids)
    mb.mask = mb.mask * keep.to(mb.mask.dtype)
    return orig(model, mb, cfg, grid, autocast)
U.micro_loss = patched
import lvr_trainer.train.rl as R
from lvr_trainer.config import load_config
cfg = load_config(sys.argv[1])
from lvr_trainer.train.setup import load_policy
_, patched.tok, _ = load_policy(cfg.model, __import__("torch").device("cpu"))
R.run_rl(cfg)
