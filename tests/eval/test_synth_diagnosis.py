"""The synthetic-reply diagnosis re-derives answers from a reply's own event log, for every category."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from lvr_trainer.data.synth import SynthSpec, plan_events, plan_questions
from lvr_trainer.eval.synth_diagnosis import answer_from_log, diagnose, diagnose_reply, event_log


@pytest.fixture(scope="module")
def records():
    spec, out = SynthSpec(videos=40, seconds=16, fps=4), []
    rng, letters = random.Random(3), defaultdict(Counter)
    for v in range(spec.videos):
        out += plan_questions(f"v{v}", f"v{v}.mp4", plan_events(rng, spec), spec, rng, letters)
    return out


def _reply(reasoning: str, letter: str) -> str:
    return f"<think> {reasoning} </think> <answer> {letter} </answer>"


def test_the_true_log_implies_the_true_answer_for_every_question(records):
    assert {r.category for r in records} == {"temporal", "plot", "goal", "spatial"}
    for r in records:
        assert answer_from_log(r, event_log(r.reasoning)) == r.answer, r.id


def test_word_tokenizer_spacing_is_undone(records):
    r = records[0]
    spaced = r.reasoning.replace("-", " - ").replace(":", " :").replace(".", " .")
    assert event_log(spaced) == event_log(r.reasoning)
    assert len(event_log(spaced)) == 8


def test_a_right_log_with_a_wrong_letter_is_a_reasoning_failure(records):
    r = records[0]
    wrong = next(k for k in r.options if k != r.answer)
    d = diagnose_reply(r, _reply(r.reasoning, wrong))
    assert d["correct"] == 0 and d["consistent"] == 0 and d["log_implies_truth"] == 1
    assert d["colour_right"] == d["corner_right"] == d["events"] == 8


def test_a_wrong_corner_is_a_perception_failure_that_the_answer_may_follow(records):
    r = next(r for r in records if r.category == "spatial")
    subject, truth_corner = r.meta["subject"], r.options[r.answer]
    log = event_log(r.reasoning)
    second = [i for i, (c, _) in enumerate(log) if c == subject][1]
    other = next(c for c in r.options.values() if c != truth_corner)
    seen = ", ".join(f"{i + 1} {c} {other if i == second else k}" for i, (c, k) in enumerate(log))
    letter = next(k for k, v in r.options.items() if v == other)
    d = diagnose_reply(r, _reply(f"The squares in order: {seen}. So the answer is {other}.", letter))
    assert d["corner_right"] == 7 and d["colour_right"] == 8
    assert d["consistent"] == 1 and d["log_implies_truth"] == 0 and d["correct"] == 0


def test_rates_per_category_and_overall(records):
    by_id = {r.id: r for r in records}
    rows = [{"id": r.id, "reply": _reply(r.reasoning, r.answer)} for r in records[:8]]
    rows.append({"id": records[8].id, "reply": "no tags at all"})
    rates = diagnose(by_id, rows)
    assert rates["overall"]["n"] == 9
    assert rates["overall"]["accuracy"] == pytest.approx(8 / 9)
    assert rates["overall"]["has_log"] == pytest.approx(8 / 9)
    assert rates["overall"]["consistent"] == 1.0 and rates["overall"]["colour"] == 1.0


def test_a_conclusion_naming_option_a_is_counted_as_the_teacher_slip(records):
    r = next(r for r in records if r.meta["qtype"] in ("first_of", "last_of") and r.answer != "A")
    which = r.meta["qtype"].removesuffix("_of")
    right = diagnose_reply(r, _reply(r.reasoning, r.answer))
    assert (right["slip_eligible"], right["slip_followed"]) == (1.0, 0.0)
    slipped = r.reasoning.replace(f"The {which} to appear is {r.options[r.answer]}.",
                                  f"The {which} to appear is {r.options['A']}.")
    assert slipped != r.reasoning
    spaced = slipped.replace(".", " .")  # as the word-level tokenizer decodes it
    assert diagnose_reply(r, _reply(spaced, "A"))["slip_followed"] == 1.0
    other = next(x for x in records if x.meta["qtype"] == "most_often")
    assert "slip_eligible" not in diagnose_reply(other, _reply(other.reasoning, other.answer))
    rates = diagnose({r.id: r, other.id: other}, [{"id": r.id, "reply": _reply(slipped, "A")},
                                                  {"id": other.id, "reply": _reply(other.reasoning, "A")}])
    assert rates["temporal"]["slip"] == 1.0 and rates["goal"]["slip"] is None
    assert rates["overall"]["slip"] == 1.0 and rates["overall"]["slip_eligible"] == 1

