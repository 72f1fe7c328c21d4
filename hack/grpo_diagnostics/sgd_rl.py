"""Experiment: GRPO with plain SGD instead of AdamW (lr from the config)."""
import sys, torch
import lvr_trainer.train.rl as R
from lvr_trainer.train.optim import lr_factor
def build(model, cfg, total):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, momentum=float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg.warmup_steps, cfg.min_lr_ratio))
    return opt, sch
R.build_optimizer = build
from lvr_trainer.config import load_config
R.run_rl(load_config(sys.argv[1]))
