"""Teacher-force gold CoT; per token class: count, mean entropy, argmax-miss count, p(gold) at misses."""
import sys, collections, math, torch
from lvr_trainer.config import load_config
from lvr_trainer.train.setup import load_policy, load_split, make_feature_source
from lvr_trainer.train.examples import build_example, collate, sft_target
from lvr_trainer.model.encode import embed_inputs
torch.set_num_threads(1)
cfg = load_config(sys.argv[1])
split = sys.argv[3] if len(sys.argv) > 3 else cfg.data.val
model, tok, proc = load_policy(cfg.model, torch.device("cpu"), from_dir=sys.argv[2])
model.eval()
recs, base = load_split(split, 0.5)
src = make_feature_source(model, proc, cfg, base)
CORNER = {"top", "bottom", "left", "right"}
def cls(w):
    if w in CORNER: return "corner"
    if w in ("yes", "no"): return "yesno"
    if w in ("A", "B", "C", "D"): return "letter"
    if w.isdigit(): return "digit"
    return "other"
stats = collections.defaultdict(lambda: [0, 0.0, 0, []])
n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
for r in recs[:n]:
    ex = build_example(model, tok, r, src(r), sft_target(r, True), True)
    b = collate([ex], tok.pad_token_id)
    with torch.no_grad():
        emb = embed_inputs(model, b.input_ids, b.video_embeds)
        out = model(inputs_embeds=emb, position_ids=b.position_ids, attention_mask=b.attention_mask)
    logits = out.logits[0].float()
    tgt = b.target_ids[0]
    for t in range(len(tgt)):
        g = int(tgt[t])
        if g < 0: continue
        lp = logits[t].log_softmax(-1)
        ent = float(-(lp.exp() * lp).sum())
        w = tok.convert_ids_to_tokens(g)
        c = cls(w)
        key = (c, getattr(r, "category", "?") if c in ("corner","yesno","letter") else "")
        s = stats[key]; s[0] += 1; s[1] += ent
        if int(lp.argmax()) != g:
            s[2] += 1; s[3].append(math.exp(float(lp[g])))
for k, (cnt, ent, miss, pg) in sorted(stats.items(), key=str):
    pg.sort()
    med = pg[len(pg)//2] if pg else float('nan')
    print(f"{str(k):30s} n={cnt:6d} ent/tok={ent/cnt:.3f} ent_total={ent:8.1f} miss={miss:5d} p_gold@miss med={med:.3f} >0.1:{sum(p>0.1 for p in pg)}")
