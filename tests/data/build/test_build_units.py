"""The pure parts of `lvr data build`: retry timing, strict parsing, filters, splits, clips, the journal."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest

from lvr_trainer.data.build.caption import caption_request, fmt_time
from lvr_trainer.data.build.client import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    InternalServerError,
    RateLimitError,
    Reply,
    RetryPolicy,
    backoff_delay,
    is_retryable,
    parse_retry_after,
)
from lvr_trainer.data.build.clips import clip_bounds, jpeg_data_url, video_id_for
from lvr_trainer.cli.data_build_cmd import read_api_key
from lvr_trainer.data.build.filters import balance_letters, dedupe, letter_cap, parse_blind
from lvr_trainer.data.build.journal import CallJournal, request_key
from lvr_trainer.data.build.questions import Draft, parse_questions, question_request, repair_request
from lvr_trainer.data.build.writer import split_videos

GOOD = {"question": "Why did the cook leave?", "options": {"A": "rain", "B": "a call", "C": "smoke", "D": "noise"},
        "answer": "B", "reasoning": "At 0:10 the phone rings; at 0:40 she leaves. So B."}


def draft(q: str, answer: str = "A", category: str = "temporal", video: str = "v") -> Draft:
    return Draft(video, category, q, {"A": f"{q} a", "B": f"{q} b", "C": f"{q} c", "D": f"{q} d"}, answer, "r")


def test_backoff_doubles_caps_jitters_and_honours_retry_after():
    policy, rng = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=4.0), random.Random(0)
    for retry, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)]:
        delays = [backoff_delay(retry, policy, None, rng) for _ in range(200)]
        assert 0.75 * base <= min(delays) and max(delays) <= base and len(set(delays)) > 1
    assert backoff_delay(0, policy, 7.0, rng) == 7.0          # the server knows best
    assert backoff_delay(0, policy, 3600.0, rng) <= 0.5       # but not an hour
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert parse_retry_after({}) is None


def test_only_transient_failures_are_retried():
    url = "http://x/v1/chat/completions"
    assert all(is_retryable(e) for e in (RateLimitError(url, 429, ""), InternalServerError(url, 503, ""),
                                         APITimeoutError(url, ""), APIConnectionError(url, "")))
    assert not is_retryable(BadRequestError(url, 400, "unknown field"))


def test_strict_parse_reasons():
    ok = parse_questions(json.dumps({"questions": [GOOD]}), "v", "goal")
    assert not ok.problems and ok.drafts[0].answer == "B"
    fenced = parse_questions("```json\n" + json.dumps({"questions": [GOOD]}) + "\n```", "v", "goal")
    assert len(fenced.drafts) == 1 and not fenced.problems
    assert parse_questions("{oops", "v", "goal").failure == "reply_unparseable"
    assert parse_questions('{"items": []}', "v", "goal").failure == "reply_schema"
    assert parse_questions('{"questions": []}', "v", "goal").failure == "reply_schema"
    bad = [{**GOOD, "answer": "E"}, {k: v for k, v in GOOD.items() if k != "reasoning"},
           {**GOOD, "options": {**GOOD["options"], "D": "rain"}}, {**GOOD, "answer": 1},
           {**GOOD, "extra": 1}, {**GOOD, "question": "  "}]
    parsed = parse_questions(json.dumps({"questions": [GOOD, *bad]}), "v", "goal")
    assert parsed.failure is None and len(parsed.drafts) == 1
    assert [d.reason for d in parsed.drops] == ["answer", "schema", "answer", "answer", "schema", "schema"]
    assert len(parsed.problems) == 6 and "questions[1].answer" in parsed.problems[0]


def test_repair_request_sends_back_the_reply_and_its_problems():
    body = question_request("m", "[0:00-0:10] a cat", "0:10", "plot", 2, "json_schema")
    assert body["response_format"]["json_schema"]["strict"] is True
    assert "response_format" not in question_request("m", "x", "0:10", "plot", 2, "none")
    fixed = repair_request(body, "{oops", ["not valid JSON"])
    assert fixed["messages"][:2] == body["messages"] and fixed["messages"][2]["content"] == "{oops"
    assert "not valid JSON" in fixed["messages"][3]["content"] and fixed["response_format"] == body["response_format"]


def test_dedupe_exact_and_near_keeps_the_first():
    a = draft("what did the red car do after the bridge")
    b = draft("What did the red car do after the bridge?")                # punctuation and case only
    c = draft("what exactly did the red car do after the bridge")          # one word more
    d = draft("where was the blue kite at the end of the video")
    kept, drops = dedupe([a, b, c, d], near_threshold=0.85)
    assert kept == [a, d] and [x.reason for x in drops] == ["duplicate", "near_duplicate"]


def test_letter_balance_reaches_a_fixpoint_per_category():
    biased = [draft(f"q{i}", "A") for i in range(9)]
    mixed = [draft(f"m{i}", "ABCD"[i % 4], "goal") for i in range(8)]
    kept, drops = balance_letters(biased + mixed, slack=0.25)
    assert sum(d.category == "temporal" for d in kept) == 1 and len(drops) == 8
    assert all(x.reason == "letter_imbalance" for x in drops) and mixed == [d for d in kept if d.category == "goal"]
    assert letter_cap(100, 0.25) == 32 and letter_cap(1, 0.0) == 1


def test_blind_reply_parsing():
    assert parse_blind('{"answer": "C"}') == "C" and parse_blind("B.") == "B"
    assert parse_blind('{"answer": "maybe"}') is None and parse_blind("I cannot tell") is None


def test_split_by_video_is_seeded_and_complete():
    ids = [f"v{i}" for i in range(20)]
    split = split_videos(ids, 0.1, 0.1, seed=0)
    assert split == split_videos(list(reversed(ids)), 0.1, 0.1, seed=0)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 16, "val": 2, "test": 2}
    assert set(split_videos(["a", "b", "c"], 0.0, 0.0, 0).values()) == {"train", "val", "test"}


def test_clips_cover_the_video_in_equal_parts():
    assert clip_bounds(16.0, 8.0) == [(0.0, 8.0), (8.0, 16.0)]
    assert clip_bounds(25.0, 10.0) == [(0.0, 12.5), (12.5, 25.0)]   # no 5 s stub
    assert clip_bounds(3.0, 10.0) == [(0.0, 3.0)]
    assert video_id_for("trips/day 1/a.mp4") == "trips-day_1-a"
    assert fmt_time(75.5) == "1:15.5" and fmt_time(3725) == "1:02:05"


def test_caption_request_is_openai_image_format():
    import numpy as np
    from PIL import Image

    url = jpeg_data_url(np.full((56, 56, 3), 200, np.uint8))
    body = caption_request("vlm", 0, 2, 0.0, 8.0, [url, url])
    parts = body["messages"][1]["content"]
    assert parts[0]["type"] == "text" and "0:00 to 0:08" in parts[0]["text"]
    assert [p["type"] for p in parts[1:]] == ["image_url", "image_url"]
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (56, 56)


def test_journal_survives_a_torn_line_and_keys_ignore_dict_order(tmp_path):
    assert request_key({"a": 1, "b": [1, 2]}) == request_key({"b": [1, 2], "a": 1})
    path = tmp_path / "j.jsonl"
    journal = CallJournal(path)
    journal.put("k1", "caption", Reply("a cat", 10, 3, "m"), 0.5)
    journal.close()
    with open(path, "a") as fh:
        fh.write('{"key": "k2", "reply": {"content": "cut sh')   # a crash mid-write
    again = CallJournal(path)
    assert again.get("k1") == Reply("a cat", 10, 3, "m") and again.get("k2") is None and again.torn_lines == 1
    again.put("k3", "blind", Reply('{"answer": "A"}'), 0.1)
    again.close()
    third = CallJournal(path)
    assert len(third) == 2 and third.torn_lines == 1
    third.close()


def test_api_key_from_env_or_file_only(tmp_path):
    assert read_api_key("MY_KEY", None, {"MY_KEY": " sk-1 \n"}) == "sk-1"
    key_file = tmp_path / "key"
    key_file.write_text("sk-2\n")
    assert read_api_key(None, str(key_file)) == "sk-2"
    assert read_api_key(None, None) is None
    with pytest.raises(ValueError, match="MY_KEY.*not set"):
        read_api_key("MY_KEY", None, {})
    with pytest.raises(ValueError, match="cannot read"):
        read_api_key(None, str(tmp_path / "missing"))
