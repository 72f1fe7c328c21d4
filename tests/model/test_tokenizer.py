from __future__ import annotations

import pytest

from lvr_trainer.model.tokenizer import build_tiny_tokenizer, load_tokenizer, vision_token_ids


def test_tiny_tokenizer_is_small_deterministic_and_keeps_tags():
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert len(a) == len(b) < 400
    text = "<think>red then blue</think><answer>B</answer>"
    ids = a(text)["input_ids"]
    assert ids == b(text)["input_ids"]
    decoded = a.decode(ids)
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert tag in decoded
    assert a.unk_token_id not in a("zebra quokka")["input_ids"]  # unknown words fall back to characters


def test_qwen_tokenizer_matches_qwen25_vl_config_defaults(qwen_tokenizer):
    ids = vision_token_ids(qwen_tokenizer)
    assert (ids.vision_start, ids.vision_end, ids.image, ids.video) == (151652, 151653, 151655, 151656)
    assert len(qwen_tokenizer) == 151669


def test_not_a_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_tokenizer(str(tmp_path / "nope"))
