"""Sequence-parallel prefill: log-probs of target tokens from `inputs_embeds`, for SP = 1 or > 1.

What the SFT and RL loops call for the policy and the reference model (MR-SP stage 2, "Scaling RL
to Long Videos", arXiv:2507.07966). The vision tower is not run here: the loops splice cached video
embeddings into the text embeddings first and pass the result as `inputs_embeds`.

Per SP rank, for a batch padded to T' = SP * ceil(T / SP):
    inputs_embeds (B, T, H) -> pad -> this rank's shard (B, T'/SP, H)   [or embed(lo, hi): this shard only]
    position_ids  (3, B, T) -> pad -> shard (3, B, T'/SP)      [mRoPE computed once on the full sequence]
    decoder layers (attention: Ulysses all-to-all, everything else local) -> hidden (B, T'/SP, H)
    scored positions' hidden states all-gathered, each rank's equal share through lm_head + log_softmax in
    chunks, the shares all-gathered -> (B, T') -> unpad -> (B, T)
Every rank of an SP group must be given the same sample(s); every rank returns the same log-probs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint

from . import collectives
from .comm import all_gather_rows, gather_rows
from .grid import ProcessGrid
from .grouped import SegmentLayout
from .sequence import causal_padding_mask, is_right_padded, pad_to_multiple, split_for_rank, unpad
from .ulysses import enable_ulysses, language_model_parts, ulysses_context


def _chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature     # (C, V)
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # (C,)


def token_logprobs(hidden: torch.Tensor, lm_head: torch.nn.Linear, target_ids: torch.Tensor,
                   temperature: float = 1.0, chunk_size: int = 4096) -> torch.Tensor:
    """log p(target_ids[b, t] | position t) from final hidden states, `(B, T, H)` -> `(B, T)` float32.

    Only positions with a target run the LM head: a negative target (ignore index -100: the prompt, padding)
    costs nothing and reads 0, so a long video prompt never meets the (V x H) head. The `(K, V)` logits of
    the K scored positions are never held whole: they are built `chunk_size` positions at a time and, when
    gradients are needed, recomputed in backward (checkpoint), so only `(K, H)` is saved.
    """
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])                                  # (B*T, H)
    flat_targets = target_ids.reshape(-1)
    scored = (flat_targets >= 0).nonzero().squeeze(-1)                                  # (K,)
    out = torch.zeros(flat_targets.shape[0], dtype=torch.float32, device=hidden.device)
    if scored.numel() == 0:     # nothing to score: a zero that still reaches the parameters' graph
        return (out + 0.0 * hidden.sum().float()).view(target_ids.shape)
    parts = []
    for start in range(0, scored.numel(), chunk_size):
        rows = scored[start:start + chunk_size]
        h, t = flat_hidden[rows], flat_targets[rows]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_logprobs, h, lm_head.weight, lm_head.bias, t, temperature,
                                    use_reentrant=False))
        else:
            parts.append(_chunk_logprobs(h, lm_head.weight, lm_head.bias, t, temperature))
    return out.index_put((scored,), torch.cat(parts)).view(target_ids.shape)


def _full_positions(position_ids: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor:
    """`(3, B, T)` mRoPE positions; 1-D `(B, T)` positions are broadcast, None means 0..T-1."""
    if position_ids is None:
        position_ids = torch.arange(length, device=device).expand(batch, length)
    if position_ids.ndim == 2:
        position_ids = position_ids.unsqueeze(0).expand(3, -1, -1)
    if position_ids.shape[0] != 3 or position_ids.shape[-1] != length:
        raise ValueError(f"position_ids must be (3, B, T) with T={length}, got {tuple(position_ids.shape)}")
    return position_ids


def sp_forward_logprobs(model: torch.nn.Module, inputs_embeds: torch.Tensor | Callable[[int, int], torch.Tensor],
                        position_ids: torch.Tensor | None,
                        target_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                        grid: ProcessGrid | None = None, *, temperature: float = 1.0,
                        chunk_size: int = 4096) -> torch.Tensor:
    """Log-probs of `target_ids` under a Qwen2-VL / Qwen2.5-VL model, sequence-parallel over `grid`.

    Args:
        model: a `Qwen2_5_VLForConditionalGeneration` / `Qwen2VLForConditionalGeneration`.
        inputs_embeds: `(B, T, H)`, the full sequence (text embeddings with video embeddings spliced
            in), identical on every rank of the SP group; or `embed(lo, hi)` giving positions [lo, hi) of
            it (`model.encode.slice_embedder`), so that each rank builds only its own shard.
        position_ids: `(3, B, T)` mRoPE positions from `model.model.get_rope_index` on the full
            sequence (or `(B, T)` 1-D positions, or None for 0..T-1).
        target_ids: `(B, T)`, the token to score at each position (the inputs shifted left by one).
        attention_mask: `(B, T)`, 1 real / 0 padding; None means all real. Any padding layout works;
            right padding (or none) keeps attention on the fast causal path. Or a `SegmentLayout` of
            shared-prefix rows (grouped attention, `parallel.grouped`: no T x T mask).
        grid: the process grid; None or SP=1 runs the plain single-process model.
        temperature: logits are divided by it (rollout sampling temperature).
        chunk_size: positions per lm_head chunk (bounds the `(B, chunk, V)` logits).
    Returns:
        `(B, T)` float32 log-probs, the same on every SP rank, differentiable; 0 where the target is
        negative (ignored). Values at padding are meaningless; mask them. After backward, call
        `reduce_gradients`.
    """
    lm, head = language_model_parts(model)
    batch, length = target_ids.shape
    embed = inputs_embeds if callable(inputs_embeds) else (lambda lo, hi: inputs_embeds[:, lo:hi])
    positions = _full_positions(position_ids, batch, length, target_ids.device)
    grouped = isinstance(attention_mask, SegmentLayout)
    if grid is None or grid.sp_size == 1:
        inputs_embeds = embed(0, length)
        if grouped:
            enable_ulysses(model)           # the dispatcher that takes a SegmentLayout (plain calls unchanged)
        mask = {"full_attention": attention_mask} if grouped else attention_mask
        hidden = lm(inputs_embeds=inputs_embeds, position_ids=positions, attention_mask=mask,
                    use_cache=False).last_hidden_state                                   # (B, T, H)
        return token_logprobs(hidden, head, target_ids, temperature, chunk_size)

    sp, rank = grid.sp_size, grid.sp_rank
    enable_ulysses(model)
    if grouped:
        attend = attention_mask.padded(sp * -(-length // sp))                            # T' = SP * ceil(T / SP)
    else:
        if attention_mask is None:
            attention_mask = torch.ones(batch, length, dtype=torch.long, device=target_ids.device)
        full_mask = pad_to_multiple(attention_mask, sp, dim=1, value=0)                # (B, T')
        attend = None if is_right_padded(full_mask) else causal_padding_mask(full_mask)  # (B, 1, T', T')
    ctx = ulysses_context(model, grid.sp_group, sp, attend)

    local_embeds = _local_embeds(embed, length, sp, rank)                                    # (B, T'/SP, H)
    local_pos = split_for_rank(pad_to_multiple(positions, sp, dim=2), sp, rank, dim=2)          # (3, B, T'/SP)
    local_targets = split_for_rank(pad_to_multiple(target_ids, sp, dim=1, value=-100), sp, rank, dim=1)
    hidden = lm(inputs_embeds=local_embeds, position_ids=local_pos,
                attention_mask={"full_attention": ctx}, use_cache=False).last_hidden_state   # (B, T'/SP, H)
    full_lp = spread_head_logprobs(hidden, head, local_targets, grid, temperature, chunk_size)  # (B, T')
    return unpad(full_lp, length, dim=1)                                                     # (B, T)


def spread_head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, local_targets: torch.Tensor,
                         grid: ProcessGrid, temperature: float, chunk_size: int) -> torch.Tensor:
    """`token_logprobs` of an SP group's scored positions, the LM head's work split evenly over its ranks.

    The scored positions (the replies) sit at the end of a row, so they land on the last rank(s)' shards;
    instead every rank all-gathers the scored rows' hidden states (K x H, small next to the sequence), scores
    an equal share of them with the head, and the shares' log-probs are all-gathered. Returns the full
    `(B, T')` log-probs on every rank (0 off the scored positions), differentiable.
    """
    batch, shard, width = hidden.shape
    sp, rank, group = grid.sp_size, grid.sp_rank, grid.sp_group
    flat_targets = local_targets.reshape(-1)
    scored = (flat_targets >= 0).nonzero().squeeze(-1)                                  # (K_r,) local rows
    global_pos = (scored // shard) * (shard * sp) + rank * shard + scored % shard        # in (B, T')
    counts = collectives.group_tensor([int(scored.numel())], group, dtype=torch.long)
    every = [torch.zeros_like(counts) for _ in range(sp)]
    collectives.all_gather(every, counts, group=group)
    counts = [int(c.item()) for c in every]
    total = sum(counts)
    rows = gather_rows(hidden.reshape(-1, width)[scored], counts, group, summed=True)      # (K, H)
    targets, positions = all_gather_rows(torch.stack([flat_targets[scored], global_pos], dim=1), counts,
                                         group).unbind(1)                                  # (K,), (K,)
    share = -(-total // sp)
    lo, hi = min(rank * share, total), min((rank + 1) * share, total)
    mine = token_logprobs(rows[lo:hi][None], head, targets[lo:hi][None], temperature, chunk_size)[0]
    shares = [min((r + 1) * share, total) - min(r * share, total) for r in range(sp)]
    lp = gather_rows(mine, shares, group, summed=False)                                   # (K,) on every rank
    out = torch.zeros(batch * shard * sp, dtype=torch.float32, device=hidden.device)
    return out.index_put((positions,), lp).view(batch, shard * sp)


def _local_embeds(embed: Callable[[int, int], torch.Tensor], length: int, sp: int, rank: int) -> torch.Tensor:
    """This rank's shard of the sequence padded to a multiple of `sp`, embedding nothing beyond it."""
    shard = -(-length // sp)
    lo, hi = rank * shard, (rank + 1) * shard
    local = embed(min(lo, length), min(hi, length))                                    # (B, <= shard, H)
    missing = shard - local.shape[1]
    return torch.nn.functional.pad(local, (0, 0, 0, missing)) if missing else local


REDUCE_BUCKET_BYTES = 256 * 1024 ** 2


@torch.no_grad()
def reduce_gradients(model: torch.nn.Module, grid: ProcessGrid | None) -> None:
    """Make every rank's `.grad` the gradient of the DP-averaged loss.

    Each SP rank holds the part of the gradient that flowed through its shard, so the SP group
    *sums*; the DP group then *averages* (each DP rank's loss is a mean over its own samples). Use
    this instead of DDP's all-reduce (or wrap with DDP over the DP group only and scale nothing).
    Gradients travel in buckets of about `REDUCE_BUCKET_BYTES`, so no copy of all of them exists at once.
    """
    if grid is None or grid.layout.world_size == 1:
        return
    # FSDP-sharded parameters (DTensor grads) are reduce-scattered by FSDP itself.
    grads = [p.grad for p in model.parameters() if p.grad is not None and not hasattr(p.grad, "placements")]
    for bucket in _buckets(grads, REDUCE_BUCKET_BYTES):
        flat = torch._utils._flatten_dense_tensors(bucket)
        if grid.sp_size > 1:
            collectives.all_reduce(flat, group=grid.sp_group)
        if grid.dp_size > 1:
            collectives.all_reduce(flat, group=grid.dp_group)
            flat /= grid.dp_size
        for grad, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            grad.copy_(synced)


def _buckets(tensors: list[torch.Tensor], max_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive groups of one dtype and device of at most `max_bytes` (a larger tensor alone)."""
    out: list[list[torch.Tensor]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if not out or size + nbytes > max_bytes or (t.dtype, t.device) != (out[-1][0].dtype, out[-1][0].device):
            out.append([])
            size = 0
        out[-1].append(t)
        size += nbytes
    return out
