"""Token-level examples and padded batches for the language model (text + spliced video embeddings).

An example is a prompt (chat template, video placeholder expanded, `mm_token_type_ids`) followed by
a response; `labels` are -100 on the prompt so only response tokens carry loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.inputs.features import VideoFeatures, VideoFeatureSource
from lvr_trainer.model.prompt import build_prompt, format_question, rope_positions
from lvr_trainer.rollout.base import RolloutRequest

IGNORE = -100


def sft_target(record: VideoQARecord, think: bool) -> str:
    """`<think>{reasoning}</think><answer>{letter}</answer>`, or only the answer tag without CoT."""
    answer = f"<answer>{record.answer}</answer>"
    return f"<think>{record.reasoning}</think>{answer}" if think else answer


@dataclass
class Example:
    """One sequence. Shapes: input_ids, labels, mm_token_type_ids (S,); position_ids (3, S)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    mm_token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    features: VideoFeatures
    prompt_len: int


def prompt_for(record: VideoQARecord, features: VideoFeatures, tokenizer, think: bool, merge_size: int = 2):
    return build_prompt(tokenizer, format_question(record.question, record.options), features.grid_thw,
                        merge_size=merge_size, think=think)


def build_example(model, tokenizer, record: VideoQARecord, features: VideoFeatures, response: str | list[int],
                  think: bool = True) -> Example:
    """Prompt + response (text, or token ids as sampled) + EOS, with loss only on the response."""
    merge = model.config.vision_config.spatial_merge_size
    prompt = prompt_for(record, features, tokenizer, think, merge)
    if isinstance(response, str):
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    else:
        response_ids = list(response)
    p_ids = prompt.input_ids[0]
    resp = torch.tensor(response_ids, dtype=torch.long)
    input_ids = torch.cat([p_ids, resp])
    labels = torch.cat([torch.full_like(p_ids, IGNORE), resp])
    mm = torch.cat([prompt.mm_token_type_ids[0], torch.zeros_like(resp)])
    spgt = None if features.second_per_grid_t is None else torch.tensor([features.second_per_grid_t])
    positions, _ = rope_positions(model, input_ids[None], mm[None], features.grid_thw, spgt)
    return Example(input_ids, labels, mm, positions[:, 0], features, len(p_ids))


@dataclass
class Batch:
    """Right-padded batch. input_ids, labels, attention_mask: (B, S); position_ids: (3, B, S);
    video_embeds: (N_total, hidden) in row order (None when the vision tower trains: then
    pixel_values and video_grid_thw are set)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    video_embeds: torch.Tensor | None
    pixel_values: torch.Tensor | None
    video_grid_thw: torch.Tensor

    def to(self, device) -> Batch:
        move = (lambda t: None if t is None else t.to(device))
        return Batch(*(move(getattr(self, f)) for f in self.__dataclass_fields__))

    @property
    def target_ids(self) -> torch.Tensor:
        """(B, S): the label of the next position (labels shifted left), IGNORE at the end."""
        return torch.cat([self.labels[:, 1:], torch.full_like(self.labels[:, :1], IGNORE)], dim=1)


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Pad to the longest example on the right."""
    length = max(len(e.input_ids) for e in examples)
    b = len(examples)
    input_ids = torch.full((b, length), pad_id, dtype=torch.long)
    labels = torch.full((b, length), IGNORE, dtype=torch.long)
    mask = torch.zeros((b, length), dtype=torch.long)
    positions = torch.zeros((3, b, length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n], labels[i, :n], mask[i, :n] = e.input_ids, e.labels, 1
        positions[:, i, :n] = e.position_ids
    feats = [e.features for e in examples]
    grids = torch.cat([f.grid_thw for f in feats])
    if all(f.embeds is not None for f in feats):
        return Batch(input_ids, labels, mask, positions, torch.cat([f.embeds for f in feats]), None, grids)
    return Batch(input_ids, labels, mask, positions, None, torch.cat([f.pixel_values for f in feats]), grids)


def request_for(model, tokenizer, record: VideoQARecord, source: VideoFeatureSource, think: bool) -> RolloutRequest:
    """The generation request for one record: prompt ids and the video's (cached) embeddings."""
    feats = source(record)
    prompt = prompt_for(record, feats, tokenizer, think, model.config.vision_config.spatial_merge_size)
    return RolloutRequest(prompt.input_ids[0], prompt.mm_token_type_ids[0], feats.embeds, feats.grid_thw,
                          feats.second_per_grid_t)
