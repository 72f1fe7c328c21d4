"""Stage 5: the dataset on disk, in the layout `lvr data synth` writes and the trainer reads.

    train.jsonl       the train split (VideoQARecord rows; `reasoning` is the CoT-SFT target)
    train_cot.jsonl   the same rows: the reasoner is the CoT teacher, so the configs that point CoT-SFT
                      at train_cot.jsonl work unchanged
    val.jsonl, test.jsonl
    captions.jsonl    each built video's time-stamped clip captions (for text-only baselines, audits)
    rejected.jsonl    every dropped item with its reason and detail
    manifest.json     counts per split, answer letters per category, and the build's summary
    summary.md        the tables `lvr data build` printed

Splits are by video (no video in two splits), decided by a seeded hash of the video id: adding videos
later moves none of the old ones between splits unless the counts per split change. Local videos are
named by a path relative to the output directory when they lie under it, else by absolute path; s3://
videos by their URI. An s3:// output is written to a local staging directory and uploaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from lvr_trainer.data.build.pipeline import VideoResult
from lvr_trainer.data.build.questions import Draft, Drop
from lvr_trainer.data.build.summary import BuildStats, summary_text
from lvr_trainer.data.schema import LETTERS, VideoQARecord, write_records

SPLITS = ("train", "val", "test")


def split_videos(video_ids: list[str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """video id -> split; at least one val and one test video when there are three or more videos."""
    order = sorted(video_ids, key=lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest())
    n = len(order)
    n_test = max(1 if n >= 3 else 0, round(test_fraction * n))
    n_val = max(1 if n >= 3 else 0, round(val_fraction * n))
    return {v: "test" if i < n_test else "val" if i < n_test + n_val else "train" for i, v in enumerate(order)}


def video_reference(location: str, out_dir: str | None) -> str:
    """What a row's `video` says: relative to a local output directory when the file is under it."""
    if location.startswith("s3://") or out_dir is None:
        return location
    rel = os.path.relpath(location, os.path.abspath(out_dir))
    return location if rel.startswith("..") else rel


def to_records(result: VideoResult, drafts: list[Draft], video: str, meta: dict) -> list[VideoQARecord]:
    """The kept drafts of one video as rows; ids `<video id>-<category>-<n>`."""
    per_category: Counter = Counter()
    records = []
    for d in drafts:
        per_category[d.category] += 1
        records.append(VideoQARecord(
            id=f"{d.video_id}-{d.category}-{per_category[d.category]}", video=video, question=d.question,
            options=dict(d.options), answer=d.answer, reasoning=d.reasoning, category=d.category,
            duration=result.duration,
            meta={**meta, "video_id": d.video_id, "clips": len(result.captions)}))
    return records


def write_dataset(stage: Path, results: list[VideoResult], kept: list[Draft], drops: list[Drop],
                  stats: BuildStats, split: dict[str, str], local_out: str | None, meta: dict) -> dict:
    """Write every file into `stage` (the output directory, or the staging one for s3://); returns the
    manifest. `local_out`: the output directory rows' relative video paths resolve against, if local."""
    stage.mkdir(parents=True, exist_ok=True)
    by_video: dict[str, list[Draft]] = {}
    for d in kept:
        by_video.setdefault(d.video_id, []).append(d)
    splits: dict[str, list[VideoQARecord]] = {s: [] for s in SPLITS}
    for r in results:
        if r.source.video_id in by_video:
            video = video_reference(r.source.location, local_out)
            splits[split[r.source.video_id]] += to_records(r, by_video[r.source.video_id], video, meta)
    for name, records in splits.items():
        write_records(stage / f"{name}.jsonl", records)
    write_records(stage / "train_cot.jsonl", splits["train"])
    _write_jsonl(stage / "captions.jsonl", (
        {"video_id": r.source.video_id, "video": r.source.location, "duration": r.duration,
         "captions": [asdict(c) for c in r.captions]} for r in results if r.captions))
    _write_jsonl(stage / "rejected.jsonl", (asdict(d) for d in drops))
    manifest = _manifest(splits, stats, meta)
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (stage / "summary.md").write_text(summary_text(stats) + "\n")
    return manifest


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _manifest(splits: dict[str, list[VideoQARecord]], stats: BuildStats, meta: dict) -> dict:
    letters: dict[str, Counter] = {}
    for records in splits.values():
        for r in records:
            letters.setdefault(r.category, Counter())[r.answer] += 1
    return {
        "source": "lvr data build", **meta,
        "questions": {k: len(v) for k, v in splits.items()},
        "videos": {k: len({r.meta["video_id"] for r in v}) for k, v in splits.items()},
        "answer_letters": {c: {k: n[k] for k in LETTERS} for c, n in sorted(letters.items())},
        "categories": dict(sorted(Counter(r.category for v in splits.values() for r in v).items())),
        "build": stats.to_dict(),
    }


def upload_dir(stage: Path, out_uri: str) -> list[str]:
    """Upload the files of `stage` under the s3:// prefix `out_uri`; returns their URIs."""
    from lvr_trainer.storage.s3 import S3Store

    store = S3Store.from_uri(out_uri)
    uris = []
    for path in sorted(p for p in stage.iterdir() if p.is_file()):
        name = f"{store.prefix}/{path.name}" if store.prefix else path.name
        kind = "application/json" if path.suffix in (".json", ".jsonl") else "text/plain"
        store.upload_file(name, path, content_type=kind)
        uris.append(f"s3://{store.bucket}/{name}")
    return uris
