"""GRPO's rollout phase: G sampled replies per prompt from cached video embeddings, their rewards and
group-normalised advantages, and the padded token batches that the prefill and update phases score.

Shapes: P prompts, G replies each, N = P * G replies in prompt-major order (group p is rows
p*G .. p*G+G-1, as `algo.grpo.group_advantages` expects); S = padded prompt + reply length.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lvr_trainer.algo.answers import is_well_formatted
from lvr_trainer.algo.grpo import ADVANTAGES
from lvr_trainer.algo.rewards import WeightedReward, accuracy_reward
from lvr_trainer.config import GRPOConfig, RolloutEngineKind, RolloutMode, TrainerConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.model.encode import split_groups
from lvr_trainer.model.modes import evaluating
from lvr_trainer.parallel.fsdp import is_sharded
from lvr_trainer.parallel.grid import ProcessGrid
from lvr_trainer.rollout.base import Rollout, RolloutEngine, SamplingParams
from lvr_trainer.inputs.examples import IGNORE, Batch, Example, build_example, collate, request_for
from lvr_trainer.train.packing import PackedBatch, pack_groups
from lvr_trainer.parallel import collectives


class RolloutUnavailable(RuntimeError):
    """The configured rollout engine cannot run in this build or on this machine."""


def make_engine(job: TrainerConfig, model, tokenizer, batch_size: int, seed: int = 0) -> RolloutEngine:
    """The rollout engine named by `job.rollout` (engine and mode); `batch_size` = sequences per generate call.

    sidecar: the client of `lvr rollout-server` (whichever engine it serves), ready when this returns;
    vllm in process: vLLM built from the policy's current weights. Either way the loop calls
    `sync_weights` before each rollout."""
    cfg = job.rollout
    if cfg.mode == RolloutMode.sidecar:
        from lvr_trainer.rollout.client import RemoteRolloutEngine, is_weight_pusher

        # the server's model is loaded in model.dtype: the weights travel in it (bf16 halves the bytes)
        engine = RemoteRolloutEngine(cfg.sidecar_url, request_timeout_s=cfg.request_timeout_s,
                                     pushes_weights=is_weight_pusher(), after_push=_barrier_if_distributed,
                                     weight_dtype=getattr(torch, job.model.dtype or "float32"),
                                     bucket_bytes=cfg.weight_bucket_mb << 20, transfer=cfg.weight_transfer)
        engine.wait_ready(cfg.startup_timeout_s)
        return engine
    if cfg.engine == RolloutEngineKind.transformers:
        from lvr_trainer.rollout.hf import TransformersEngine

        return TransformersEngine(model, tokenizer, batch_size)
    from lvr_trainer.rollout.vllm_engine import VllmEngine, import_vllm, rollout_settings

    try:
        import_vllm()
    except ImportError:
        raise RolloutUnavailable(
            "rollout.engine vllm (inprocess) needs vLLM in the trainer's environment: use the rollout image "
            "(images/rollout), `make vllm-venv` on a CPU machine, or rollout.engine: transformers") from None
    dtype = next(model.parameters()).dtype
    return VllmEngine.from_model(model, tokenizer, **rollout_settings(job, dtype, seed))


def _barrier_if_distributed() -> None:
    """After a weight push: no rank generates before its pod's server holds the new version."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        collectives.barrier()


def reward_from_config(cfg: GRPOConfig) -> WeightedReward:
    """`WeightedReward` from the `rl.rewards` terms (`rl.number_rel_tol` bound into `accuracy`)."""
    return WeightedReward.from_weights({t.name: t.weight for t in cfg.rewards}, rel_tol=cfg.number_rel_tol)


SEED_STRIDE = 1 << 20    # request i of a call samples from seed + i * G: a step's streams stay below the next's
SEED_RANGE = 1 << 62     # what torch generators take (below 2^63), with room for the requests' offsets


def sampling_params(cfg: GRPOConfig, seed: int, step: int) -> SamplingParams:
    """G replies per prompt; the seed is a pure function of (run seed, step) so a resumed run samples
    exactly what the uninterrupted run would. Steps are `SEED_STRIDE` apart, so no prompt of one step samples
    from the stream of a prompt of another (with steps 1 apart, prompt i at step k + G would reuse prompt
    i + 1's stream of step k)."""
    return SamplingParams(n=cfg.group_size, temperature=cfg.temperature, top_p=cfg.top_p,
                          max_new_tokens=cfg.max_new_tokens,
                          seed=(seed * 1_000_003 + step) * SEED_STRIDE % SEED_RANGE)


