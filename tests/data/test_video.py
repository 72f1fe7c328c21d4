import json

import numpy as np
import pytest

from lvr_trainer.config import FrameSampling
from lvr_trainer.data.video import (VideoError, VideoInfo, fit_size, frames_for_rate, mp4_truncation,
                                    plan_indices, sample_frames, uniform_indices)
from lvr_trainer.data.synth import PALETTE


def test_uniform_indices_are_segment_centres():
    assert uniform_indices(10, 5).tolist() == [1, 3, 5, 7, 9]
    assert uniform_indices(300, 3).tolist() == [50, 150, 250]
    assert uniform_indices(1, 1).tolist() == [0]


def test_uniform_indices_repeat_when_video_is_shorter():
    idx = uniform_indices(3, 6)
    assert idx.tolist() == [0, 0, 1, 1, 2, 2]


def test_uniform_indices_reject_empty():
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


def test_sampling_by_rate_is_capped():
    assert frames_for_rate(total_frames=600, native_fps=30, fps=1, max_frames=512) == 20
    assert frames_for_rate(total_frames=108000, native_fps=30, fps=1, max_frames=512) == 512
    assert frames_for_rate(total_frames=10, native_fps=30, fps=1, max_frames=512) == 1
    info = VideoInfo(num_frames=600, fps=30.0, width=640, height=360)
    idx = plan_indices(info, FrameSampling(num_frames=None, fps=2.0, max_frames=512))
    assert len(idx) == 40 and idx[0] == 7 and idx[-1] == 592


@pytest.mark.parametrize("h,w", [(360, 640), (1080, 1920), (224, 224), (100, 30), (2000, 50)])
def test_fit_size_multiples_of_28_within_budget(h, w):
    budget = 224 * 224
    fh, fw = fit_size(h, w, 28, 56 * 56, budget)
    assert fh % 28 == 0 and fw % 28 == 0
    assert fh * fw <= budget
    if h * w >= 56 * 56 and min(h, w) >= 56:
        assert abs(fh / fw - h / w) / (h / w) < 0.25  # aspect kept up to rounding


def test_fit_size_scales_up_tiny_frames():
    fh, fw = fit_size(20, 20, 28, 112 * 112, 224 * 224)
    assert fh * fw >= 112 * 112 and fh % 28 == 0


def test_sampling_config_needs_a_rule():
    with pytest.raises(ValueError, match="num_frames"):
        FrameSampling(num_frames=None, fps=None)


def _expected_colour(events, t):
    return next(e["colour"] for e in events if e["start"] <= t < e["end"])


def test_decoded_frames_match_timestamps(small_dataset):
    out, _ = small_dataset
    video = sorted((out / "videos").glob("*.mp4"))[0]
    events = json.loads(video.with_suffix(".events.json").read_text())
    s = sample_frames(str(video), FrameSampling(num_frames=16, max_pixels=112 * 112))
    assert s.frames.shape == (16, 112, 112, 3) and s.frames.dtype == np.uint8
    assert s.info.num_frames == 128 and s.info.fps == 8.0
    np.testing.assert_allclose(s.timestamps, s.indices / 8.0)
    names = list(PALETTE)
    palette = np.array([PALETTE[n] for n in names], dtype=np.float64)
    for frame, t in zip(s.frames, s.timestamps):
        pixels = frame.reshape(-1, 3).astype(np.float64)
        saturated = pixels[np.ptp(pixels, axis=1) > 60]  # the square, not the grey background
        if len(saturated) < 50:  # white square: no saturation; take the brightest pixels
            saturated = pixels[pixels.mean(axis=1) > 200]
        colour = names[np.argmin(((palette - saturated.mean(0)) ** 2).sum(1))]
        assert colour == _expected_colour(events, t)


def test_resize_to_budget(small_dataset):
    out, _ = small_dataset
    video = sorted((out / "videos").glob("*.mp4"))[0]
    s = sample_frames(str(video), FrameSampling(num_frames=4, max_pixels=56 * 56, min_pixels=28 * 28))
    assert s.frames.shape == (4, 56, 56, 3)


def test_missing_corrupt_truncated_videos_raise_one_error_type(tmp_path, small_dataset):
    out, _ = small_dataset
    good = sorted((out / "videos").glob("*.mp4"))[0].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good[: len(good) // 2])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    cases = {tmp_path / "nope.mp4": "missing", cut: "truncated", junk: "corrupt", empty: "corrupt"}
    for path, kind in cases.items():
        with pytest.raises(VideoError) as info:
            sample_frames(str(path), FrameSampling(num_frames=4))
        assert info.value.kind == kind and str(path) in str(info.value)
    assert "bytes missing" in mp4_truncation(str(cut))
    assert mp4_truncation(str(sorted((out / "videos").glob("*.mp4"))[0])) is None


def test_too_short_video(small_dataset):
    out, _ = small_dataset
    video = sorted((out / "videos").glob("*.mp4"))[0]
    with pytest.raises(VideoError) as info:
        sample_frames(str(video), FrameSampling(num_frames=4), min_frames=1000)
    assert info.value.kind == "too_short"
