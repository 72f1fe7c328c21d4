"""`lvr eval`: LongVideo-Reason-eval style multiple choice, greedy decoding from cached video embeddings.

Used by `lvr eval` and by the loops' periodic validation, so a checkpoint scores the same wherever
it is evaluated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lvr_trainer.algo.answers import extract_choice
from lvr_trainer.config import EvalConfig, FrameSampling
from lvr_trainer.data.schema import VideoQARecord
from lvr_trainer.eval.headroom import SampledQuestion
from lvr_trainer.eval.scoring import ScorerName, ScoredReply, results_table, score_reply, summarize
from lvr_trainer.model.modes import evaluating
from lvr_trainer.rollout.base import Rollout, SamplingParams
from lvr_trainer.rollout.hf import TransformersEngine
from lvr_trainer.inputs.examples import request_for
from lvr_trainer.inputs.features import VideoFeatureSource


@dataclass
class EvalResult:
    summary: dict
    items: list[ScoredReply]
    replies: list[str]

    @property
    def accuracy(self) -> float:
        """Overall strict accuracy."""
        return self.summary[ScorerName.strict.value]["by_category"]["overall"]["accuracy"] or 0.0

    @property
    def well_formed(self) -> float:
        return self.summary["well_formed_rate"]


def _replies(model, tokenizer, records: list[VideoQARecord], source: VideoFeatureSource, cfg: EvalConfig,
             params_at: Callable[[int], SamplingParams]) -> Iterator[tuple[VideoQARecord, list[Rollout]]]:
    """(record, its params.n replies) for each record, decoded `cfg.batch_size` prompts at a time in eval
    mode; `params_at(start)` gives the sampling of the chunk that starts at record `start`."""
    engine = TransformersEngine(model, tokenizer, cfg.batch_size * params_at(0).n)
    with evaluating(model):
        for start in range(0, len(records), cfg.batch_size):
            chunk = records[start:start + cfg.batch_size]
            groups = engine.generate([request_for(model, tokenizer, r, source, cfg.think) for r in chunk],
                                     params_at(start))
            yield from zip(chunk, groups)


def evaluate(model, tokenizer, records: list[VideoQARecord], source: VideoFeatureSource, cfg: EvalConfig) -> EvalResult:
    """Greedy replies to `records` (first `cfg.limit`), scored strict and lenient."""
    records = records[: cfg.limit] if cfg.limit else records
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=cfg.max_new_tokens)
    items, replies = [], []
    for record, (reply,) in _replies(model, tokenizer, records, source, cfg, lambda _: greedy):
        replies.append(reply.text)
        items.append(score_reply(reply.text, record.answer, id=record.id, category=record.category,
                                 duration=record.duration))
    return EvalResult(summarize(items), items, replies)


def sample_questions(model, tokenizer, result: EvalResult, records: list[VideoQARecord], source: VideoFeatureSource,
                     cfg: EvalConfig, k: int, temperature: float, seed: int = 0) -> list[SampledQuestion]:
    """K sampled replies (strict choices) next to `result`'s greedy choice, for each record `result` scored."""
    def sampling(start: int) -> SamplingParams:
        return SamplingParams(n=k, temperature=temperature, max_new_tokens=cfg.max_new_tokens, seed=seed + start)

    replies = _replies(model, tokenizer, records[: len(result.items)], source, cfg, sampling)
    return [SampledQuestion(record.category, record.answer, item.strict, tuple(extract_choice(ro.text) for ro in group))
            for (record, group), item in zip(replies, result.items)]


def write_results(out_dir: str | Path, results: dict[int, EvalResult], model_name: str, data: str) -> Path:
    """results.json (every frame count), results.md (a table per frame count) and replies.jsonl."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"model": model_name, "data": data, "by_frames": {str(f): r.summary for f, r in results.items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    md = [f"# Evaluation of {model_name} on {data}\n"]
    for frames, r in results.items():
        md += [f"## {frames} frames\n", results_table(r.summary), ""]
    (out / "results.md").write_text("\n".join(md))
    with open(out / "replies.jsonl", "w", encoding="utf-8") as fh:
        for frames, r in results.items():
            for item, reply in zip(r.items, r.replies):
                fh.write(json.dumps({"frames": frames, "id": item.id, "category": item.category,
                                     "answer": item.answer, "strict": item.strict, "reply": reply}) + "\n")
    return out


def plot_accuracy_vs_frames(results: dict[int, EvalResult], path: str | Path) -> None:
    """PNG: strict and lenient overall accuracy against the number of frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = sorted(results)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for scorer in ScorerName:
        acc = [100 * (results[f].summary[scorer.value]["by_category"]["overall"]["accuracy"] or 0) for f in frames]
        ax.plot(frames, acc, marker="o", label=scorer.value)
    ax.axhline(25, color="grey", linestyle=":", label="chance (4 options)")
    ax.set_xlabel("frames")
    ax.set_ylabel("accuracy %")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 100)
    ax.legend()
    ax.set_title("Accuracy vs. frames")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sampling_with_frames(base: FrameSampling, frames: int) -> FrameSampling:
    return base.model_copy(update={"num_frames": frames, "fps": None})