def sample_groups(engine: RolloutEngine, model, tokenizer, records: list[VideoQARecord], source,
                  params: SamplingParams, think: bool) -> list[Rollout]:
    """N = P * G rollouts, prompt-major. The engine reads the cached embeddings; no vision pass."""
    with evaluating(model):
        groups = engine.generate([request_for(model, tokenizer, r, source, think) for r in records], params)
    return [ro for group in groups for ro in group]


def sample_for_sp_group(engine: RolloutEngine, model, tokenizer, records: list[VideoQARecord], source,
                        params: SamplingParams, think: bool, grid: ProcessGrid) -> list[Rollout]:
    """`sample_groups` for the SP group's shared prompts, the same rollouts on every rank of the group.

    Sequence-parallel prefill splits one sequence over the SP group, so every rank of the group must score
    the very same replies: they are exchanged (token ids, log-probs, texts, finished flags) rather than
    trusted to identical sampling. Rewards are then computed from the same texts on every rank.

    - An engine of its own on each rank (vLLM in process, or the policy unsharded): the prompts are spread
      over the group's ranks, each samples its contiguous share (seeded as its place in the whole call, so the
      replies equal one rank sampling all of them) and the shares are all-gathered in order.
    - The policy itself, FSDP-sharded over every rank: every forward all-gathers layers from all ranks, so
      the peers sample all the prompts in step and the first rank's replies are kept.
    - A sidecar shared by the pod's ranks (it runs one call at a time): the first rank samples all the prompts
      in one call and sends them to its peers.
    SP = 1: every rank samples its own prompts.
    """
    if grid.sp_size == 1:
        return sample_groups(engine, model, tokenizer, records, source, params, think)
    lockstep = getattr(engine, "model", None) is model and is_sharded(model)
    if lockstep or getattr(engine, "shared_by_ranks", False):
        box = [sample_groups(engine, model, tokenizer, records, source, params, think)
               if grid.sp_rank == 0 or lockstep else None]
        collectives.broadcast_object_list(box, group=grid.sp_group, group_src=0)
        return box[0]
    start, stop = split_groups(len(records), grid.sp_size)[grid.sp_rank]     # contiguous, balanced
    seed = None if params.seed is None else params.seed + start * params.n
    mine = sample_groups(engine, model, tokenizer, records[start:stop], source,
                         dataclasses.replace(params, seed=seed), think) if stop > start else []
    shares: list = [None] * grid.sp_size
    collectives.all_gather_object(shares, mine, group=grid.sp_group)
    return [ro for share in shares for ro in share]


@dataclass
class ScoredGroups:
    """rewards, advantages: (N,) float32; metrics: `reward/*` and `rollout/*` batch means."""

    rewards: torch.Tensor
    advantages: torch.Tensor
    metrics: dict[str, float]


