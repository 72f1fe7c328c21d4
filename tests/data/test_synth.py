"""The synthetic dataset: deterministic, balanced, and answerable only from the whole video."""

import hashlib
import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lvr_trainer.config import FrameSampling
from lvr_trainer.data.schema import LETTERS, read_records
from lvr_trainer.data.synth import CORNERS, PALETTE, SynthSpec, synthesise
from lvr_trainer.data.video import sample_frames



# An independent solver: answers a question from an event log [(colour, corner), ...] in time order.
def solve(meta: dict, log: list[tuple[str, str]]) -> str | None:
    colours = [c for c, _ in log]
    q = meta["qtype"]
    if q in ("first_of", "last_of"):
        present = [c for c in meta["colours"] if c in colours]  # options never shown are never the answer
        if not present:
            return None
        pos = {c: (colours.index(c) if q == "first_of" else -(len(colours) - 1 - colours[::-1].index(c)))
               for c in present}
        return min(pos, key=pos.get)
    if q == "after":
        if meta["subject"] not in colours or colours.index(meta["subject"]) + 1 >= len(colours):
            return None
        return colours[colours.index(meta["subject"]) + 1]
    if q == "most_often":
        counts = Counter(colours).most_common()
        return counts[0][0] if len(counts) == 1 or counts[0][1] > counts[1][1] else None
    if q == "second_position":
        seen = [corner for c, corner in log if c == meta["subject"]]
        return seen[1] if len(seen) == 2 else None
    raise AssertionError(q)


def answer_text(record) -> str:
    return record.options[record.answer]


def all_records(out: Path):
    records = []
    for split in ("train", "val", "test"):
        good, bad = read_records(out / f"{split}.jsonl")
        assert not bad
        records += good
    return records


