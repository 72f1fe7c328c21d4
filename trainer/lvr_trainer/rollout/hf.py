"""Rollouts with transformers, fed cached video embeddings (no vision pass), one prefill per prompt."""

from __future__ import annotations

import torch

from lvr_trainer.rollout.base import NamedTensors, Rollout, RolloutRequest, SamplingParams
from lvr_trainer.rollout.shared_prefix import SampledBatch, sample_shared_prefix
from lvr_trainer.rollout.weights import load_into, parameter_shapes


def left_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """(B, S_max) from 1-D tensors, padded on the left (generation appends on the right)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = r
    return out


def sharded_across_ranks(model) -> bool:
    """True when the model's layers are FSDP-sharded over several ranks: then every forward all-gathers,
    and the sampler must keep stepping (`_any_rank_unfinished`) until every rank's replies are done, or the ranks
    whose replies ended early would leave the others waiting in a collective forever."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


class TransformersEngine:
    """Generates from the live policy module (`sync_weights` is therefore a no-op), each prompt prefilled
    once for its n samples (rollout/shared_prefix.py). Only the sampling parameters passed count: a
    checkpoint's generation_config.json (penalties, top_k, ...) is never read, so rollouts sample the
    distribution the trainer's prefill computes.

    The vision placeholder tokens (video/image pad, vision start/end) are never sampled: a reply holding
    one could not be fed back as text (the prefill would expect video embeddings for it). Returned
    log-probs are those of the unsuppressed distribution, as the trainer's prefill computes them.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16):
        from lvr_trainer.model.tokenizer import vision_token_ids

        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.suppress = sorted(set(vars(vision_token_ids(tokenizer)).values()))

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        return parameter_shapes(self.model)

    def load_weights(self, named_tensors: NamedTensors, checked: bool = False) -> None:
        """In place into the engine's model (a server's own copy; in process it *is* the policy)."""
        load_into(self.model, named_tensors, checked=checked)

    def generate(self, requests: list[RolloutRequest], params: SamplingParams) -> list[list[Rollout]]:
        """Request i's replies from a stream of its own, seeded `params.seed + i * n` (the engines' common
        contract, `SamplingParams`), however the call is chunked into batches."""
        out: list[list[Rollout]] = []
        per_call = max(1, self.batch_size // params.n)
        device = next(self.model.parameters()).device
        streams: list[torch.Generator] | None = None
        if params.seed is not None and params.temperature > 0:
            streams = [torch.Generator(device=device).manual_seed(params.seed + i * params.n)
                       for i in range(len(requests))]
        for start in range(0, len(requests), per_call):
            chunk = slice(start, start + per_call)
            out.extend(self._generate(requests[chunk], params, streams[chunk] if streams else None))
        return out

    @torch.no_grad()
    def _generate(self, requests: list[RolloutRequest], params: SamplingParams,
                  generator: list[torch.Generator] | None) -> list[list[Rollout]]:
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        ids = left_pad([r.input_ids for r in requests], tok.pad_token_id).to(device)
        mask = left_pad([torch.ones_like(r.input_ids) for r in requests], 0).to(device)
        mm = left_pad([r.mm_token_type_ids for r in requests], 0).to(device)
        grid = torch.cat([r.video_grid_thw for r in requests]).to(device)
        embeds = torch.cat([r.video_embeds for r in requests]).to(device)
        spgt = None
        if all(r.second_per_grid_t is not None for r in requests):
            spgt = torch.tensor([r.second_per_grid_t for r in requests], device=device)
        keep_stepping = _any_rank_unfinished if sharded_across_ranks(model) else None
        batch = sample_shared_prefix(
            model, ids, mask, mm, embeds, grid, spgt, n=params.n, max_new_tokens=params.max_new_tokens,
            temperature=params.temperature, top_p=params.top_p, suppress=self.suppress,
            eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, generator=generator, keep_stepping=keep_stepping)
        return [[self._rollout(batch, i * params.n + j) for j in range(params.n)] for i in range(len(requests))]

    def _rollout(self, batch: SampledBatch, row: int) -> Rollout:
        length = int(batch.lengths[row])
        ids = batch.tokens[row, :length].tolist()
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Rollout(ids, batch.logprobs[row, :length].tolist(), text, bool(batch.finished[row]))


def _any_rank_unfinished(mine: bool) -> bool:
    """Collective OR over all ranks: an FSDP-sharded model must take the same forward steps everywhere."""
    from lvr_trainer.parallel import collectives

    flag = collectives.group_tensor([int(mine)])
    collectives.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())
