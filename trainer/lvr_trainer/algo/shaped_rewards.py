"""Shaped rewards for GRPO runs that start far from the reply format (a random-init model).

The built-in `format` reward is all-or-nothing: a random-init model never writes a whole
`<think>…</think><answer>…</answer>` reply, every group then scores the same, and GRPO's advantages are
all 0. `format_progress` gives partial credit on the way there. Use it next to `format`, by name:

    rl:
      rewards:
        - {name: format, weight: 1.0}
        - {name: "lvr_trainer.algo.shaped_rewards:format_progress", weight: 1.0}

Standard library plus `lvr_trainer.algo.answers` (the reply parser training and eval share); same
signature as every reward: fn(response, answer, kind) -> float.
"""

from __future__ import annotations

import difflib
import re

from lvr_trainer.algo.answers import extract_choice

TAGS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")
_TAG = re.compile(r"</?(?:think|answer)>")


def tag_skeleton_similarity(response: str) -> float:
    """difflib ratio in [0, 1] between the reply's sequence of tags (other text dropped) and the target
    sequence `<think> </think> <answer> </answer>`: 2 x matches / (tags in reply + 4). Missing, repeated
    and misordered tags all lower it."""
    found = _TAG.findall(response)
    return difflib.SequenceMatcher(None, found, list(TAGS), autojunk=False).ratio()


def format_progress(response: str, answer: str = "", kind: str = "mc") -> float:
    """Partial format credit in [0, 1]: the mean of `tag_skeleton_similarity`, "starts with `<think>`" and
    "ends with `</answer>`" (outer whitespace ignored). 1.0 for every well-formatted reply (also for
    some malformed ones, e.g. an empty answer: pair it with the strict `format`). `answer`/`kind` unused."""
    text = response.strip()
    checks = (tag_skeleton_similarity(text), float(text.startswith(TAGS[0])), float(text.endswith(TAGS[-1])))
    return sum(checks) / len(checks)


def answers_a(response: str, answer: str = "", kind: str = "mc") -> float:
    """A plumbing probe, not a task reward: 1.0 when the reply's last `<answer>` letter is A.

    Any policy can learn it (the letter is one token it already writes), so a run with this reward shows
    within a few steps whether rollouts, rewards, advantages and updates are wired together: the share
    of A answers must climb from where the policy starts (about 1/4 with balanced letters) towards 1.
    `answer`/`kind` unused."""
    return float(extract_choice(response) == "A")


def answers_c(response: str, answer: str = "", kind: str = "mc") -> float:
    """`answers_a`'s probe for the letter C: for a policy that already favours A (the SFT model of a
    teacher with a position bias for the first option answers A half the time)."""
    return float(extract_choice(response) == "C")
