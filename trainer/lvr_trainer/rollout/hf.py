"""Rollouts with transformers' `generate`, fed cached video embeddings (no vision pass)."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from lvr_trainer.model.encode import cached_video_kwargs
from lvr_trainer.rollout.base import NamedTensors, Rollout, RolloutRequest, SamplingParams
from lvr_trainer.rollout.weights import load_into


def left_pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """(B, S_max) from 1-D tensors, padded on the left (generation appends on the right)."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = r
    return out


def reply_logprobs(logits: tuple[torch.Tensor, ...], tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, L) log-probs of `tokens` (B, L) under softmax(logits / temperature); logits: L x (B, V)."""
    stacked = torch.stack(logits, dim=1).float()                         # (B, L, V)
    if temperature > 0:
        stacked = stacked / temperature
    return stacked.log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def sharded_across_ranks(model) -> bool:
    """True when the model's layers are FSDP-sharded over several ranks: then every forward all-gathers,
    and generate must keep stepping (`synced_gpus`) until every rank's replies are done, or the ranks
    whose replies ended early would leave the others waiting in a collective forever."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


@contextmanager
def neutral_generation_config(model):
    """Generate with exactly the sampling parameters we pass: a checkpoint's generation_config.json (a
    repetition penalty, top_k, min_p, ...) would otherwise fill every parameter left unset, and the
    rollouts would sample from a distribution that the trainer's prefill does not compute (off-policy)."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


class TransformersEngine:
    """Generates from the live policy module; `sync_weights` is therefore a no-op.

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

    def load_weights(self, named_tensors: NamedTensors) -> None:
        """In place into the engine's model (a server's own copy; in process it *is* the policy)."""
        load_into(self.model, named_tensors)

    def generate(self, requests: list[RolloutRequest], params: SamplingParams) -> list[list[Rollout]]:
        out: list[list[Rollout]] = []
        per_call = max(1, self.batch_size // params.n)
        for start in range(0, len(requests), per_call):
            out.extend(self._generate(requests[start:start + per_call], params))
        return out

    @torch.no_grad()
    def _generate(self, requests: list[RolloutRequest], params: SamplingParams) -> list[list[Rollout]]:
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        ids = left_pad([r.input_ids for r in requests], tok.pad_token_id).to(device)
        mask = left_pad([torch.ones_like(r.input_ids) for r in requests], 0).to(device)
        mm = left_pad([r.mm_token_type_ids for r in requests], 0).to(device)
        grid = torch.cat([r.video_grid_thw for r in requests]).to(device)
        embeds = torch.cat([r.video_embeds for r in requests]).to(device)
        kwargs = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=mm, video_grid_thw=grid)
        if all(r.second_per_grid_t is not None for r in requests):
            kwargs["second_per_grid_ts"] = torch.tensor([r.second_per_grid_t for r in requests], device=device)
        sampling = dict(do_sample=False) if params.temperature == 0 else dict(
            do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        with neutral_generation_config(model):
            result = model.generate(synced_gpus=sharded_across_ranks(model),
                **kwargs, **cached_video_kwargs(embeds, grid), **sampling, num_return_sequences=params.n,
                max_new_tokens=params.max_new_tokens, suppress_tokens=self.suppress, output_logits=True,
                return_dict_in_generate=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = result.sequences[:, ids.shape[1]:]                               # (B * n, L)
        lps = reply_logprobs(result.logits, new, params.temperature)
        return [[self._rollout(new[i * params.n + j], lps[i * params.n + j]) for j in range(params.n)]
                for i in range(len(requests))]

    def _rollout(self, tokens: torch.Tensor, logprobs: torch.Tensor) -> Rollout:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids = tokens.tolist()
        finished = eos in ids
        length = ids.index(eos) + 1 if finished else len(ids)
        if not finished and pad != eos:  # trailing pads after a row that ended early are not replies
            while length and ids[length - 1] == pad:
                length -= 1
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        return Rollout(ids[:length], logprobs[:length].tolist(), text, finished)
