"""Cached video embeddings spliced into inputs_embeds give the model's own logits (no vision pass)."""

from __future__ import annotations

import pytest
import torch

from lvr_trainer.model.encode import (cached_video_kwargs, embed_inputs, encode_video, split_groups,
                                      vision_digest)
from lvr_trainer.model.loading import vision_tower
from lvr_trainer.model.processor import VideoProcessor
from lvr_trainer.model.prompt import build_prompt, rope_positions


@pytest.fixture()
def inputs(tiny, frames):
    model, tok = tiny
    processed = VideoProcessor.from_model_config(model.config)(frames, fps=2.0)
    pixel_values, grid = processed.as_tensors()
    prompt = build_prompt(tok, "Which colour appeared first?", grid)
    spgt = torch.tensor([processed.second_per_grid_ts])
    return model, prompt, pixel_values, grid, spgt


def _count_vision_passes(model):
    calls = []
    handle = vision_tower(model).register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_spliced_cached_embeddings_equal_pixel_forward(inputs):
    model, prompt, pixel_values, grid, spgt = inputs
    with torch.no_grad():
        ref = model(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask,
                    pixel_values_videos=pixel_values, video_grid_thw=grid,
                    mm_token_type_ids=prompt.mm_token_type_ids, second_per_grid_ts=spgt).logits
        cached = encode_video(model, pixel_values, grid)  # (64, 64): the cache's payload
        assert cached.shape == (prompt.num_video_tokens, model.config.text_config.hidden_size)
        calls, handle = _count_vision_passes(model)
        positions, deltas = rope_positions(model, prompt.input_ids, prompt.mm_token_type_ids, grid, spgt)
        out = model(inputs_embeds=embed_inputs(model, prompt.input_ids, cached),
                    attention_mask=prompt.attention_mask, position_ids=positions).logits
        handle.remove()
        one_d = model(inputs_embeds=embed_inputs(model, prompt.input_ids, cached),
                      attention_mask=prompt.attention_mask).logits
    assert calls == []
    assert positions.shape == (3, 1, prompt.input_ids.shape[1]) and deltas.shape == (1, 1)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (one_d - ref).abs().max().item() > 1e-4  # 1D positions are wrong: mRoPE matters


def test_generate_from_cached_embeddings_matches_pixels(inputs):
    model, prompt, pixel_values, grid, spgt = inputs
    common = dict(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask, video_grid_thw=grid,
                  mm_token_type_ids=prompt.mm_token_type_ids, second_per_grid_ts=spgt, max_new_tokens=6,
                  do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(pixel_values_videos=pixel_values, **common)
        cached = encode_video(model, pixel_values, grid)
        calls, handle = _count_vision_passes(model)
        out = model.generate(**common, **cached_video_kwargs(cached, grid))
        handle.remove()
    assert calls == []
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.scores, ref.scores):
        assert (a - b).abs().max().item() <= 1e-5


def test_embed_inputs_checks_the_token_count(inputs):
    model, prompt, pixel_values, grid, _ = inputs
    with torch.no_grad():
        cached = encode_video(model, pixel_values, grid)
    with pytest.raises(ValueError, match="64 video tokens but 63"):
        embed_inputs(model, prompt.input_ids, cached[:63])


def test_split_groups_is_balanced_and_contiguous():
    assert split_groups(5, 2) == [(0, 3), (3, 5)]
    assert split_groups(4, 2) == [(0, 2), (2, 4)]
    assert split_groups(1, 3) == [(0, 1), (1, 1), (1, 1)]
    for t in range(0, 20):
        for w in range(1, 6):
            b = split_groups(t, w)
            assert b[0][0] == 0 and b[-1][1] == t
            assert all(b[i][1] == b[i + 1][0] for i in range(w - 1))
            assert max(s - a for a, s in b) - min(s - a for a, s in b) <= 1


def test_vision_digest_changes_with_vision_weights_only(tiny):
    from lvr_trainer.config import ModelConfig
    from lvr_trainer.model.loading import load_model

    model, _ = load_model(ModelConfig(preset="tiny"))
    before = vision_digest(model)
    assert before == vision_digest(tiny[0])  # same seed, same weights
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    assert vision_digest(model) == before
    with torch.no_grad():
        next(vision_tower(model).parameters()).add_(1e-3)
    assert vision_digest(model) != before


