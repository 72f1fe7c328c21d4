"""A tiny random-init Qwen2.5-VL and a batch with a real video-token layout, for the SP tests.

Local on purpose (the SP tests must not depend on another package's presets). fp32, sdpa.
"""

from __future__ import annotations

import torch

VOCAB, IMAGE, VIDEO, V_START, V_END = 128, 120, 121, 122, 123


def tiny_model(seed: int = 0, heads: int = 4, kv_heads: int = 2, layers: int = 2, family: str = "qwen2_5_vl"):
    """A random `Qwen2_5_VLForConditionalGeneration` (or `Qwen2VLForConditionalGeneration` with
    family="qwen2_vl"): hidden 64, 4 heads of 16 (mRoPE section 2+3+3), 2 KV heads, 2 layers."""
    import transformers

    torch.manual_seed(seed)
    if family == "qwen2_vl":
        vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
        config_cls, model_cls = transformers.Qwen2VLConfig, transformers.Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                      window_size=56, fullatt_block_indexes=[0])
        config_cls, model_cls = transformers.Qwen2_5_VLConfig, transformers.Qwen2_5_VLForConditionalGeneration
    config = config_cls(
        text_config=dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, attention_dropout=0.0,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}),
        vision_config=vision,
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END,
        attn_implementation="sdpa")
    return model_cls(config).float().eval()


def _sample(gen: torch.Generator, prefix: int, grid_thw: tuple[int, int, int], suffix: int):
    n_video = grid_thw[0] * (grid_thw[1] // 2) * (grid_thw[2] // 2)
    text = lambda n: torch.randint(1, IMAGE, (n,), generator=gen).tolist()  # noqa: E731
    ids = text(prefix) + [V_START] + [VIDEO] * n_video + [V_END] + text(suffix)
    return ids


def make_batch(model, specs, pad_side: str = "right", seed: int = 0) -> dict:
    """A padded batch from `specs`: list of `(prefix_len, (t, h, w) video grid, suffix_len)`.

    Returns input_ids, attention_mask, mm_token_type_ids, video_grid_thw `(N, 3)`, position_ids
    `(3, B, T)` from `get_rope_index`, inputs_embeds `(B, T, H)` (text embeddings with random "cached
    video embeddings" spliced in), target_ids `(B, T)` (-100 where nothing is scored) and valid `(B, T)`.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = [_sample(gen, p, g, s) for p, g, s in specs]
    length = max(map(len, rows))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        sl = slice(0, len(row)) if pad_side == "right" else slice(length - len(row), length)
        ids[b, sl] = torch.tensor(row)
        mask[b, sl] = 1
    mm_types = (ids == VIDEO).long() * 2
    grid_thw = torch.tensor([g for _, g, _ in specs])
    position_ids, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm_types, video_grid_thw=grid_thw,
                                                 attention_mask=mask)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
    video = torch.randn(embeds.shape, generator=gen)
    embeds = torch.where((ids == VIDEO).unsqueeze(-1), video, embeds).requires_grad_(False)
    target = torch.full_like(ids, -100)
    target[:, :-1] = ids[:, 1:]
    valid = mask.bool().clone()
    valid[:, :-1] &= mask[:, 1:].bool()
    valid[:, -1] = False
    target[~valid] = -100
    return dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm_types, video_grid_thw=grid_thw,
                position_ids=position_ids, inputs_embeds=embeds, target_ids=target, valid=valid)


def reference_logprobs(model, batch: dict) -> torch.Tensor:
    """Single-process log-probs `(B, T)` through the model's own forward (transformers' masks)."""
    out = model(inputs_embeds=batch["inputs_embeds"], position_ids=batch["position_ids"],
                attention_mask=batch["attention_mask"], use_cache=False)
    logp = out.logits.float().log_softmax(-1)
    return logp.gather(-1, batch["target_ids"].clamp(min=0).unsqueeze(-1)).squeeze(-1)


def masked_nll(logprobs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over valid targets."""
    return -(logprobs * valid).sum() / valid.sum()