def score_groups(reward: WeightedReward, cfg: GRPOConfig, records: list[VideoQARecord],
                 rollouts: list[Rollout]) -> ScoredGroups:
    """Rewards of every reply, GRPO advantages within each group of G, and rollout statistics."""
    g = cfg.group_size
    answers = [records[i // g].answer for i in range(len(rollouts))]
    texts = [ro.text for ro in rollouts]
    totals, metrics = reward.score_batch(texts, answers, cfg.answer_kind.value)
    rewards = torch.tensor(totals, dtype=torch.float32)                         # (N,)
    advantages = ADVANTAGES[cfg.advantage](rewards, g, cfg.advantage_eps)      # (N,)
    categories = [records[i // g].category for i in range(len(rollouts))]
    metrics.update(rollout_metrics(rollouts, answers, cfg, rewards, categories))
    return ScoredGroups(rewards, advantages, metrics)


def rollout_metrics(rollouts: list[Rollout], answers: list[str], cfg: GRPOConfig,
                    rewards: torch.Tensor, categories: list[str] | None = None) -> dict[str, float]:
    """Strict accuracy (overall and per category: a run can climb on one kind of question and sink on
    another), format rate, reply length, EOS rate, and the share of groups with any signal."""
    n = max(len(rollouts), 1)
    kind = cfg.answer_kind.value
    correct = [accuracy_reward(ro.text, a, kind, rel_tol=cfg.number_rel_tol) for ro, a in zip(rollouts, answers)]
    by_category: dict[str, list[float]] = {}
    for cat, ok in zip(categories or [], correct):
        by_category.setdefault(str(cat), []).append(ok)
    acc = sum(correct)
    lengths = [len(ro.token_ids) for ro in rollouts]
    groups = rewards.view(-1, cfg.group_size)                                 # (P, G)
    informative = (groups != groups[:, :1]).any(dim=1).float().mean()
    return {
        "rollout/accuracy": acc / n,
        "rollout/format_rate": sum(is_well_formatted(ro.text) for ro in rollouts) / n,
        "rollout/reply_len": sum(lengths) / n,
        "rollout/reply_len_max": float(max(lengths, default=0)),
        "rollout/finished_rate": sum(ro.finished for ro in rollouts) / n,
        "rollout/informative_groups": float(informative),
        "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        **{f"rollout/accuracy/{cat}": sum(v) / len(v) for cat, v in sorted(by_category.items())},
    }


def reply_examples(model, tokenizer, records: list[VideoQARecord], rollouts: list[Rollout], source, think: bool,
                   group_size: int) -> list[Example]:
    """Prompt + the sampled token ids (no EOS added: a finished reply already ends with it), loss mask
    on the reply. Features come from `source`'s memory: no vision pass."""
    return [build_example(model, tokenizer, records[i // group_size], source(records[i // group_size]),
                          ro.token_ids, think) for i, ro in enumerate(rollouts)]


@dataclass
class MicroBatch:
    """One forward/backward unit of replies.

    batch: the replies' tokens, per sequence (`Batch`, B padded rows of S) or shared-prefix (`PackedBatch`,
    one row per prompt); either way log-probs come back as (B, S). mask: (B, S) float, 1 at the positions
    that predict a reply token; advantages: (B,); old_logprobs / ref_logprobs: (B, S) under the sampling
    policy / the frozen reference (ref None when kl_coef is 0); rollout_logprobs: (B, S) as reported by
    the engine (diagnostics).
    """

    batch: Batch | PackedBatch
    mask: torch.Tensor
    advantages: torch.Tensor
    rollout_logprobs: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


def engine_logprobs(examples: list[Example], rollouts: list[Rollout], length: int) -> torch.Tensor:
    """(B, S) engine log-probs placed at the positions that predict each reply token (0 elsewhere)."""
    out = torch.zeros(len(examples), length)
    for i, (ex, ro) in enumerate(zip(examples, rollouts)):
        k = len(ro.logprobs)
        out[i, ex.prompt_len - 1: ex.prompt_len - 1 + k] = torch.tensor(ro.logprobs)
    return out


def reply_mask(examples: list[Example], length: int) -> torch.Tensor:
    """(B, S) float: 1 at the positions whose next token carries a label (`Batch.target_ids` != IGNORE)."""
    out = torch.zeros(len(examples), length)
    for i, ex in enumerate(examples):
        out[i, :len(ex.labels) - 1] = (ex.labels[1:] != IGNORE).float()
    return out


def micro_batches(examples: list[Example], rollouts: list[Rollout], advantages: torch.Tensor, per_micro: int,
                  pad_id: int, device: torch.device, group_size: int | None = None) -> list[MicroBatch]:
    """Split N replies (prompt-major) into micro-batches of `per_micro` consecutive replies on `device`:
    shared-prefix packed (each prompt once per micro-batch) when `group_size` is given, else collated per
    sequence."""
    out = []
    for start in range(0, len(examples), per_micro):
        exs, ros = examples[start:start + per_micro], rollouts[start:start + per_micro]
        length = max(len(e.input_ids) for e in exs)
        if group_size:
            batch = pack_groups(exs, [(start + i) // group_size for i in range(len(exs))], pad_id)
        else:
            batch = collate(exs, pad_id)
        out.append(MicroBatch(batch.to(device), reply_mask(exs, length).to(device),
                              advantages[start:start + per_micro].to(device),
                              engine_logprobs(exs, ros, length).to(device)))
    return out
