"""decode_clip on the faults of real web footage: a lying frame count, variable frame rate, a
display matrix, frames too large or a stream too long, HD frames scaled while converting,
non-reference frames skipped.  (Partial downloads: test_video.py; the same files through the
dataset, prepare, predict.py and check_videos: their own test files.)"""

import av
import numpy as np
import pytest
from fixture_files import texture
from web_video_files import VFR_TIMES_MS, reference_frames, write_rotated, write_vfr

from datasets.augment import frames_to_tensor, resize_center_crop
from datasets.decode_policy import DecodePolicy, VideoTooLargeError
from datasets.video import decode_clip, sample_clip_indices, write_video


def moving(count, height, width, seed=0, block=8):
    """A blocky texture panning across the frame: libx264 codes most of it as B-frames."""
    rng = np.random.default_rng(seed)
    base = np.kron(
        rng.integers(0, 256, (height // block + 1, (width + 2 * count) // block + 1, 3)), np.ones((block, block, 1))
    )
    return np.stack([base[:height, 2 * t : 2 * t + width] for t in range(count)]).astype(np.uint8)


# ----------------------------------------------------------------- frame counts that lie
@pytest.mark.parametrize("name,declared", [("over_count.avi", 444), ("under_count.avi", 12)])
def test_header_count_that_lies_in_either_direction(web_faults, name, declared):
    """A complete AVI whose header states 444 (or 12) frames but holds 30: the clip is the
    segment centres of the 30 frames, and the file is noted, not rejected."""
    reference = reference_frames(web_faults / name)
    assert len(reference) == 30
    frames, info = decode_clip(web_faults / name, 16)
    assert info["declared_frames"] == declared and info["total_frames"] == 30 and info["partial"] is None
    assert info["indices"] == sample_clip_indices(30, 16).tolist()
    np.testing.assert_array_equal(frames, np.stack([reference[i] for i in info["indices"]]))
    assert info["notes"] == [f"header declares {declared} frames, the file holds 30"]


def test_right_header_count_keeps_the_indices_in_one_pass(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, moving(45, 32, 48), 15)
    for seed in (None, 3):
        rng = None if seed is None else np.random.default_rng(seed)
        frames, info = decode_clip(path, 8, rng)
        again = None if seed is None else np.random.default_rng(seed)
        assert info["indices"] == sample_clip_indices(45, 8, again).tolist()
        assert info["passes"] == 1 and info["notes"] == [] and not info["variable_rate"]


# ----------------------------------------------------------------- time, not indices
def frame_at(times, t):
    """The frame on screen at time ``t``: the last one that started at or before it."""
    return max(i for i, start in enumerate(times) if start <= t)


def test_variable_frame_rate_is_sampled_at_equal_times(web_faults):
    # 1.5 s at 10 fps then 1 s at 40 fps: by index, 7 of 10 frames would come from the last second
    frames, info = decode_clip(web_faults / "vfr.mp4", 10)
    end = VFR_TIMES_MS[-1] + 25
    expected = [frame_at(VFR_TIMES_MS, (j + 0.5) * end / 10) for j in range(10)]
    assert expected == [1, 3, 6, 8, 11, 13, 20, 30, 40, 50]
    assert info["variable_rate"] and info["indices"] == expected and info["total_frames"] == 55
    assert info["seconds"] == pytest.approx(2.5)
    reference = reference_frames(web_faults / "vfr.mp4")
    np.testing.assert_array_equal(frames, np.stack([reference[i] for i in expected]))
    assert "variable frame rate: frames chosen by time" in info["notes"]


def test_jitter_on_variable_rate_stays_inside_its_time_segment(web_faults):
    end = VFR_TIMES_MS[-1] + 25
    for seed in range(5):
        _, info = decode_clip(web_faults / "vfr.mp4", 10, np.random.default_rng(seed))
        for j, i in enumerate(info["indices"]):
            # the chosen frame is on screen somewhere inside segment j
            next_start = VFR_TIMES_MS[i + 1] if i + 1 < len(VFR_TIMES_MS) else end
            assert VFR_TIMES_MS[i] < (j + 1) * end / 10 and next_start > j * end / 10


def test_constant_rate_with_millisecond_timestamps_keeps_the_indices(tmp_path):
    # 30 fps in Matroska's 1 ms ticks: 33/34 ms steps are rounding, not a variable rate
    times = [round(i * 1000 / 30) for i in range(30)]
    path = write_vfr(tmp_path / "cfr.mkv", texture(30, 32, 48, 5), times)
    _, info = decode_clip(path, 8)
    assert not info["variable_rate"] and info["indices"] == sample_clip_indices(30, 8).tolist()


# ----------------------------------------------------------------- rotation
@pytest.mark.parametrize(
    "degrees,hflip,turn",
    [
        (90, False, lambda f: np.rot90(f, 1, axes=(1, 2))),  # counter-clockwise quarter turn
        (-90, False, lambda f: np.rot90(f, -1, axes=(1, 2))),
        (180, False, lambda f: f[:, ::-1, ::-1]),
        (90, True, lambda f: np.rot90(f, 1, axes=(1, 2))[:, :, ::-1]),  # then mirrored left-right
    ],
)
def test_display_matrix_turns_frames_upright(tmp_path, degrees, hflip, turn):
    path = write_rotated(tmp_path / "phone.mp4", texture(10, 32, 48, 6), 10, degrees, hflip)
    stored = np.stack(reference_frames(path))  # as stored: 32 high, 48 wide
    frames, info = decode_clip(path, 4)
    np.testing.assert_array_equal(frames, turn(stored[sample_clip_indices(10, 4)]))
    upright = (48, 32) if degrees != 180 else (32, 48)
    assert frames.shape[1:3] == upright and (info["source_height"], info["source_width"]) == upright
    assert any(n.startswith("turned upright") for n in info["notes"])


# ----------------------------------------------------------------- bounded cost
def test_frames_over_the_pixel_limit_are_skipped_before_decoding(web_faults):
    with pytest.raises(VideoTooLargeError, match="3840x2160 exceed the limit of 2088960 pixels"):
        decode_clip(web_faults / "huge.mp4", 16)
    frames, _ = decode_clip(web_faults / "huge.mp4", 2, policy=DecodePolicy(max_pixels=3840 * 2160), short_side=112)
    assert frames.shape == (2, 224, 398, 3)  # allowed explicitly, and converted at twice 112


def test_stream_over_the_duration_limit_is_skipped_by_its_timestamps(web_faults, tmp_path):
    with pytest.raises(VideoTooLargeError, match="longer than 30 s"):
        decode_clip(web_faults / "long.mp4", 16)  # 40 frames at 1 fps
    _, info = decode_clip(web_faults / "long.mp4", 16, policy=DecodePolicy(max_seconds=60))
    assert info["total_frames"] == 40
    # the limit reads the stream, not the header: a header that overstates is not a skip
    _, info = decode_clip(web_faults / "over_count.avi", 16, policy=DecodePolicy(max_seconds=5))
    assert info["declared_frames"] == 444 and info["total_frames"] == 30  # 444 frames would be 44 s


def test_large_frames_are_scaled_while_converting_small_ones_are_not(tmp_path):
    path = tmp_path / "big.mp4"
    source = moving(6, 128, 192, block=32)
    write_video(path, source, 10)
    reference = np.stack(reference_frames(path))
    frames, info = decode_clip(path, 6, short_side=32)  # short side 128 > 2 x 32: converted at 64
    assert frames.shape == (6, 64, 96, 3) and (info["source_height"], info["source_width"]) == (128, 192)
    assert "decoded at 96x64 from 192x128" in info["notes"]
    # what the pipeline then makes of it is close to resizing the full frames
    ours = resize_center_crop(frames_to_tensor(frames), 32).float()
    full = resize_center_crop(frames_to_tensor(reference), 32).float()
    assert (ours - full).abs().mean() < 3
    unscaled, info = decode_clip(path, 6, short_side=64)  # exactly twice: unchanged
    np.testing.assert_array_equal(unscaled, reference)
    assert info["notes"] == []


def test_skipping_non_reference_frames_gives_the_same_frames(tmp_path):
    path = tmp_path / "bframes.mp4"
    write_video(path, moving(60, 48, 64, seed=2), 30)
    with av.open(str(path)) as container:
        types = [int(f.pict_type) for f in container.decode(video=0)]
    assert types.count(3) > 20  # B-frames: the option has frames to skip
    reference = reference_frames(path)
    for threads, thread_type in ((1, "AUTO"), (2, "FRAME"), (2, "SLICE")):
        for seed in (None, 0, 1):
            rng = lambda seed=seed: None if seed is None else np.random.default_rng(seed)  # noqa: E731
            fast, info = decode_clip(path, 16, rng(), threads=threads, thread_type=thread_type)
            plain, _ = decode_clip(path, 16, rng(), threads=threads, thread_type=thread_type, skip_nonref=False)
            np.testing.assert_array_equal(fast, plain)
            np.testing.assert_array_equal(fast, np.stack([reference[i] for i in info["indices"]]))
            assert info["passes"] == 1


def test_avi_without_presentation_times_is_matched_by_order(web_faults):
    # FFmpeg numbers AVI packets in decode order; with B-frames those numbers are not the
    # frames' presentation times, so the first pass sees frames come back out of order.
    frames, info = decode_clip(web_faults / "over_count.avi", 16, np.random.default_rng(4))
    reference = reference_frames(web_faults / "over_count.avi")
    np.testing.assert_array_equal(frames, np.stack([reference[i] for i in info["indices"]]))


def test_training_config_and_command_flags_carry_the_policy_defaults():
    """utils/ may not import datasets/, so TrainConfig repeats the defaults: they must agree."""
    import argparse

    from datasets.decode_policy import add_decode_arguments, decode_policy_from_args
    from utils.config import TrainConfig

    cfg = TrainConfig()
    parser = argparse.ArgumentParser()
    add_decode_arguments(parser)
    assert (
        DecodePolicy(cfg.partial_videos, cfg.max_video_seconds, cfg.max_video_pixels)
        == DecodePolicy()
        == decode_policy_from_args(parser.parse_args([]))
    )
    assert decode_policy_from_args(
        parser.parse_args(["--partial-videos", "skip", "--max-video-seconds", "5"])
    ) == DecodePolicy("skip", 5.0)
    with pytest.raises(SystemExit, match="max_seconds and max_pixels must be positive"):
        decode_policy_from_args(parser.parse_args(["--max-video-seconds", "0"]))
