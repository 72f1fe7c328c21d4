"""Rule-based rewards for GRPO: format, accuracy, their weighted total, and custom functions by name.

The paper's RL stage (LongVILA-R1, Sec. 3) rewards a reply for its format (reasoning in `<think>`, the
answer in `<answer>`) and for the correctness of the answer, as in DeepSeek-R1 (Guo et al. 2025, Sec. 2.2.2).

Every reward function has one signature, `fn(response, answer, kind) -> float`: the decoded reply, the
record's reference answer (a letter for `mc`), and the `AnswerKind` (a `str`). Built-ins are registered by
`RewardName`; a custom function is named `package.module:function` and loaded with `resolve_reward`.
Pure standard library (no torch).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import re
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from lvr_trainer.algo.answers import DEFAULT_LETTERS, extract_choice, is_well_formatted, last_answer_span
from lvr_trainer.algo.kinds import AnswerKind, RewardName

RewardFn = Callable[[str, str, str], float]  # (response, answer, kind) -> score, usually in [0, 1]

DEFAULT_REL_TOL = 1e-4
DEFAULT_WEIGHTS: dict[str, float] = {RewardName.accuracy.value: 0.9, RewardName.format.value: 0.1}

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?:\s*/\s*\d+(?:\.\d*)?)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def format_reward(response: str, answer: str = "", kind: str = AnswerKind.mc) -> float:
    """1.0 when the whole reply is `<think>…</think>`, optional whitespace, `<answer>…</answer>`; else 0.0.

    Outer whitespace is ignored; the answer must not be empty (rules: `answers.is_well_formatted`).
    `answer` and `kind` are unused; they keep the common reward signature.
    """
    return 1.0 if is_well_formatted(response) else 0.0


def parse_number(text: str) -> float | None:
    """The first number in `text`: `1,234.5`, `-3`, `2e-3`, `.5`, `3/4`, `$12` or `45%` (as 45); else None."""
    m = _NUMBER.search(_THOUSANDS.sub("", text))
    if m is None:
        return None
    num, _, den = m.group(0).replace(" ", "").partition("/")
    try:
        value = float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None


def normalize_text(text: str) -> str:
    """SQuAD-style normalisation (Rajpurkar et al. 2016): NFKC, casefold, no punctuation, no articles
    (a, an, the), single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if ch in string.punctuation else ch for ch in text)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _mc_accuracy(span_reply: str, answer: str, letters: Sequence[str]) -> float:
    gold = answer.strip().strip("()").upper()
    if gold not in letters:
        raise ValueError(f"mc reference answer {answer!r} is not one of the option letters {', '.join(letters)}")
    return 1.0 if extract_choice(span_reply, letters) == gold else 0.0


def accuracy_reward(
    response: str,
    answer: str,
    kind: str = AnswerKind.mc,
    *,
    rel_tol: float = DEFAULT_REL_TOL,
    letters: Sequence[str] = DEFAULT_LETTERS,
) -> float:
    """1.0 when the last `<answer>` span of `response` matches `answer`, else 0.0 (also without a span).

    kind `mc`: the span's option letter (`answers.parse_choice`) equals `answer`, case-insensitively.
    kind `number`: the first number in the span is within `rel_tol` of `answer` (math.isclose, abs 1e-9).
    kind `text`: `normalize_text(span) == normalize_text(answer)`.
    Raises ValueError for an unknown kind or an unreadable reference answer (a data bug, not a bad reply).
    """
    if kind == AnswerKind.mc:
        return _mc_accuracy(response, answer, letters)
    if kind == AnswerKind.number:
        gold = parse_number(str(answer))
        if gold is None:
            raise ValueError(f"number reference answer {answer!r} holds no number")
        span = last_answer_span(response)
        pred = None if span is None else parse_number(span)
        return 1.0 if pred is not None and math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=1e-9) else 0.0
    if kind == AnswerKind.text:
        span = last_answer_span(response)
        return 1.0 if span is not None and normalize_text(span) == normalize_text(answer) else 0.0
    raise ValueError(f"unknown answer kind {kind!r}; use one of {', '.join(k.value for k in AnswerKind)}")


