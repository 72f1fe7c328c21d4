"""The one reader of `<answer>` spans and option letters (shared by the mc reward and both scorers)."""

from __future__ import annotations

import pytest

from lvr_trainer.algo.answers import (
    DEFAULT_LETTERS, answer_spans, extract_choice, find_choice_lenient, is_well_formatted, last_answer_span,
    parse_choice,
)
from lvr_trainer.data.schema import LETTERS


def test_default_letters_are_the_schema_letters():
    assert DEFAULT_LETTERS == LETTERS


@pytest.mark.parametrize("span, letter", [
    ("B", "B"), ("(B)", "B"), ("[B]", "B"), ("B.", "B"), ("B)", "B"), ("B:", "B"),
    ("B) a red car", "B"), ("B. a red car", "B"), ("(B) a red car", "B"), ("Option B", "B"),
    ("option (c): the dog", "C"), ("Answer: D", "D"), ("answer is B.", "B"), ("Choice A", "A"),
    ("Option B is the right one", "B"), ("b", "B"), ("  c  ", "C"), ("\nd.\n", "D"), ("**C**", "C"),
    ("_a_", "A"),
])
def test_parse_choice_accepts(span, letter):
    assert parse_choice(span) == letter


@pytest.mark.parametrize("span", [
    "", "   ", "E", "(E)", "AB", "Apple", "A man walks", "Dog.", "The answer is C", "the answer is a dog",
    "Option b is right",  # after a cue, a lowercase letter followed by words reads as a word
    "B2", "option", "3",
])
def test_parse_choice_rejects(span):
    assert parse_choice(span) is None


def test_parse_choice_custom_letters():
    assert parse_choice("E", letters="ABCDE") == "E"
    assert parse_choice("d", letters=("A", "B", "C")) is None


def test_answer_spans_last_wins_and_unclosed_is_no_span():
    text = "<answer>A</answer> wait <answer>C</answer> <answer>D"
    assert answer_spans(text) == ["A", "C"]
    assert last_answer_span(text) == "C"
    assert extract_choice(text) == "C"
    assert last_answer_span("<answer>B") is None
    assert extract_choice("B") is None


def test_answer_spans_nested_opening_counts_inner():
    assert answer_spans("<answer>x <answer>B</answer>") == ["B"]


def test_answer_span_tags_are_case_sensitive():
    assert extract_choice("<ANSWER>B</ANSWER>") is None


@pytest.mark.parametrize("text, ok", [
    ("<think>r</think><answer>B</answer>", True),
    ("<think>r</think>\n\n <answer>B</answer>", True),
    ("  <think>\nmulti\nline</think> <answer>B</answer>\n", True),
    ("<think></think><answer>B</answer>", True),
    ("<think>r</think><answer> </answer>", False),
    ("<think>r</think><answer></answer>", False),
    ("<answer>B</answer>", False),
    ("<think>r</think>", False),
    ("x<think>r</think><answer>B</answer>", False),
    ("<think>r</think><answer>B</answer> trailing", False),
    ("<think>r</think> mid <answer>B</answer>", False),
    ("<think>r</think><answer>B</answer><answer>C</answer>", False),
    ("<think>a<think>b</think><answer>B</answer>", False),
    ("<think>r</think><answer>B", False),
])
def test_is_well_formatted(text, ok):
    assert is_well_formatted(text) is ok


@pytest.mark.parametrize("text, letter", [
    ("<think>x</think><answer>C</answer>", "C"),  # rule 1: strict reading
    ("I think the answer is C, maybe.", "C"),  # rule 2: cue phrase
    ("Option A looks wrong. The answer is (d).", "D"),  # rule 2: the last cue
    ("B. The man leaves first.", "B"),  # rule 3: a choice at the start
    ("(c) because it rains", "C"),
    ("A man walks in. So D", "D"),  # rule 4: last standalone capital, the article A skipped
    ("It must be C or perhaps B", "B"),
    ("choose [b] here", "B"),
])
def test_find_choice_lenient(text, letter):
    assert find_choice_lenient(text) == letter


@pytest.mark.parametrize("text", [
    "Apple and CD are here",  # letters inside words do not count
    "A man walks",  # the article
    "maybe b or c",  # bare lowercase letters never count
    "B2 and C3 are rooms",
    "<answer></answer>",
    "",
])
def test_find_choice_lenient_reads_nothing(text):
    assert find_choice_lenient(text) is None


def test_lenient_agrees_with_strict_whenever_strict_reads():
    for text in ["<answer>B</answer> but A", "C <answer>(a)</answer>", "<answer>Option D</answer> answer is B"]:
        assert find_choice_lenient(text) == extract_choice(text)