def log_from_pixels(video: Path, events: int) -> list[tuple[str, str]]:
    """Read the event log back from decoded frames: colour and corner of the square, per event."""
    s = sample_frames(str(video), FrameSampling(num_frames=2 * events, max_pixels=112 * 112))
    names = list(PALETTE)
    palette = np.array([PALETTE[n] for n in names], dtype=np.float64)
    log = []
    for frame in s.frames.astype(np.float64):
        h, w = frame.shape[:2]
        quads = {c: frame[(0 if c.startswith("top") else h // 2):(h // 2 if c.startswith("top") else h),
                          (0 if c.endswith("left") else w // 2):(w // 2 if c.endswith("left") else w)]
                 for c in CORNERS}
        # the quadrant holding the square has the largest share of pixels far from grey
        def square_share(q):
            px = q.reshape(-1, 3)
            return np.mean((np.ptp(px, axis=1) > 60) | (px.mean(axis=1) > 200))
        corner = max(quads, key=lambda c: square_share(quads[c]))
        q = quads[corner]
        qh, qw = q.shape[:2]
        centre = q[qh // 3: 2 * qh // 3, qw // 3: 2 * qw // 3].reshape(-1, 3).mean(0)
        log.append((names[int(np.argmin(((palette - centre) ** 2).sum(1)))], corner))
    merged = [log[0]]  # adjacent events never share a colour, so runs of equal frames are one event
    for item in log[1:]:
        if item != merged[-1]:
            merged.append(item)
    return merged


def test_every_answer_is_computable_from_the_decoded_video(small_dataset):
    out, manifest = small_dataset
    n_events = manifest["spec"]["events"]
    records = all_records(out)
    assert len(records) == 4 * manifest["spec"]["videos"]
    for r in records:
        log = log_from_pixels(out / r.video, n_events)
        assert len(log) == n_events
        assert solve(r.meta, log) == answer_text(r), r.id


def test_event_logs_on_disk_agree_with_the_pixels(small_dataset):
    out, manifest = small_dataset
    for events_file in sorted((out / "videos").glob("*.events.json"))[:3]:
        events = json.loads(events_file.read_text())
        video = events_file.with_name(events_file.name.replace(".events.json", ".mp4"))
        assert log_from_pixels(video, manifest["spec"]["events"]) == [(e["colour"], e["corner"]) for e in events]


def test_no_single_frame_determines_an_answer(small_dataset):
    """Keep one event, redraw all others at random: the answer must change for some redraws."""
    out, _ = small_dataset
    rng = random.Random(0)
    for r in all_records(out):
        events = json.loads((out / "videos" / f"{r.meta['video_id']}.events.json").read_text())
        log = [(e["colour"], e["corner"]) for e in events]
        for keep in range(len(log)):
            answers = set()
            for _ in range(300):
                alt = [log[i] if i == keep else (rng.choice(list(PALETTE)), rng.choice(CORNERS))
                       for i in range(len(log))]
                answers.add(solve(r.meta, alt))
            answers.discard(None)
            assert len(answers) >= 2, f"{r.id}: event {keep} alone fixes the answer"


def test_categories_and_balanced_letters(tmp_path):
    spec = SynthSpec(videos=40, seconds=8, fps=4, width=64, height=64, events=8, seed=3)
    m = synthesise(tmp_path, spec)
    assert m["categories"] == {"temporal": 40, "plot": 40, "goal": 40, "spatial": 40}
    for category, counts in m["answer_letters"].items():
        assert sum(counts.values()) == 40
        assert max(counts.values()) - min(counts.values()) <= 6, (category, counts)
    records = all_records(tmp_path)
    assert Counter(r.answer for r in records).keys() == set(LETTERS)


def test_splits_are_disjoint_by_video(small_dataset):
    out, manifest = small_dataset
    videos = {}
    for split in ("train", "val", "test"):
        good, _ = read_records(out / f"{split}.jsonl")
        videos[split] = {r.video for r in good}
    assert not (videos["train"] & videos["val"]) and not (videos["train"] & videos["test"])
    assert not (videos["val"] & videos["test"])
    assert manifest["videos"] == {k: len(v) for k, v in videos.items()}
    assert min(manifest["videos"].values()) >= 1


def _digest(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    spec = SynthSpec(videos=3, seconds=8, fps=4, width=64, height=64, seed=11)
    synthesise(tmp_path / "a", spec)
    synthesise(tmp_path / "b", spec)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    synthesise(tmp_path / "c", SynthSpec(videos=3, seconds=8, fps=4, width=64, height=64, seed=12))
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()


@pytest.mark.parametrize("kwargs,match", [
    ({"events": 5}, "events"), ({"seconds": 1, "fps": 4}, "frames per event"), ({"width": 65}, "even"),
])
def test_bad_specs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthSpec(**kwargs).check()


@pytest.mark.parametrize("slip_on", [("last_of",), ("first_of", "last_of")])
def test_teacher_slip_rewrites_only_the_conclusion_of_the_chosen_questions(tmp_path, slip_on):
    """A slipped "appeared first/last" reasoning scans the log as the perfect teacher's does, then names the
    first option listed; every video, question and gold answer is the same as with a perfect teacher, and
    so is every reasoning of the other question types."""
    spec = SynthSpec(videos=30, seconds=8, fps=4, width=64, height=64, seed=4)
    synthesise(tmp_path / "clean", spec)
    manifest = synthesise(tmp_path / "slip", replace(spec, teacher_slip=1.0, slip_on=slip_on))
    clean, slipped = all_records(tmp_path / "clean"), all_records(tmp_path / "slip")
    assert [r.id for r in clean] == [r.id for r in slipped]
    n_slipped = Counter()
    for a, b in zip(clean, slipped):
        assert (a.video, a.question, a.options, a.answer) == (b.video, b.question, b.options, b.answer)
        if a.meta["qtype"] not in slip_on:
            assert a.reasoning == b.reasoning and "teacher_slip" not in b.meta
            continue
        n_slipped[a.meta["qtype"]] += 1
        which = a.meta["qtype"].removesuffix("_of")
        scan = a.reasoning.split(f". The {which} to appear is ")[0]
        assert b.meta["teacher_slip"] is True
        assert f"scan from the {'end' if which == 'last' else 'start'}" in scan
        assert b.reasoning.startswith(scan + f". The {which} to appear is {b.options['A']}. So the answer is "
                                      f"{b.options['A']}: {b.options['A']} A.")
        assert (a.reasoning == b.reasoning) == (a.answer == "A")  # the slip is right when A is
    assert set(n_slipped) == set(slip_on) and min(n_slipped.values()) > 5
    assert sum(manifest["teacher_slips"].values()) == sum(n_slipped.values())
    assert _digest(tmp_path / "clean" / "videos") == _digest(tmp_path / "slip" / "videos")

    # The CoT-SFT split: the teacher's labels, its answer following its slipped reasoning.
    gold, cot = (read_records(tmp_path / "slip" / f"{name}.jsonl")[0] for name in ("train", "train_cot"))
    assert [r.model_copy(update={"answer": g.answer}) for r, g in zip(cot, gold)] == gold
    assert all(c.answer == ("A" if g.meta.get("teacher_slip") else g.answer) for c, g in zip(cot, gold))
    assert sum(c.answer != g.answer for c, g in zip(cot, gold)) > 3
    clean_cot = (tmp_path / "clean" / "train_cot.jsonl").read_bytes()
    assert clean_cot == (tmp_path / "clean" / "train.jsonl").read_bytes()  # a perfect teacher's labels are gold


def test_teacher_slip_rate_is_the_share_of_slipped_last_questions():
    from lvr_trainer.data.synth import teacher_slips

    ids = [f"synth-1-{i:05d}-last_of" for i in range(4000)]
    share = sum(teacher_slips(i, 0.75) for i in ids) / len(ids)
    assert abs(share - 0.75) < 0.03
    assert not any(teacher_slips(i, 0.0) for i in ids) and all(teacher_slips(i, 1.0) for i in ids)
    with pytest.raises(ValueError, match="teacher_slip"):
        SynthSpec(teacher_slip=1.5).check()
    with pytest.raises(ValueError, match="slip_on takes question types among first_of, last_of"):
        SynthSpec(teacher_slip=0.5, slip_on=("after",)).check()
