"""Diagnostic: does one step along -grad(policy loss) raise the expected reward (importance-sampled)?"""
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
def batch(step, seed):
    idx = R.global_indices(len(state["records"]), cfg.train.seed, step, P)
    recs = [state["records"][i] for i in idx]
    ros = sample_groups(state["engine"], model, tok, recs, source, sampling_params(cfg.rl, seed, step), True)
    sc = score_groups(state["reward"], cfg.rl, recs, ros)
    exs = reply_examples(model, tok, recs, ros, source, True, g)
    micros = micro_batches(exs, ros, sc.advantages, 8 * g, tok.pad_token_id, torch.device("cpu"))
    prefill_logprobs(model, micros, grid, 1.0, "old_logprobs", state["autocast"])
    return micros, sc
def seq_logp(micros):
    prefill_logprobs(model, micros, grid, 1.0, "tmp", state["autocast"])
    return torch.cat([(m.tmp * m.mask).sum(-1) for m in micros])
train, sc_t = batch(0, 7)
same, sc_s = batch(0, 8)     # same prompts, other samples
other, sc_o = batch(1, 9)    # other prompts
model.zero_grad()
tokens = sum(float(m.mask.sum()) for m in train)
for mb in train:
    loss, _ = micro_loss(model, mb, cfg.rl, grid, state["autocast"])
    (loss * float(mb.mask.sum()) / tokens).backward()
params = [p for p in model.parameters() if p.grad is not None]
grads = [p.grad.detach().clone() for p in params]
base = {k: seq_logp(m) for k, m in (("train", train), ("same", same), ("other", other))}
rew = {"train": sc_t.rewards, "same": sc_s.rewards, "other": sc_o.rewards}
done = 0.0
for eta in [0.05, 0.1, 0.2, 0.5, 1.0]:
    with torch.no_grad():
        for p, gr in zip(params, grads):
            p.add_(gr, alpha=-(eta - done))
    done = eta
    row = [f"eta={eta}"]
    for k, m in (("train", train), ("same", same), ("other", other)):
        lr_ = seq_logp(m) - base[k]
        w = lr_.exp()
        r = rew[k]
        est = float(((w - 1) * r).mean())                # IS estimate of E'[R] - E[R]
        selfn = float((w * r).sum() / w.sum() - r.mean())
        row.append(f"{k}: dR_is={est:+.4f} dR_snis={selfn:+.4f} mean|dlogp|={float(lr_.abs().mean()):.3f}")
    print(" | ".join(row), flush=True)
