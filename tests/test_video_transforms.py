"""Clip transforms (datasets/augment.py): shapes/dtypes, one crop and flip per clip, the normalizer."""

import numpy as np
import pytest
import torch

from datasets.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    ClipTransform,
    HorizontalFlip,
    RandomResizedCrop,
    normalize,
    sample_resized_crop_box,
)


def still_clip(num_frames=6, height=50, width=80, seed=0):
    """Every frame the same random picture: any per-frame difference after a transform
    means the frames were cropped or flipped differently."""
    picture = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.repeat(picture[None], num_frames, axis=0)


def test_eval_shape_dtype_and_layout():
    out = ClipTransform(size=32)(still_clip(5, 50, 80))
    assert out.shape == (3, 5, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()


def test_eval_resizes_short_side_then_centre_crops():
    # Left third red, middle third green, right third blue on a 30x90 frame: the centre
    # crop of the 32x96 resize keeps only the green middle (edge pixels blend: antialiasing).
    frame = np.zeros((30, 90, 3), np.uint8)
    frame[:, :30, 0] = 255
    frame[:, 30:60, 1] = 255
    frame[:, 60:, 2] = 255
    out = ClipTransform(size=32)(frame[None].repeat(2, 0))
    assert out.shape == (3, 2, 32, 32)
    inner = out[:, :, :, 2:-2]
    assert inner[1].min() == 255 and inner[0].max() == 0 and inner[2].max() == 0
    assert out[0].max() < 16 and out[2].max() < 16


def test_eval_is_deterministic_and_needs_no_rng():
    clip = still_clip()
    assert torch.equal(ClipTransform(size=24)(clip), ClipTransform(size=24)(clip, None))


@pytest.mark.parametrize("seed", range(6))
def test_train_uses_one_crop_and_flip_for_all_frames(seed):
    out = ClipTransform(size=24, train=True)(still_clip(), np.random.default_rng(seed))
    assert out.shape == (3, 6, 24, 24) and out.dtype == torch.uint8
    for t in range(1, out.shape[1]):
        assert torch.equal(out[:, t], out[:, 0])


def test_train_depends_only_on_the_rng_and_varies_across_draws():
    clip = still_clip()
    transform = ClipTransform(size=24, train=True)
    first = transform(clip, np.random.default_rng([1, 2, 3]))
    assert torch.equal(first, transform(clip, np.random.default_rng([1, 2, 3])))
    outs = {transform(clip, np.random.default_rng([1, e, 3])).numpy().tobytes() for e in range(10)}
    assert len(outs) == 10


def test_train_flip_rate_is_about_half():
    # A frame whose left half is black and right half white: flipped output has a white left.
    frame = np.zeros((40, 40, 3), np.uint8)
    frame[:, 20:] = 255
    clip = frame[None].repeat(2, 0)
    transform = ClipTransform(
        size=16, train=True, augment=Augmentation([RandomResizedCrop((1.0, 1.0), (1.0, 1.0)), HorizontalFlip()])
    )
    flipped = [transform(clip, np.random.default_rng(s))[0, 0, 8, 0].item() > 128 for s in range(200)]
    assert 70 < sum(flipped) < 130


def test_train_requires_rng():
    with pytest.raises(ValueError, match="rng"):
        ClipTransform(size=16, train=True)(still_clip())


@pytest.mark.parametrize("height,width", [(50, 80), (80, 50), (7, 300), (61, 97)])
def test_crop_box_within_frame_and_scale(height, width):
    rng = np.random.default_rng(0)
    for _ in range(100):
        top, left, box_h, box_w = sample_resized_crop_box(height, width, (0.6, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + box_h <= height and 0 <= left and left + box_w <= width
        assert box_h > 0 and box_w > 0
        if (height, width) != (7, 300):  # a fallback box may be smaller for extreme frames
            assert 0.55 <= box_h * box_w / (height * width) <= 1.0


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="crop scale"):
        RandomResizedCrop(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="crop ratio"):
        RandomResizedCrop(ratio=(2.0, 1.0))
    with pytest.raises(ValueError, match="flip p"):
        HorizontalFlip(p=1.5)
    with pytest.raises(TypeError, match="Step instances"):
        Augmentation([lambda clips: clips])
    with pytest.raises(ValueError, match="size"):
        ClipTransform(size=0)


def test_normalize_matches_imagenet_formula():
    video = torch.randint(0, 256, (2, 3, 4, 5, 5), dtype=torch.uint8)
    out = normalize(video)
    assert out.dtype == torch.float32 and out.shape == video.shape
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    torch.testing.assert_close(out, (video.float() / 255 - mean) / std)
    # one clip (C, T, H, W) broadcasts the same way; float values in [0, 255] (the device path's
    # augmented clips) normalize like the uint8 ones and are left unchanged
    torch.testing.assert_close(normalize(video[0]), out[0])
    as_float = video.float()
    torch.testing.assert_close(normalize(as_float), out)
    assert torch.equal(as_float, video.float())


def test_normalize_rejects_other_types_and_shapes():
    for dtype in (torch.int32, torch.int64, torch.bool):
        with pytest.raises(TypeError, match="expected uint8 video"):
            normalize(torch.zeros(3, 2, 4, 4, dtype=dtype))
    with pytest.raises(ValueError, match="shape"):
        normalize(torch.zeros(4, 2, 4, 4, dtype=torch.uint8))
