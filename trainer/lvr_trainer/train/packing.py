"""Shared-prefix packing: the replies to one prompt scored in one row, the prompt computed once.

Per-sequence (what `collate` builds): G rows [prompt, r_i], so every prompt token passes every layer G
times in each prefill and in the update's forward and backward. Packed: one row per prompt,

    [ prompt[:-1] | p_last r_1[:-1] | p_last r_2[:-1] | ... ]        segment ids  0 | 1 ... | 2 ... |

with grouped causal attention (`parallel.grouped`, no T x T mask): the prompt is causal as usual, each
segment sees the whole prompt and itself, never another reply. Each segment opens with a copy of the
prompt's last token at that token's own position, so every packed position predicts exactly one token
(p_last predicts r_i[0] in segment i) and the LM head, position-wise, runs on reply predictions only.
Positions are the per-sequence example's own (3-D mRoPE), so a segment's values are the per-sequence
values: equal to float rounding, loss and gradients included (tests/train/test_packing.py).

Rows hold consecutive replies of one prompt, so a micro-batch may hold a part of a group, or several.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvr_trainer.parallel.grouped import SegmentLayout
from lvr_trainer.inputs.examples import IGNORE, Example

PAD_SEGMENT = -1


@dataclass
class PackedBatch:
    """R packed rows of length T for B replies whose per-sequence layout is (B, S).

    input_ids, target_ids, segments: (R, T) (target IGNORE on the prompt and padding; segment 0 prompt,
    k >= 1 the k-th reply of the row, -1 padding); position_ids: (3, R, T); video_embeds: (N, hidden), the
    rows' videos once each in row order; video_grid_thw: (R, 3); source, dest: (K,) flat indices of the
    K reply predictions into (R*T) and into the per-sequence (B*S); shape: (B, S).
    """

    input_ids: torch.Tensor
    target_ids: torch.Tensor
    segments: torch.Tensor
    position_ids: torch.Tensor
    video_embeds: torch.Tensor
    video_grid_thw: torch.Tensor
    source: torch.Tensor
    dest: torch.Tensor
    shape: tuple[int, int]

    def to(self, device) -> PackedBatch:
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__}
        return PackedBatch(**{f: v.to(device) if isinstance(v, torch.Tensor) else v for f, v in fields.items()})

    def layout(self) -> SegmentLayout:
        """The rows' prefix and segment lengths, for grouped attention (a few integers per row)."""
        return SegmentLayout.from_segments(self.segments)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """Per-position values (R, T) -> the per-sequence layout (B, S), 0 off the reply predictions
        (differentiable)."""
        b, s = self.shape
        flat = packed.new_zeros(b * s)
        return flat.index_put((self.dest,), packed.reshape(-1)[self.source]).view(b, s)


def prompt_runs(prompt_of: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of each run of consecutive equal prompt ids: the replies one packed row holds."""
    runs, start = [], 0
    for i in range(1, len(prompt_of) + 1):
        if i == len(prompt_of) or prompt_of[i] != prompt_of[start]:
            runs.append((start, i))
            start = i
    return runs


def _row(examples: list[Example], first_reply: int, seq_len: int):
    """One packed row's (ids, targets, segments, positions, source cols, dest flat indices)."""
    head = examples[0]
    pl = head.prompt_len
    if pl < 1:
        raise ValueError("a shared-prefix row needs a prompt of at least one token")
    ids, targets = [head.input_ids[:pl - 1]], [torch.full((pl - 1,), IGNORE, dtype=torch.long)]
    segments, positions = [torch.zeros(pl - 1, dtype=torch.long)], [head.position_ids[:, :pl - 1]]
    cols, dest, at = [], [], pl - 1
    for k, ex in enumerate(examples):
        if ex.prompt_len != pl or not torch.equal(ex.input_ids[:pl], head.input_ids[:pl]):
            raise ValueError("replies packed into one row must share their prompt (same record, same "
                             "tokens); group replies by prompt before packing")
        reply = len(ex.input_ids) - pl
        ids.append(ex.input_ids[pl - 1:pl - 1 + reply])                  # p_last, r[:-1]
        targets.append(ex.labels[pl:pl + reply])                          # r
        segments.append(torch.full((reply,), k + 1, dtype=torch.long))
        positions.append(ex.position_ids[:, pl - 1:pl - 1 + reply])
        cols.append(torch.arange(at, at + reply))
        dest.append((first_reply + k) * seq_len + torch.arange(pl - 1, pl - 1 + reply))
        at += reply
    return (torch.cat(ids), torch.cat(targets), torch.cat(segments), torch.cat(positions, dim=1),
            torch.cat(cols), torch.cat(dest))


def pack_groups(examples: list[Example], prompt_of: list[int], pad_id: int) -> PackedBatch:
    """Pack B per-sequence examples (prompt + reply; consecutive examples with the same `prompt_of` share a
    prompt) into one row per run of equal prompts, right-padded."""
    if len(examples) != len(prompt_of) or not examples:
        raise ValueError(f"need one prompt id per example, got {len(prompt_of)} for {len(examples)} examples")
    if any(e.features.embeds is None for e in examples):
        raise ValueError("shared-prefix packing needs cached video embeddings (model.freeze_vision: true)")
    seq_len = max(len(e.input_ids) for e in examples)
    runs = prompt_runs(prompt_of)
    rows = [_row(examples[a:b], a, seq_len) for a, b in runs]
    length = max(len(r[0]) for r in rows)
    n = len(rows)
    input_ids = torch.full((n, length), pad_id, dtype=torch.long)
    target_ids = torch.full((n, length), IGNORE, dtype=torch.long)
    segments = torch.full((n, length), PAD_SEGMENT, dtype=torch.long)
    positions = torch.zeros((3, n, length), dtype=torch.long)
    source, dest = [], []
    for r, (ids, tgt, seg, pos, cols, dst) in enumerate(rows):
        input_ids[r, :len(ids)], target_ids[r, :len(ids)], segments[r, :len(ids)] = ids, tgt, seg
        positions[:, r, :len(ids)] = pos
        source.append(r * length + cols)
        dest.append(dst)
    heads = [examples[a].features for a, _ in runs]
    return PackedBatch(input_ids, target_ids, segments, positions, torch.cat([f.embeds for f in heads]),
                       torch.cat([f.grid_thw for f in heads]), torch.cat(source), torch.cat(dest),
                       (len(examples), seq_len))
