"""Named random-init Qwen2.5-VL presets: `tiny` for tests and the demo, `small` for benchmarks.

A preset fixes the architecture; the vocabulary and the vision token ids come from the tokenizer, so
the same preset works with the tiny built tokenizer and with the real Qwen one.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvr_trainer.model.tokenizer import VisionTokenIds


@dataclass(frozen=True)
class Preset:
    """Sizes of one preset. Text head_dim = hidden / heads; sum(mrope_section) must equal head_dim / 2."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    mrope_section: tuple[int, int, int]
    vision_depth: int
    vision_hidden: int
    vision_intermediate: int
    vision_heads: int
    window_size: int
    fullatt_blocks: tuple[int, ...]
    family: str = "qwen2_5_vl"  # or "qwen2_vl" (no window attention; MLP width = mlp_ratio x width)
    rope_theta: float = 1e4


PRESETS: dict[str, Preset] = {
    # ENVIRONMENT.md's measured recipe: forward+backward well under a second at 8 frames of 112x112.
    "tiny": Preset(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, mrope_section=(2, 3, 3),
                   vision_depth=2, vision_hidden=32, vision_intermediate=64, vision_heads=2,
                   window_size=56, fullatt_blocks=(1,)),
    # `tiny` with rope_theta 100: with head_dim 16 and theta 1e4, the height/width sections of mRoPE
    # rotate adjacent video tokens by 0.0003-0.1 rad, too little for a tiny model to tell the quadrants
    # of a frame apart (a `tiny` SFT run names colours 99.9% right and corners at chance, 26%).
    "tiny-rope100": Preset(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, mrope_section=(2, 3, 3),
                           vision_depth=2, vision_hidden=32, vision_intermediate=64, vision_heads=2,
                           window_size=56, fullatt_blocks=(1,), rope_theta=100.0),
    # `tiny` with text head_dim 32: vLLM's CPU attention takes head_dim in {32, 64, 80, ...} only (not 16).
    "tiny-vllm": Preset(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, mrope_section=(4, 6, 6),
                        vision_depth=2, vision_hidden=32, vision_intermediate=64, vision_heads=2,
                        window_size=56, fullatt_blocks=(1,)),
    # Wider, for benchmarks where the vision tower's cost should be visible (~10M parameters + vocab).
    "small": Preset(hidden=384, intermediate=1024, layers=4, heads=6, kv_heads=2, mrope_section=(8, 12, 12),
                    vision_depth=4, vision_hidden=256, vision_intermediate=1024, vision_heads=4,
                    window_size=112, fullatt_blocks=(1, 3)),
    # Qwen2-VL architecture at `tiny` sizes: checks that loading, encoding and splicing cover both families.
    "tiny-qwen2-vl": Preset(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, mrope_section=(2, 3, 3),
                            vision_depth=2, vision_hidden=32, vision_intermediate=64, vision_heads=2,
                            window_size=0, fullatt_blocks=(), family="qwen2_vl"),
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def build_preset_config(name: str, vocab_size: int, tokens: VisionTokenIds, eos_id: int | None = None,
                        pad_id: int | None = None):
    """A `Qwen2_5_VLConfig` (or `Qwen2VLConfig`) for preset `name` with this vocabulary and these token ids."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(preset_names())}")
    p = PRESETS[name]
    if 2 * sum(p.mrope_section) != p.hidden // p.heads:
        raise ValueError(f"preset {name}: mrope_section {p.mrope_section} must sum to head_dim/2")
    text = dict(vocab_size=vocab_size, hidden_size=p.hidden, intermediate_size=p.intermediate,
                num_hidden_layers=p.layers, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
                max_position_embeddings=32768, tie_word_embeddings=True,
                bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id,
                rope_parameters={"rope_type": "default", "rope_theta": p.rope_theta,
                                 "mrope_section": list(p.mrope_section)})
    if p.family == "qwen2_vl":
        vision = dict(depth=p.vision_depth, embed_dim=p.vision_hidden, hidden_size=p.hidden,
                      num_heads=p.vision_heads, mlp_ratio=p.vision_intermediate // p.vision_hidden)
        config_cls = Qwen2VLConfig
    else:
        vision = dict(depth=p.vision_depth, hidden_size=p.vision_hidden, intermediate_size=p.vision_intermediate,
                      num_heads=p.vision_heads, out_hidden_size=p.hidden, window_size=p.window_size,
                      fullatt_block_indexes=list(p.fullatt_blocks), tokens_per_second=2)
        config_cls = Qwen2_5_VLConfig
    return config_cls(text_config=text, vision_config=vision, image_token_id=tokens.image,
                            video_token_id=tokens.video, vision_start_token_id=tokens.vision_start,
                            vision_end_token_id=tokens.vision_end, tie_word_embeddings=True,
                            bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id)
