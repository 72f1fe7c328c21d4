"""Shared-prefix scoring equals per-sequence scoring: log-probs, GRPO loss and every parameter's gradient
(fp32, random tiny models, 3-D mRoPE video positions, prompts of different lengths, replies of different
lengths, left/right padding, micro-batches holding parts of groups), and the LM head never sees a prompt."""

from __future__ import annotations

import pytest
import torch

from lvr_trainer.config import GRPOConfig, ModelConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.model.loading import load_model
from lvr_trainer.parallel.grouped import SegmentLayout
from lvr_trainer.parallel.sp_forward import token_logprobs
from lvr_trainer.rollout.base import Rollout
from lvr_trainer.train.logprobs import response_logprobs
from lvr_trainer.inputs.examples import Batch, build_example, collate
from lvr_trainer.inputs.features import VideoFeatures
from lvr_trainer.train.packing import PackedBatch, pack_groups, prompt_runs
from lvr_trainer.train.rl_rollout import micro_batches
from lvr_trainer.train.rl_update import micro_loss
from lvr_trainer.parallel.grid import single_process_grid

TOL = 1e-5
G = 3


def grouped_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """The dense reference: boolean `(R, 1, T, T)`, True = may attend — the prefix causal, each segment the
    prefix and itself causally, padding queries only themselves (no empty row). Tests only: the product's
    grouped attention keeps the layout, never this."""
    length = segments.shape[-1]
    q, k = segments[:, None, :, None], segments[:, None, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))
    return allowed | torch.eye(length, dtype=torch.bool)


def test_grouped_mask_prompt_causal_segments_private():
    seg = torch.tensor([[0, 0, 1, 1, 2, -1]])
    m = grouped_causal_mask(seg)[0, 0]
    expect = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 0],      # segment 2 sees the prompt and itself, not segment 1
        [0, 0, 0, 0, 0, 1],      # a pad query sees only itself (no NaN row)
    ], dtype=torch.bool)
    assert torch.equal(m, expect)
    assert SegmentLayout.from_segments(seg) == SegmentLayout(((2, (2, 1)),), 6)


def test_prompt_runs():
    assert prompt_runs([0, 0, 0, 1, 1, 2]) == [(0, 3), (3, 5), (5, 6)]
    assert prompt_runs([4]) == [(0, 1)]


