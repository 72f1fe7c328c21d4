"""Sequence parallelism (MR-SP stage 2): the DP x SP process grid, sequence sharding helpers,
Ulysses all-to-all attention for Qwen2-VL / Qwen2.5-VL, and the sequence-parallel log-prob prefill.

Typical use in a loop (under torchrun):

    grid = init_process_grid(cfg.parallel.sequence_parallel)
    logprobs = sp_forward_logprobs(model, inputs_embeds, position_ids, target_ids, attention_mask, grid)
    loss = ...(logprobs)...; loss.backward(); reduce_gradients(model, grid); optimizer.step()
"""

from .comm import all_to_all, gather_sequence
from .grid import (GridLayout, ProcessGrid, check_attention_heads, init_process_grid, plan_grid,
                   single_process_grid)
from .sequence import (causal_padding_mask, is_right_padded, pad_and_split, pad_to_multiple, padded_length,
                       shard_bounds, split_for_rank, unpad)
from .sp_forward import reduce_gradients, sp_forward_logprobs, token_logprobs
from .ulysses import UlyssesContext, enable_ulysses, language_model_parts, ulysses_attention

__all__ = [
    "GridLayout", "ProcessGrid", "UlyssesContext", "all_to_all", "causal_padding_mask", "check_attention_heads",
    "enable_ulysses", "gather_sequence", "init_process_grid", "is_right_padded", "language_model_parts",
    "pad_and_split", "pad_to_multiple", "padded_length", "plan_grid", "reduce_gradients", "shard_bounds",
    "single_process_grid", "sp_forward_logprobs", "split_for_rank", "token_logprobs", "ulysses_attention",
    "unpad",
]
