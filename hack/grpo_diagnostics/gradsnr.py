"""Diagnostic: cosine between policy gradients of independent rollout batches (same policy)."""
import sys, torch
import lvr_trainer.train.rl as R
from lvr_trainer.config import load_config
from lvr_trainer.train.rl_rollout import sample_groups, score_groups, reply_examples, micro_batches, sampling_params
from lvr_trainer.train.rl_update import prefill_logprobs, micro_loss
cfg = load_config(sys.argv[1])
state = R._setup(cfg, False)
model, tok, source, grid = state["model"], state["tokenizer"], state["source"], state["grid"]
g = cfg.rl.group_size
P = int(sys.argv[2])
masked = len(sys.argv) > 3
corner = torch.tensor(tok.convert_tokens_to_ids(["top", "bottom", "left", "right"]))
def grad_of(step, seed_shift=0):
    idx = R.global_indices(len(state["records"]), cfg.train.seed, step, P)
    recs = [state["records"][i] for i in idx]
    ros = sample_groups(state["engine"], model, tok, recs, source, sampling_params(cfg.rl, 7 + seed_shift, step), True)
    sc = score_groups(state["reward"], cfg.rl, recs, ros)
    exs = reply_examples(model, tok, recs, ros, source, True, g)
    micros = micro_batches(exs, ros, sc.advantages, 8 * g, tok.pad_token_id, torch.device("cpu"))
    prefill_logprobs(model, micros, grid, 1.0, "old_logprobs", state["autocast"])
    model.zero_grad()
    tokens = sum(float(m.mask.sum()) for m in micros)
    for mb in micros:
        if masked:
            mb.mask = mb.mask * (~torch.isin(mb.batch.target_ids, corner)).float()
        loss, _ = micro_loss(model, mb, cfg.rl, grid, state["autocast"])
        (loss * float(mb.mask.sum()) / tokens).backward()
    named = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return named, sc.metrics["rollout/accuracy"]
a, acc_a = grad_of(0)
b, acc_b = grad_of(1)
c, acc_c = grad_of(0, seed_shift=1)
def cos(x, y, keys=None):
    keys = keys or list(x)
    xv = torch.cat([x[k].flatten() for k in keys]); yv = torch.cat([y[k].flatten() for k in keys])
    return float(xv @ yv / (xv.norm() * yv.norm() + 1e-30))
print("acc", acc_a, acc_b, acc_c)
print("cos(diff prompts)", cos(a, b), "cos(same prompts, other samples)", cos(a, c))
groups = {}
for k in a:
    key = k.split(".layers.")[1].split(".")[1] if ".layers." in k else k.split(".")[-2]
    groups.setdefault(key, []).append(k)
for key, ks in groups.items():
    print(f"{key:20s} cos_ab={cos(a,b,ks):+.3f} cos_ac={cos(a,c,ks):+.3f} norm={float(torch.cat([a[k].flatten() for k in ks]).norm()):.2e}")