REWARDS: dict[str, RewardFn] = {
    RewardName.accuracy.value: accuracy_reward,
    RewardName.format.value: format_reward,
}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn(response, answer, kind) -> float` available under `name` in configs."""

    def wrap(fn: RewardFn) -> RewardFn:
        if name in REWARDS and REWARDS[name] is not fn:
            raise ValueError(f"reward {name!r} is already registered (by {REWARDS[name].__qualname__})")
        _check_signature(fn, name)
        REWARDS[name] = fn
        return fn

    return wrap


def _check_signature(fn: object, spec: str) -> None:
    if not callable(fn):
        raise TypeError(f"reward {spec!r} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind("response", "answer", "mc")
    except TypeError:
        raise TypeError(
            f"reward {spec!r} must accept three positional arguments (response: str, answer: str, kind: str) "
            f"and return a float; its signature is {inspect.signature(fn)}") from None
    except ValueError:  # builtins without a signature: trust them
        pass


def _load_custom(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"custom reward {spec!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"custom reward {spec!r}: cannot import module {module_name!r} ({err}); install it or put its "
            "folder on PYTHONPATH") from None
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise ValueError(f"custom reward {spec!r}: module {module_name!r} has no {attr!r}; its functions: "
                             f"{', '.join(public) or '(none)'}")
        fn = getattr(fn, part)
    _check_signature(fn, spec)
    return fn  # type: ignore[return-value]


def resolve_reward(spec: str) -> RewardFn:
    """A reward function from a built-in name (`accuracy`, `format`, registered ones) or `module:function`."""
    if ":" in spec:
        return _load_custom(spec)
    if spec in REWARDS:
        return REWARDS[spec]
    hint = difflib.get_close_matches(spec, list(REWARDS), n=1)
    did = f"did you mean {hint[0]!r}? " if hint else ""
    raise ValueError(f"unknown reward {spec!r}; {did}built-in rewards: {', '.join(sorted(REWARDS))}; "
                     "a custom one is written 'package.module:function'")


@dataclass(frozen=True)
class WeightedReward:
    """total = sum_i weight_i * fn_i(response, answer, kind), with each term reported as `reward/<name>`."""

    terms: tuple[tuple[str, RewardFn, float], ...]

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, float] | None = None, rel_tol: float = DEFAULT_REL_TOL,
    ) -> WeightedReward:
        """Build from `{name or 'module:function': weight}`; default 0.9 accuracy + 0.1 format.

        `rel_tol` is bound into the built-in `accuracy` (config: `rl.number_rel_tol`).
        """
        weights = DEFAULT_WEIGHTS if weights is None else weights
        if not weights:
            raise ValueError("no reward terms: give at least one, e.g. {'accuracy': 0.9, 'format': 0.1}")
        terms = []
        for name, w in weights.items():
            if not math.isfinite(w):
                raise ValueError(f"reward {name!r} has weight {w}; weights must be finite numbers")
            fn = resolve_reward(name)
            if fn is accuracy_reward and rel_tol != DEFAULT_REL_TOL:
                fn = functools.partial(accuracy_reward, rel_tol=rel_tol)
            terms.append((name, fn, float(w)))
        return cls(tuple(terms))

    def __call__(self, response: str, answer: str, kind: str = AnswerKind.mc) -> tuple[float, dict[str, float]]:
        """(total, {`reward/<name>`: score}) for one reply."""
        scores = {f"reward/{name}": float(fn(response, answer, kind)) for name, fn, _ in self.terms}
        total = sum(w * scores[f"reward/{name}"] for name, _, w in self.terms)
        return total, scores

    def score_batch(
        self, responses: Sequence[str], answers: Sequence[str], kinds: Sequence[str] | str = AnswerKind.mc,
    ) -> tuple[list[float], dict[str, float]]:
        """(total per reply, batch means as `reward/<name>` and `reward/total`) for aligned lists."""
        if len(responses) != len(answers):
            raise ValueError(f"{len(responses)} responses but {len(answers)} answers; they must align")
        kinds = [kinds] * len(responses) if isinstance(kinds, str) else list(kinds)
        totals: list[float] = []
        sums: dict[str, float] = {f"reward/{name}": 0.0 for name, _, _ in self.terms}
        for response, answer, kind in zip(responses, answers, kinds, strict=True):
            total, scores = self(response, answer, kind)
            totals.append(total)
            for key, value in scores.items():
                sums[key] += value
        n = max(len(responses), 1)
        metrics = {key: value / n for key, value in sums.items()}
        metrics["reward/total"] = sum(totals) / n
        return totals, metrics
