"""The torch-free processor and the prompt layout against transformers' own Qwen2.5-VL processor.

tests/fixtures/qwen_vl_processor.npz was made by tests/fixtures/make_processor_fixture.py with
transformers 5.24 + torchvision (a throwaway venv); see that script's docstring.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lvr_trainer.model.processor import VideoProcessor, patchify, sampled_fps
from lvr_trainer.model.prompt import build_prompt, video_token_count

FIXTURE = Path(__file__).parents[1] / "fixtures" / "qwen_vl_processor.npz"
PROMPT = ("<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Which colour appeared first?<|im_end|>\n"
          "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def fixture():
    return np.load(FIXTURE)


@pytest.mark.parametrize("case", ["even", "odd"])
def test_matches_transformers_processor(fixture, case):
    frames = fixture[f"{case}/frames"]
    fps = sampled_fps(len(fixture[f"{case}/indices"]), int(fixture[f"{case}/total_frames"]),
                      float(fixture[f"{case}/native_fps"]))
    out = VideoProcessor()(frames, fps)
    ref = fixture[f"{case}/pixel_values_videos"]
    assert out.pixel_values_videos.shape == ref.shape
    assert np.abs(out.pixel_values_videos - ref).max() <= 1e-5
    np.testing.assert_array_equal(out.video_grid_thw, fixture[f"{case}/video_grid_thw"])
    assert out.second_per_grid_ts == pytest.approx(float(fixture[f"{case}/second_per_grid_ts"][0]))


@pytest.mark.parametrize("case", ["even", "odd"])
def test_prompt_matches_transformers_processor(fixture, qwen_tokenizer, case):
    grid = fixture[f"{case}/video_grid_thw"]
    prompt = build_prompt(qwen_tokenizer, "", grid, text=PROMPT)
    np.testing.assert_array_equal(prompt.input_ids.numpy(), fixture[f"{case}/input_ids"])
    np.testing.assert_array_equal(prompt.mm_token_type_ids.numpy(), fixture[f"{case}/mm_token_type_ids"])
    assert prompt.num_video_tokens == video_token_count(grid) == int((prompt.mm_token_type_ids == 2).sum())


def test_patch_rows_follow_the_merge_window_order():
    # Value = patch column index: rows of one 2x2 merge window must be consecutive (cols 0,1,0,1,...).
    t, h, w, p = 2, 56, 56, 14
    x = np.broadcast_to((np.arange(w) // p).astype(np.float32), (t, 3, h, w)).copy()
    rows = patchify(x, temporal_patch=2, patch=p, merge=2)
    cols = rows[:, 0].astype(int).tolist()
    assert rows.shape == (16, 3 * 2 * p * p)
    assert cols[:8] == [0, 1, 0, 1, 2, 3, 2, 3]


def test_settings_from_model_config(tiny):
    model, _ = tiny
    proc = VideoProcessor.from_model_config(model.config)
    assert (proc.patch_size, proc.temporal_patch_size, proc.merge_size) == (14, 2, 2)
    assert proc.settings()["image_mean"][0] == pytest.approx(0.48145466)


def test_size_not_a_multiple_of_28_is_a_clear_error():
    with pytest.raises(ValueError, match="not a multiple of 28.*resize_factor"):
        VideoProcessor()(np.zeros((2, 30, 56, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        VideoProcessor()(np.zeros((30, 56, 3), np.uint8))
