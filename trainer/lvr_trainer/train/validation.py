"""Periodic validation inside a training run, on every rank.

Under FSDP every forward all-gathers the sharded layers, so a rank that generates alone hangs the others
(measured: `lvr rl` with FSDP on 2 ranks and validation on never finished). So each rank scores an equal
share of the held-out records — same number of `generate` calls everywhere, each kept in step by the
engine (`synced_gpus` when the model is sharded) — and the counts are summed over all ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lvr_trainer.config import EvalConfig
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.eval.run import evaluate
from lvr_trainer.eval.scoring import ScorerName
from lvr_trainer.parallel import collectives


def rank_share(records: list[VideoQARecord], rank: int, world: int) -> tuple[list[VideoQARecord], int]:
    """Rank `rank`'s records (every world-th), padded with its last one to ceil(n / world), and how many
    of them are real (pure). Padding keeps the ranks' generate calls in step; it is never scored."""
    mine = records[rank::world]
    size = -(-len(records) // world)
    real = len(mine)
    filler = mine[-1] if mine else records[0]
    return mine + [filler] * (size - real), real


@dataclass(frozen=True)
class ValCounts:
    correct: int
    well_formed: int
    total: int

    def metrics(self) -> dict[str, float]:
        total = max(self.total, 1)
        return {"val/accuracy": self.correct / total, "val/well_formed": self.well_formed / total}


def validate_on_all_ranks(model, tokenizer, records: list[VideoQARecord], source, cfg: EvalConfig,
                          device: torch.device) -> dict[str, float]:
    """Greedy strict accuracy and format rate on `records` (first `cfg.limit`), every rank taking part;
    the same metrics on every rank."""
    records = records[: cfg.limit] if cfg.limit else records
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    mine, real = rank_share(records, rank, world)
    result = evaluate(model, tokenizer, mine, source, cfg.model_copy(update={"limit": None}))
    items = result.items[:real]
    counts = [sum(i.correct(ScorerName.strict) for i in items), sum(i.well_formed for i in items), len(items)]
    if not distributed:
        return ValCounts(*counts).metrics()
    local = collectives.group_tensor(counts, dtype=torch.float64)
    collectives.all_reduce(local)
    correct, well_formed, total = (int(v) for v in local.tolist())
    return ValCounts(correct, well_formed, total).metrics()
