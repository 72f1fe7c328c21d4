"""Prompts for one video question: chat template, expanded video placeholder, `mm_token_type_ids`, and
the 3D mRoPE positions from the model's own `get_rope_index`.

The layout matches transformers' Qwen2.5-VL processor token for token (checked against
tests/fixtures/qwen_vl_processor.npz): `<|vision_start|>` + N x `<|video_pad|>` + `<|vision_end|>`,
N = grid_t * grid_h * grid_w / merge^2, and only the pad tokens are typed 2 (video) in
`mm_token_type_ids` (0 text, 1 image, 2 video). transformers 5.x needs `mm_token_type_ids` for 3D
positions; without it Qwen2.5-VL silently falls back to 1D positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvr_trainer.model.tokenizer import VIDEO_PAD, VISION_END, VISION_START, vision_token_ids

THINK_INSTRUCTION = ("Think step by step inside <think> </think> tags, then give the letter of the "
                     "correct option inside <answer> </answer> tags.")
DIRECT_INSTRUCTION = "Answer with the letter of the correct option inside <answer> </answer> tags."
TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values


@dataclass(frozen=True)
class Prompt:
    """A tokenised prompt with one video.

    input_ids:         (1, S) int64, the video placeholder expanded to `num_video_tokens` pad tokens
    mm_token_type_ids: (1, S) int64, 2 at the video pad tokens, 0 elsewhere
    attention_mask:    (1, S) int64, all ones
    video_grid_thw:    (1, 3) int64
    """

    input_ids: torch.Tensor
    mm_token_type_ids: torch.Tensor
    attention_mask: torch.Tensor
    video_grid_thw: torch.Tensor
    num_video_tokens: int
    text: str  # the rendered chat text before expansion (one pad token)


def format_question(question: str, options: dict[str, str] | None = None) -> str:
    """The question, then one `X. option` line per option in letter order."""
    if not options:
        return question
    return question + "\n" + "\n".join(f"{k}. {options[k]}" for k in sorted(options))


def video_token_count(grid_thw, merge_size: int = 2) -> int:
    """Tokens the LLM sees for a video of this (1, 3) or (3,) grid: t * h * w / merge^2."""
    t, h, w = (int(v) for v in torch.as_tensor(grid_thw).reshape(-1)[:3])
    return t * h * w // (merge_size * merge_size)


def render_chat(tokenizer, question: str, think: bool = True, system: str | None = None) -> str:
    """The chat-template text of a one-turn user prompt with a single video pad, ready for generation."""
    instruction = THINK_INSTRUCTION if think else DIRECT_INSTRUCTION
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": f"{VISION_START}{VIDEO_PAD}{VISION_END}{question}\n{instruction}"})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def expand_video_placeholder(ids: list[int], video_id: int, n_tokens: int) -> list[int]:
    """Replace the single video pad id in `ids` by `n_tokens` copies (exactly one pad must be there)."""
    where = [i for i, t in enumerate(ids) if t == video_id]
    if len(where) != 1:
        raise ValueError(f"expected exactly one video placeholder in the prompt, found {len(where)}")
    i = where[0]
    return ids[:i] + [video_id] * n_tokens + ids[i + 1:]


def build_prompt(tokenizer, question: str, video_grid_thw, merge_size: int = 2, think: bool = True,
                 system: str | None = None, text: str | None = None) -> Prompt:
    """Tokenise a one-video question (or an already-rendered `text` with one video pad) for the model."""
    text = text if text is not None else render_chat(tokenizer, question, think, system)
    video_id = vision_token_ids(tokenizer).video
    grid = torch.as_tensor(video_grid_thw, dtype=torch.long).reshape(1, 3)
    n = video_token_count(grid, merge_size)
    ids = expand_video_placeholder(tokenizer(text, add_special_tokens=False)["input_ids"], video_id, n)
    input_ids = torch.tensor([ids], dtype=torch.long)
    types = torch.where(input_ids == video_id, VIDEO, TEXT).long()
    return Prompt(input_ids, types, torch.ones_like(input_ids), grid, n, text)


def rope_positions(model, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor,
                   video_grid_thw: torch.Tensor, second_per_grid_ts: torch.Tensor | None = None,
                   attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """3D mRoPE positions from the model's `get_rope_index`.

    input_ids, mm_token_type_ids, attention_mask: (B, S); video_grid_thw: (num_videos, 3);
    second_per_grid_ts: (num_videos,) or None (then 1 s per temporal patch).
    Returns position_ids (3, B, S) and rope_deltas (B, 1) (next position minus sequence length,
    what decoding continues from).
    """
    inner = getattr(model, "model", model)
    kwargs = dict(mm_token_type_ids=mm_token_type_ids, video_grid_thw=video_grid_thw,
                  attention_mask=attention_mask)
    if second_per_grid_ts is not None and "qwen2_5" in model.config.model_type:
        kwargs["second_per_grid_ts"] = torch.as_tensor(second_per_grid_ts, dtype=torch.float32).reshape(-1)
    return inner.get_rope_index(input_ids, **kwargs)


def reference_positions(position_ids: torch.Tensor, mm_token_type_ids: torch.Tensor,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`position_ids` (3, B, S) with every text run that follows a vision run starting at that run's largest
    position + 1, as Qwen2-VL / Qwen2.5-VL were trained (their reference code) and as vLLM computes them.

    transformers 5.x's `get_rope_index` starts it at the run's start + max(h, w) / merge, which ignores the
    temporal extent: after a video of many temporal patches the text's positions fall back inside the
    video's temporal range (for an hour of video, thousands of positions back), the trainer scores what a
    pretrained model never saw, and vLLM rollouts (reference positions) become off-policy. Runs already
    right (one temporal patch, or a future transformers) are left as they are. Padding (mask 0) is skipped.
    """
    out = position_ids.clone()
    for b in range(out.shape[1]):
        keep = (attention_mask[b] != 0) if attention_mask is not None else torch.ones_like(mm_token_type_ids[b]).bool()
        idx = keep.nonzero().squeeze(-1)                                   # (L,) valid positions of row b
        types = mm_token_type_ids[b, idx].tolist()
        row = out[:, b, idx]                                              # (3, L), a copy
        shift, vision_max, start = 0, None, 0
        for i in range(1, len(types) + 1):
            if i < len(types) and types[i] == types[start]:
                continue
            run = slice(start, i)                                          # one run of one modality
            row[:, run] += shift
            if types[start] != 0:
                vision_max = int(row[:, run].max())
            elif vision_max is not None:
                extra = vision_max + 1 - int(row[0, start])
                if extra > 0:
                    row[:, run] += extra
                    shift += extra
                vision_max = None
            start = i
        out[:, b, idx] = row
    return out


def use_reference_positions(model) -> None:
    """Make `model`'s own `get_rope_index` (which its forward, `generate` and `rope_positions` all call)
    return `reference_positions`, with decoding deltas to match. Idempotent; per instance."""
    inner = getattr(model, "model", model)
    if not hasattr(inner, "get_rope_index") or getattr(inner.get_rope_index, "_lvr_reference", False):
        return
    original = inner.get_rope_index

    def get_rope_index(input_ids, *args, **kwargs):
        positions, deltas = original(input_ids, *args, **kwargs)
        mm = kwargs.get("mm_token_type_ids", args[0] if args else None)
        if mm is None:
            return positions, deltas
        fixed = reference_positions(positions, mm, kwargs.get("attention_mask"))
        grown = (fixed.amax(dim=(0, 2)) - positions.amax(dim=(0, 2))).to(deltas.dtype)   # (B,)
        return fixed, deltas + grown.view_as(deltas)

    get_rope_index._lvr_reference = True
    inner.get_rope_index = get_rope_index