@pytest.fixture(scope="module")
def scene():
    """A random tiny model (fp32, larger weights so log-probs vary) and two prompts over videos of
    different grids, three replies each of different lengths."""
    torch.manual_seed(0)
    model, tok = load_model(ModelConfig(preset="tiny", tokenizer="tiny", dtype="float32"))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if p.dim() >= 2 and "visual" not in name:
                p.normal_(0.0, 0.15, generator=g)
    hidden = model.config.text_config.hidden_size
    videos = [VideoFeatures(torch.randn(3 * 4 * 6 // 4, hidden), torch.tensor([[3, 4, 6]]), 1.5),
              VideoFeatures(torch.randn(2 * 6 * 4 // 4, hidden), torch.tensor([[2, 6, 4]]), 0.5)]
    records = [VideoQARecord(id=f"q{i}", video=f"v{i}.mp4", question=q, options=dict(A="red", B="green",
                             C="blue", D="a much longer option text here"), answer="A", category="other",
                             duration=8.0)
               for i, q in enumerate(["What colour?", "Which colour fills the top left corner first?"])]
    gen = torch.Generator().manual_seed(2)
    lengths = [[5, 1, 9], [7, 3, 4]]
    examples = []
    for rec, feats, lens in zip(records, videos, lengths):
        for n in lens:
            reply = torch.randint(10, tok.vocab_size - 10, (n,), generator=gen).tolist()
            examples.append(build_example(model, tok, rec, feats, reply, think=True))
    assert examples[0].prompt_len != examples[G].prompt_len
    pos = examples[0].position_ids[:, :examples[0].prompt_len]
    assert not torch.equal(pos[1], pos[2]) and not torch.equal(pos[0], pos[1])   # truly 3-D positions
    return model, tok, examples


def _left_padded(batch: Batch) -> Batch:
    """The same rows left-padded (real tokens at the end)."""
    out = Batch(*(getattr(batch, f) for f in batch.__dataclass_fields__))
    shift = (batch.attention_mask == 0).sum(-1)
    roll = lambda t, s, d: torch.roll(t, int(s), dims=d)  # noqa: E731
    out.input_ids = torch.stack([roll(r, s, 0) for r, s in zip(batch.input_ids, shift)])
    out.labels = torch.stack([roll(r, s, 0) for r, s in zip(batch.labels, shift)])
    out.attention_mask = torch.stack([roll(r, s, 0) for r, s in zip(batch.attention_mask, shift)])
    out.position_ids = torch.stack([roll(batch.position_ids[:, i], s, 1) for i, s in enumerate(shift)], dim=1)
    return out, shift


def test_packed_logprobs_equal_per_sequence(scene):
    model, tok, examples = scene
    batch = collate(examples, tok.pad_token_id)
    packed = pack_groups(examples, [i // G for i in range(len(examples))], tok.pad_token_id)
    assert packed.input_ids.shape[0] == 2            # one row per prompt
    mask = (batch.target_ids != -100)
    with torch.no_grad():
        per_seq = response_logprobs(model, batch, None)
        shared = response_logprobs(model, packed, None)
        left, shift = _left_padded(batch)
        per_seq_left = response_logprobs(model, left, None)
    assert shared.shape == per_seq.shape
    assert float((shared - per_seq)[mask].abs().max()) <= TOL
    assert float(shared[~mask].abs().max()) == 0.0
    realigned = torch.stack([torch.roll(r, -int(s)) for r, s in zip(per_seq_left, shift)])
    assert float((shared - realigned)[mask].abs().max()) <= TOL
    # packed rows are far shorter than G copies of the prompt
    assert packed.input_ids.numel() < 0.5 * batch.input_ids.numel()


def _rollouts(examples):
    return [Rollout(e.input_ids[e.prompt_len:].tolist(), [-1.0] * (len(e.input_ids) - e.prompt_len), "", True)
            for e in examples]


def _loss_and_grads(model, micros, cfg):
    model.zero_grad(set_to_none=True)
    total = 0.0
    grid = single_process_grid()
    for mb in micros:
        loss, _ = micro_loss(model, mb, cfg, grid, torch.enable_grad)
        (loss * float(mb.mask.sum())).backward()
        total += float(loss.detach()) * float(mb.mask.sum())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return total, grads


@pytest.mark.parametrize("per_micro", [6, 2, 4])   # whole groups, parts of groups, a group and a part
def test_packed_loss_and_gradients_equal_per_sequence(scene, per_micro):
    model, tok, examples = scene
    cfg = GRPOConfig(group_size=G, kl_coef=0.1)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.8, 0.1])
    ros = _rollouts(examples)
    results = []
    for group_size in (None, G):
        micros = micro_batches(examples, ros, adv, per_micro, tok.pad_token_id, torch.device("cpu"),
                               group_size=group_size)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for mb in micros:         # old/ref log-probs near the current policy: ratios inside and outside the clip
                now = response_logprobs(model, mb.batch, None)
                mb.old_logprobs = now + 0.3 * torch.randn(now.shape, generator=gen)
                mb.ref_logprobs = now + 0.2 * torch.randn(now.shape, generator=gen)
        kinds = {type(mb.batch) for mb in micros}
        assert kinds == ({PackedBatch} if group_size else {Batch})
        results.append(_loss_and_grads(model, micros, cfg))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) <= TOL * max(1.0, abs(loss_a))
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    worst = max(float((grads_a[n] - grads_b[n]).abs().max()) for n in grads_a)
    assert worst <= TOL, worst
    assert max(float(g.abs().max()) for g in grads_a.values()) > 1e-3     # the gradients are not all ~0


def test_pack_refuses_mixed_prompts(scene):
    _, tok, examples = scene
    with pytest.raises(ValueError, match="share their prompt"):
        pack_groups(examples[:4], [0, 0, 0, 0], tok.pad_token_id)


def test_lm_head_sees_only_scored_positions(monkeypatch):
    from lvr_trainer.parallel import sp_forward

    head = torch.nn.Linear(8, 50, bias=False)
    rows, inner = [], sp_forward._chunk_logprobs
    monkeypatch.setattr(sp_forward, "_chunk_logprobs", lambda h, *a: rows.append(h.shape[0]) or inner(h, *a))
    hidden = torch.randn(2, 30, 8)
    targets = torch.full((2, 30), -100)
    targets[0, 20:25] = 3
    targets[1, 28:30] = 7
    lp = token_logprobs(hidden, head, targets, chunk_size=4)
    assert sum(rows) == 7 and max(rows) <= 4                 # 7 scored positions, chunks of <= 4
    ref = torch.log_softmax(head(hidden), -1)
    assert torch.allclose(lp[0, 20:25], ref[0, 20:25, 3], atol=1e-6)
    assert torch.allclose(lp[1, 28:30], ref[1, 28:30, 7], atol=1e-6)
    assert float(lp[targets < 0].abs().max()) == 0.0
