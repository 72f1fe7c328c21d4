"""A synthetic LongVideo-Reason: real H.264 videos of coloured squares, and questions about them.

Each video is a sequence of events; in each event one coloured square sits in one corner of a noisy
background. Questions need several events, spread over the whole video:
  temporal  which of four colours appeared first (or last)
  plot      which colour came right after the first X square
  goal      which colour the collector picked up most often (counting over the whole video)
  spatial   where the twice-seen X square was the second time (where an object went)
Options are listed in one canonical order (palette order, or corner order) and the distractors are
chosen so that answer letters come out balanced. A small model can learn this in minutes on CPU
(see ENVIRONMENT.md); shuffled-option variants are left to pretrained models.

The reasoning first writes the event log (what was seen), then reads it one square at a time, so that
every token of the chain is one lookup a two-layer model can make (BENCHMARKS.md, CoT-SFT, session 3):
"scan from the start: 1 red no, 2 blue yes" instead of naming the earliest of four colours in one token.

Real CoT data comes from a teacher model that slips, and SFT imitates its slips. `teacher_slip` simulates
one systematic slip, a position bias: on that share of the `slip_on` questions ("which appeared last",
optionally "first") the reasoning scans the log correctly but its conclusion, and so its answer, names
the first option listed instead of the colour the scan found. train.jsonl keeps the gold answers (for RL
and evaluation); train_cot.jsonl is the train split as the teacher labelled it (the CoT-SFT data, as
distilled CoT whose answers nobody verified). SFT on it learns the slip while some samples stay right:
the headroom GRPO's answer reward is for (BENCHMARKS.md, GRPO). At 0 the teacher is perfect.

Planning (events, questions, reasoning) is pure and seeded; rendering and encoding are the I/O shell.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lvr_trainer.data.schema import LETTERS, VideoQARecord, write_records

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 190, 60),
    "blue": (40, 80, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 55, 200),
    "orange": (250, 135, 25),
    "cyan": (40, 210, 225),
    "white": (245, 245, 245),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
SLIPPABLE = ("first_of", "last_of")  # questions whose conclusion a slipping teacher may get wrong
MIN_EVENTS, MAX_EVENTS = 7, len(COLOURS) + 3  # counts 3 + 2 + 1 x (n - 5) need n - 3 colours


@dataclass(frozen=True)
class Event:
    index: int
    start: float  # seconds
    end: float
    colour: str
    corner: str


@dataclass(frozen=True)
class SynthSpec:
    videos: int = 12
    seconds: float = 60.0
    fps: int = 8
    width: int = 224
    height: int = 224
    events: int = 8
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    teacher_slip: float = 0.0
    slip_on: tuple[str, ...] = ("last_of",)   # the question types the teacher slips on

    def check(self) -> None:
        if not 0.0 <= self.teacher_slip <= 1.0:
            raise ValueError(f"teacher_slip is a probability in [0, 1], got {self.teacher_slip}")
        if not self.slip_on or set(self.slip_on) - set(SLIPPABLE):
            raise ValueError(f"slip_on takes question types among {', '.join(SLIPPABLE)}, got {list(self.slip_on)}")
        if not MIN_EVENTS <= self.events <= MAX_EVENTS:
            raise ValueError(f"events must be in [{MIN_EVENTS}, {MAX_EVENTS}], got {self.events}")
        if self.seconds * self.fps < 2 * self.events:
            raise ValueError(f"{self.seconds}s at {self.fps} fps is under 2 frames per event; "
                             "raise --seconds or lower --events")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 32:
            raise ValueError("width and height must be even and at least 32 (H.264 4:2:0)")
        if self.videos < 1:
            raise ValueError("need at least one video")


# ---------------------------------------------------------------------------------------------
# Planning: pure, seeded.


def plan_events(rng: random.Random, spec: SynthSpec) -> list[Event]:
    """One colour three times (most frequent), one twice (seen twice, in two corners), rest once."""
    colours = rng.sample(COLOURS, spec.events - 3)
    multiset = [colours[0]] * 3 + [colours[1]] * 2 + colours[2:]
    rng.shuffle(multiset)
    # Two in a row would read as one event; the twice-seen colour must not end the video, or the last
    # frame alone would answer "where was it the second time".
    while any(a == b for a, b in zip(multiset, multiset[1:])) or multiset[-1] == colours[1]:
        rng.shuffle(multiset)
    step = spec.seconds / spec.events
    corners = [rng.choice(CORNERS) for _ in multiset]
    return [Event(i, round(i * step, 3), round((i + 1) * step, 3), c, corners[i])
            for i, c in enumerate(multiset)]


def _least_used_letter(groups: dict[str, list], letter_counts: Counter, rng: random.Random) -> str:
    feasible = [k for k, v in groups.items() if v]
    low = min(letter_counts[k] for k in feasible)
    return rng.choice([k for k in feasible if letter_counts[k] == low])


def _colour_options(answer: str, pool: list[str], letter_counts: Counter, rng: random.Random):
    """Answer + 3 distractors from `pool`, in palette order, placing the answer on a rare letter."""
    groups: dict[str, list[tuple[str, ...]]] = {k: [] for k in LETTERS}
    for trio in itertools.combinations(sorted(set(pool) - {answer}, key=COLOURS.index), 3):
        opts = sorted((answer, *trio), key=COLOURS.index)
        groups[LETTERS[opts.index(answer)]].append(tuple(opts))
    letter = _least_used_letter(groups, letter_counts, rng)
    return rng.choice(groups[letter]), letter


def _first(events: list[Event], colour: str) -> Event:
    return next(e for e in events if e.colour == colour)


def _last(events: list[Event], colour: str) -> Event:
    return [e for e in events if e.colour == colour][-1]


def _scan(events: list[Event], hit) -> str:
    """'1 red no, 2 blue yes': the squares in the given order, each marked, up to the first hit."""
    marks = []
    for e in events:
        found = hit(e)
        marks.append(f"{e.index + 1} {e.colour} {'yes' if found else 'no'}")
        if found:
            break
    return ", ".join(marks)


def _log_text(events: list[Event]) -> str:
    return "The squares in order: " + ", ".join(f"{e.index + 1} {e.colour} {e.corner}" for e in events) + "."


def _letter_of(answer: str, opts) -> str:
    """'purple: green A, yellow B, purple C': the options in order with their letters, up to the answer,
    so that naming the letter is reading the last one written, not a search of the prompt."""
    opts = list(opts)
    upto = opts[: opts.index(answer) + 1]
    return f"{answer}: " + ", ".join(f"{o} {k}" for o, k in zip(upto, LETTERS))


def _order_question(events, rng, letter_counts):
    """temporal: which of four colours appeared first (or last).

    The colour of the first (last) event is never an option, or that one frame would give the answer
    away; at least two options appear in the video, so they must be compared across time.
    """
    which = rng.choice(["first", "last"])
    seen = {e.colour for e in events}
    edge = events[0 if which == "first" else -1].colour
    if which == "first":
        def key(c):
            return _first(events, c).index if c in seen else len(events)
    else:
        def key(c):
            return -_last(events, c).index if c in seen else len(events)
    candidates = [c for c in COLOURS if c != edge]
    groups: dict[str, list[tuple[str, ...]]] = {k: [] for k in LETTERS}
    for four in itertools.combinations(candidates, 4):
        if sum(c in seen for c in four) >= 2:
            groups[LETTERS[four.index(min(four, key=key))]].append(four)
    letter = _least_used_letter(groups, letter_counts, rng)
    opts = rng.choice(groups[letter])
    step = _order_step(events, opts, which, said=min(opts, key=key))
    return ("temporal", f"Which of these colours appeared {which} in the video?", opts, letter, step,
            {"qtype": f"{which}_of", "colours": list(opts)})


def _order_step(events, opts, which: str, said: str) -> str:
    """The scan over the log from the start (first) or end (last) up to the first option seen, then the
    conclusion naming `said`: the answer (the scan's hit), or with a teacher slip another option."""
    scan = events if which == "first" else events[::-1]
    return (f"Among {', '.join(opts)}, scan from the {'start' if which == 'first' else 'end'}: "
            + _scan(scan, lambda e: e.colour in opts) + f". The {which} to appear is {said}.")


def _after_question(events, rng, letter_counts):
    """plot: what came right after the first X square."""
    subjects = [c for c in dict.fromkeys(e.colour for e in events)
                if _first(events, c).index + 1 < len(events)
                and events[_first(events, c).index + 1].colour != c]
    subject = rng.choice(subjects)
    nxt = events[_first(events, subject).index + 1]
    opts, letter = _colour_options(nxt.colour, list(COLOURS), letter_counts, rng)
    step = (f"Scan for the first {subject}: " + _scan(events, lambda e: e.colour == subject)
            + f"; next is {nxt.index + 1} {nxt.colour}.")
    return ("plot", f"What colour was the square that appeared right after the first {subject} square?",
            opts, letter, step, {"qtype": "after", "subject": subject})


def _most_often_question(events, rng, letter_counts):
    """goal: the collector's most collected colour (needs counting over the whole video)."""
    counts = Counter(e.colour for e in events)
    answer = counts.most_common(1)[0][0]
    opts, letter = _colour_options(answer, list(counts), letter_counts, rng)
    running: Counter = Counter()
    tally = []
    for e in events:
        running[e.colour] += 1
        tally.append(f"{e.index + 1} {e.colour} {running[e.colour]}")
    step = f"Counting each colour: {', '.join(tally)}. The most collected is {answer} ({counts[answer]} times)."
    return ("goal", "Each square is an item the collector picks up. Which colour did the collector "
            "pick up most often?", opts, letter, step, {"qtype": "most_often"})


def _second_position_question(events, rng, letter_counts):
    """spatial: where the colour that appears twice went, the second time."""
    counts = Counter(e.colour for e in events)
    subject = next(c for c, n in counts.items() if n == 2)
    first, second = [e for e in events if e.colour == subject]
    step = (f"The {subject} square appears as square {first.index + 1} ({first.corner}) and square "
            f"{second.index + 1} ({second.corner}); the second time it is {second.corner}.")
    return ("spatial", f"The {subject} square appears twice. Where was it the second time?",
            CORNERS, LETTERS[CORNERS.index(second.corner)], step,
            {"qtype": "second_position", "subject": subject})


def _balance_second_corner(events: list[Event], rng: random.Random, letter_counts: Counter) -> list[Event]:
    """Move the twice-seen colour's second appearance to the rarest corner letter (not its first corner)."""
    counts = Counter(e.colour for e in events)
    subject = next(c for c, n in counts.items() if n == 2)
    first, second = [e for e in events if e.colour == subject]
    groups = {LETTERS[i]: [c] for i, c in enumerate(CORNERS) if c != first.corner}
    corner = groups[_least_used_letter(groups, letter_counts, rng)][0]
    return [Event(e.index, e.start, e.end, e.colour, corner) if e is second else e for e in events]


QUESTION_MAKERS = (_order_question, _after_question, _most_often_question, _second_position_question)
CATEGORY_OF = {_order_question: "temporal", _after_question: "plot", _most_often_question: "goal",
               _second_position_question: "spatial"}


def plan_questions(video_id: str, video_rel: str, events: list[Event], spec: SynthSpec,
                   rng: random.Random, letter_counts: dict[str, Counter]) -> list[VideoQARecord]:
    """One question per category for this video; updates the per-category `letter_counts`."""
    records = []
    for make in QUESTION_MAKERS:
        category, question, opts, letter, step, meta = make(events, rng, letter_counts[CATEGORY_OF[make]])
        letter_counts[category][letter] += 1
        record_id = f"{video_id}-{meta['qtype']}"
        said = opts[LETTERS.index(letter)]
        if meta["qtype"] in spec.slip_on and teacher_slips(record_id, spec.teacher_slip):
            said = opts[0]  # the slip: a position bias for the first option listed
            step = _order_step(events, opts, meta["qtype"].removesuffix("_of"), said)
            meta = {**meta, "teacher_slip": True, "teacher_answer": LETTERS[0]}
        records.append(VideoQARecord(
            id=record_id, video=video_rel, question=question,
            options=dict(zip(LETTERS, opts)), answer=letter,
            reasoning=f"{_log_text(events)} {step} So the answer is {_letter_of(said, opts)}.",
            category=category, duration=spec.seconds, meta={**meta, "video_id": video_id}))
    return records


def teacher_labelled(records: list[VideoQARecord]) -> list[VideoQARecord]:
    """The records as the CoT teacher labelled them: a slipped reasoning ends in the teacher's answer, not
    the gold one, as in distilled CoT data whose answers nobody verified. The CoT-SFT split; RL and
    evaluation keep the gold answers."""
    return [r.model_copy(update={"answer": r.meta.get("teacher_answer", r.answer)}) for r in records]


def teacher_slips(record_id: str, rate: float) -> bool:
    """Whether the simulated CoT teacher slips on this record: seeded by the id alone, so that the
    videos, questions and answers are the same at every rate and only the slipped reasonings differ."""
    return rate > 0 and random.Random(f"teacher-{record_id}").random() < rate


def split_of(index: int, order: list[int], spec: SynthSpec) -> str:
    """train/val/test by video (no video is in two splits); at least one val and test video when n >= 3."""
    n = len(order)
    n_test = max(1 if n >= 3 else 0, round(spec.test_fraction * n))
    n_val = max(1 if n >= 3 else 0, round(spec.val_fraction * n))
    rank = order.index(index)
    return "test" if rank < n_test else "val" if rank < n_test + n_val else "train"


# ---------------------------------------------------------------------------------------------
# Rendering and encoding: the I/O shell.


def square_box(corner: str, width: int, height: int, jitter: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the square for an event in `corner`: a third of the short side, in that quadrant."""
    side = min(width, height) // 3
    cy = height // 4 if corner.startswith("top") else 3 * height // 4
    cx = width // 4 if corner.endswith("left") else 3 * width // 4
    y0 = int(np.clip(cy - side // 2 + jitter[0], 0, height - side))
    x0 = int(np.clip(cx - side // 2 + jitter[1], 0, width - side))
    return y0, y0 + side, x0, x0 + side


def render_frames(events: list[Event], spec: SynthSpec, seed: int) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames: a fixed noisy grey background and the current event's square."""
    rng = np.random.default_rng(seed)
    background = rng.integers(70, 130, size=(spec.height, spec.width, 3), dtype=np.uint8)
    max_j = min(spec.width, spec.height) // 16
    jitters = [tuple(rng.integers(-max_j, max_j + 1, size=2)) for _ in events]
    n_frames = int(round(spec.seconds * spec.fps))
    for i in range(n_frames):
        t = (i + 0.5) / spec.fps
        e = min(int(t / spec.seconds * len(events)), len(events) - 1)
        frame = background.copy()
        y0, y1, x0, x1 = square_box(events[e].corner, spec.width, spec.height, jitters[e])
        frame[y0:y1, x0:x1] = PALETTE[events[e].colour]
        yield frame


def write_mp4(path: str | Path, frames: Iterator[np.ndarray], fps: int, width: int, height: int) -> int:
    """Encode RGB frames as H.264 (yuv420p) in an mp4 with the index first (faststart)."""
    import av

    n = 0
    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        stream.thread_count = 1  # byte-identical output for a seed
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            n += 1
        container.mux(stream.encode(None))
    return n


def synthesise(out: str | Path, spec: SynthSpec, progress=None) -> dict:
    """Write videos/*.mp4, videos/*.events.json, train/val/test.jsonl (gold answers), train_cot.jsonl (the
    train split as the CoT teacher labelled it: the CoT-SFT data) and manifest.json under `out`."""
    spec.check()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(spec.seed)
    order = list(range(spec.videos))
    random.Random(spec.seed + 1).shuffle(order)
    splits: dict[str, list[VideoQARecord]] = {"train": [], "val": [], "test": []}
    letter_counts: dict[str, Counter] = {c: Counter() for c in CATEGORY_OF.values()}
    for v in range(spec.videos):
        video_id = f"synth-{spec.seed}-{v:05d}"
        events = _balance_second_corner(plan_events(rng, spec), rng, letter_counts["spatial"])
        records = plan_questions(video_id, f"videos/{video_id}.mp4", events, spec, rng, letter_counts)
        write_mp4(out / "videos" / f"{video_id}.mp4", render_frames(events, spec, rng.getrandbits(32)),
                  spec.fps, spec.width, spec.height)
        (out / "videos" / f"{video_id}.events.json").write_text(
            json.dumps([asdict(e) for e in events], indent=1))
        splits[split_of(v, order, spec)].extend(records)
        if progress:
            progress(v + 1, spec.videos)
    for name, records in splits.items():
        write_records(out / f"{name}.jsonl", records)
    write_records(out / "train_cot.jsonl", teacher_labelled(splits["train"]))
    manifest = {
        "spec": asdict(spec),
        "questions": {k: len(v) for k, v in splits.items()},
        "videos": {k: len({r.meta["video_id"] for r in v}) for k, v in splits.items()},
        "answer_letters": {c: {k: n[k] for k in LETTERS} for c, n in letter_counts.items()},
        "categories": dict(Counter(r.category for v in splits.values() for r in v)),
        "teacher_slips": {k: sum(bool(r.meta.get("teacher_slip")) for r in v) for k, v in splits.items()},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
