"""G samples per prompt from one prefill: the prompt (a long video) is run once, its KV cache is kept once
and shared by the G samples, and only the replies are decoded per sample.

transformers' `generate(num_return_sequences=G)` repeats the *inputs* before the prefill, so a prompt of
S tokens costs G prefills (G x S tokens through every layer), and `output_logits` stacks every step's
full-vocabulary logits in float32 (G x L x V). Here the prefill costs one pass (logits only at the last
position), each step keeps one (B, V) row, and the log-prob of each sampled token is taken as it is
sampled. One `torch.Generator` draws every step of a call (seeded once from SamplingParams.seed).

Conventions (as `TransformersEngine` before, and as the trainer's prefill computes): the vision
placeholder tokens are never sampled; reported log-probs are of softmax(logits / T) over the whole,
unsuppressed vocabulary (T = 1 for greedy); top-p acts on the suppressed, tempered distribution.
Positions: the prompt's come from `rope_positions` (Qwen's reference mRoPE); reply token k sits at the
prompt's largest position + 1 + k, as in the trainer's prefill over prompt + reply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvr_trainer.model.encode import cached_video_kwargs
from lvr_trainer.model.prompt import rope_positions
from lvr_trainer.parallel.grouped import SharedPrefixDecode
from lvr_trainer.parallel.ulysses import enable_ulysses


@dataclass
class SampledBatch:
    """tokens, logprobs: (B, L) with B = prompts x n (prompt-major); lengths: (B,) reply lengths (EOS
    included when it stopped); finished: (B,) bool."""

    tokens: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    finished: torch.Tensor


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """logits (B, V) with the tokens outside the smallest set of probability >= top_p set to -inf."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p                      # mass before this token already >= top_p
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of probs (B, V), from `generator`'s stream (on its device)."""
    on_cpu = generator is not None and generator.device.type == "cpu"
    return torch.multinomial(probs.cpu() if on_cpu else probs, 1, generator=generator).squeeze(-1).to(probs.device)


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float, suppress: list[int],
                generator: torch.Generator | list[torch.Generator] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B,), their log-probs (B,)) from one step's logits (B, V). A list of generators splits the
    rows evenly among them: generator k draws rows k*B/K .. (k+1)*B/K - 1 (one prompt's replies)."""
    logits = logits.float()
    scaled = logits / temperature if temperature > 0 else logits
    allowed = scaled.clone()
    allowed[:, suppress] = float("-inf")
    if temperature == 0:
        tokens = allowed.argmax(-1)
    else:
        probs = top_p_filter(allowed, top_p).softmax(-1)
        if isinstance(generator, list):
            rows = probs.shape[0] // len(generator)
            tokens = torch.cat([_draw(part, g) for part, g in zip(probs.split(rows), generator)])
        else:
            tokens = _draw(probs, generator)
    logprobs = scaled.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, logprobs


def _cache_argument(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x; the old name warns until 5.40); vLLM's
    venv pins an older 5.x that only knows the old one."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


@torch.no_grad()
def sample_shared_prefix(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         mm_token_type_ids: torch.Tensor, video_embeds: torch.Tensor, video_grid_thw: torch.Tensor,
                         second_per_grid_ts: torch.Tensor | None, *, n: int, max_new_tokens: int,
                         temperature: float, top_p: float, suppress: list[int], eos_id: int, pad_id: int,
                         generator: torch.Generator | list[torch.Generator] | None = None,
                         keep_stepping=None) -> SampledBatch:
    """n replies for each of P left-padded prompts (input_ids, attention_mask, mm_token_type_ids: (P, S);
    video_embeds: (N, hidden) row-major; video_grid_thw: (P, 3)). `generator`: one stream for every row, or
    one per prompt (P of them) drawing that prompt's n rows.

    `keep_stepping(any_unfinished: bool) -> bool`: under FSDP every rank must run the same number of
    forwards (each all-gathers), so the caller makes this a collective OR over ranks; default: stop when
    this rank's replies are all done."""
    from transformers import DynamicCache

    device = input_ids.device
    positions, _ = rope_positions(model, input_ids, mm_token_type_ids, video_grid_thw, second_per_grid_ts,
                                  attention_mask)                                     # (3, P, S)
    next_pos = positions.masked_fill(attention_mask[None] == 0, -1).amax(dim=(0, 2)) + 1   # (P,)
    cache_arg = _cache_argument(model)
    out = model(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm_token_type_ids,
                video_grid_thw=video_grid_thw, position_ids=positions, use_cache=True, logits_to_keep=1,
                **{cache_arg: DynamicCache(config=model.config)}, **cached_video_kwargs(video_embeds, video_grid_thw))
    # one copy of each prompt's KV: the n samples decode as one row per prompt (prompt-major: p*n .. p*n+n-1)
    cache = out.past_key_values
    enable_ulysses(model)           # the attention dispatcher that takes SharedPrefixDecode (others unchanged)
    decode = {"full_attention": SharedPrefixDecode(attention_mask.bool(), n)}
    logits = out.logits[:, -1].repeat_interleave(n, 0)                               # (B, V)
    prompts = input_ids.shape[0]
    b = logits.shape[0]
    tokens = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(b, max_new_tokens, device=device)
    lengths = torch.zeros(b, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    step = 0
    while True:
        tok, lp = next_tokens(logits, temperature, top_p, suppress, generator)
        if step < max_new_tokens:
            live = ~finished
            tokens[live, step] = tok[live]
            logprobs[live, step] = lp[live]
            lengths += live.long()
            finished |= live & (tok == eos_id)
        more = step + 1 < max_new_tokens and not bool(finished.all())
        # under FSDP a rank whose replies are done keeps stepping (feeding pads, recording nothing) while
        # any other rank still decodes: each forward all-gathers, so all ranks must make the same number
        if not (keep_stepping(more) if keep_stepping else more):
            break
        done = finished | (step + 1 >= max_new_tokens)
        feed = torch.where(done, torch.full_like(tok, pad_id), tok).view(prompts, n)    # (P, n)
        pos = (next_pos + step).view(1, prompts, 1).expand(3, prompts, n)
        out = model(input_ids=feed, attention_mask=decode, position_ids=pos, use_cache=True, logits_to_keep=n,
                    **{cache_arg: cache})
        cache, logits = out.past_key_values, out.logits.reshape(b, -1)                  # (B, V)
        step += 1
    return SampledBatch(tokens, logprobs, lengths, finished)