def test_qwen2_vl_family_splices_the_same_way(frames):
    from lvr_trainer.config import ModelConfig
    from lvr_trainer.model.loading import load_model

    model, tok = load_model(ModelConfig(preset="tiny-qwen2-vl"))
    assert model.config.model_type == "qwen2_vl"
    pixel_values, grid = VideoProcessor.from_model_config(model.config)(frames).as_tensors()
    prompt = build_prompt(tok, "Which colour appeared first?", grid)
    with torch.no_grad():
        ref = model(input_ids=prompt.input_ids, pixel_values_videos=pixel_values, video_grid_thw=grid,
                    mm_token_type_ids=prompt.mm_token_type_ids).logits
        positions, _ = rope_positions(model, prompt.input_ids, prompt.mm_token_type_ids, grid)
        cached = encode_video(model, pixel_values, grid)
        out = model(inputs_embeds=embed_inputs(model, prompt.input_ids, cached), position_ids=positions).logits
    assert (out - ref).abs().max().item() <= 1e-5


def test_text_after_a_long_video_starts_past_the_videos_last_position(inputs):
    """Qwen's reference mRoPE (and vLLM's): the text after a video starts at the video's largest position
    + 1. transformers 5.x starts it at video start + max(h, w) / merge, inside the temporal range of a
    video of several temporal patches; `use_reference_positions` (applied by load_model) corrects that in
    every path that asks the model for positions: rope_positions, forward, generate."""
    from lvr_trainer.model.prompt import reference_positions

    model, prompt, _, grid, spgt = inputs
    assert int(grid[0, 0]) > 1                                           # several temporal patches
    positions, deltas = rope_positions(model, prompt.input_ids, prompt.mm_token_type_ids, grid, spgt)
    video = prompt.mm_token_type_ids[0] == 2
    after = int(video.nonzero().max()) + 1                               # first text token after the video
    assert int(positions[:, 0, after].unique()) == int(positions[:, 0, video].max()) + 1
    assert int(deltas[0, 0]) == int(positions.max()) + 1 - prompt.input_ids.shape[1]
    # what transformers alone gives falls short by the temporal extent, and the correction is the only change
    inner = type(model.model)
    raw, _ = inner.get_rope_index(model.model, prompt.input_ids, prompt.mm_token_type_ids, video_grid_thw=grid,
                                  second_per_grid_ts=spgt.float())
    assert int(raw[0, 0, after]) < int(positions[0, 0, after])
    assert torch.equal(raw[:, :, :after], positions[:, :, :after])
    assert torch.equal(reference_positions(positions, prompt.mm_token_type_ids), positions)   # idempotent
    # left padding: the padded slots are skipped, the row's positions are the unpadded ones
    pad = torch.zeros(1, 3, dtype=torch.long)
    padded, _ = rope_positions(model, torch.cat([pad, prompt.input_ids], 1),
                               torch.cat([pad, prompt.mm_token_type_ids], 1), grid, spgt,
                               attention_mask=torch.cat([pad, torch.ones_like(prompt.input_ids)], 1))
    assert torch.equal(padded[:, :, 3:], positions)


def test_a_slice_embeds_like_the_whole_sequence_cut(tiny):
    """An SP rank embeds only its slice: any [lo, hi) equals the whole row's embedding cut there, video
    positions included, with rows holding different numbers of video tokens."""
    import torch

    from lvr_trainer.model.encode import embed_inputs, slice_embedder

    model, _ = tiny
    video = model.config.video_token_id
    t = [i for i in range(1, 40) if i not in (video, model.config.image_token_id)]       # text tokens
    ids = torch.tensor([[t[0], t[1], video, video, video, t[2], t[3], video, t[4], t[5]],
                        [video, video, *t[6:14]]])
    embeds = torch.randn(6, model.config.text_config.hidden_size)
    whole = embed_inputs(model, ids, embeds)
    embed = slice_embedder(model, ids, embeds)
    for lo, hi in [(0, 10), (0, 3), (3, 8), (4, 5), (8, 10), (5, 5)]:
        assert torch.equal(embed(lo, hi), whole[:, lo:hi]), (lo, hi)
