"""The training augmentation seam (datasets/augment.py): one draw, one function applying it, the
same model input from decoded videos (--videos) and from the frame cache (--cache)."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from fixture_files import texture

from datasets import (
    CachedClipDataset,
    FrameCache,
    VideoClipDataset,
    collate_cached,
    collate_clips,
    model_input,
    write_video,
)
from datasets.augment import Augmentation, resized_crop_flip
from datasets.prepare import prepare_cache
from datasets.transforms import IMAGENET_STD

ONE_LEVEL = 1.0 / (255 * min(IMAGENET_STD))  # one uint8 step after ImageNet normalization


@pytest.fixture(scope="module")
def square_video(tmp_path_factory):
    """One 40 x 40 clip of 8 frames: the cache stores it as it is (K = 8 frames, S = 40)."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "square.mp4", texture(8, 40, 40, seed=5), 8)
    cache = prepare_cache(
        root.parent / "cache",
        ["square.mp4"],
        str(root),
        frames=8,
        stored_size=40,
        workers=0,
        progress=False,
        log=lambda m: None,
    )
    assert cache is not None
    return root, root.parent / "cache"


def test_videos_and_frame_cache_give_the_same_training_input(square_video):
    root, cache_dir = square_video
    targets = {"valence_score": np.array([0.5], dtype=np.float32)}
    common = dict(num_frames=4, size=32, train=True, seed=3)
    videos = VideoClipDataset(["square.mp4"], targets, root, **common)
    cached = CachedClipDataset(FrameCache(cache_dir), ["square.mp4"], targets, **common)
    inputs = []
    for epoch in range(8):
        from_video = model_input(collate_clips([videos[(epoch, 0)]]), torch.device("cpu"))
        from_cache = model_input(collate_cached([cached[(epoch, 0)]]), torch.device("cpu"))
        assert from_video.shape == from_cache.shape == (1, 3, 4, 32, 32)
        assert (from_video - from_cache).abs().max().item() <= 1.01 * ONE_LEVEL, epoch  # uint8 rounding only
        inputs.append(from_cache)
    assert len({x.numpy().tobytes() for x in inputs}) == 8  # each epoch draws another crop/flip/frames


def test_uint8_clips_are_resized_exactly_as_torchvision_does_and_float_within_one_level():
    rng = np.random.default_rng(0)
    clips = torch.from_numpy(rng.integers(0, 256, (3, 3, 5, 48, 60), dtype=np.uint8))
    boxes, flips = [(0, 0, 48, 60), (5, 7, 30, 41), (10, 2, 37, 37)], [False, True, False]
    out = resized_crop_flip(clips, boxes, flips, 24)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 5, 24, 24)
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes, flips)):
        expected = TF.resized_crop(clips[i].transpose(0, 1), top, left, h, w, [24, 24], antialias=True)
        expected = TF.horizontal_flip(expected) if flip else expected
        assert torch.equal(out[i], expected.transpose(0, 1)), i
    as_float = resized_crop_flip(clips.float(), boxes, flips, 24)
    assert as_float.dtype == torch.float32
    assert (as_float - out.float()).abs().max().item() <= 1.01


def test_one_box_for_the_whole_batch_equals_per_clip_boxes():
    clips = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 2, 40, 40), dtype=np.uint8)).float()
    box = (3, 4, 30, 33)
    together = resized_crop_flip(clips, [box] * 4, [False, True, False, True], 16)
    one_by_one = torch.cat([resized_crop_flip(clips[i : i + 1], [box], [i % 2 == 1], 16) for i in range(4)])
    torch.testing.assert_close(together, one_by_one)


def test_the_draw_is_one_box_and_one_flip_from_the_samples_rng():
    aug = Augmentation()
    first = aug.draw(np.random.default_rng([0, 1, 2]), 48, 60)
    assert first == aug.draw(np.random.default_rng([0, 1, 2]), 48, 60)
    draws = [aug.draw(np.random.default_rng([0, e, 2]), 48, 60) for e in range(200)]
    assert 70 < sum(flip for _, flip in draws) < 130
    for (top, left, h, w), _ in draws:
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 60
        assert 0.55 <= h * w / (48 * 60) <= 1.0
    fixed = Augmentation(crop_scale=(1.0, 1.0), crop_ratio=(1.25, 1.25), flip_p=0.0)
    assert fixed.draw(np.random.default_rng(0), 48, 60) == ((0, 0, 48, 60), False)
