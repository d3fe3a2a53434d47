"""The device path of datasets/augment.py (a frame-cache batch's draws applied in float, then the
normalizer; run here on CPU tensors) against CPU references."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from datasets.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augmentation,
    ClipTransform,
    Drawn,
    apply_drawn,
    model_input,
    no_augmentation,
    normalize,
)

N, C, T, S = 3, 3, 4, 40


def clips(seed=0, n=N, s=S):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, C, T, s, s), dtype=np.uint8))


def on_device(video, boxes, flips, size):
    """The model input of a frame-cache batch whose samples drew these crop boxes and flips."""
    drawn = [Drawn(Augmentation(), (tuple(b), bool(f)), size) for b, f in zip(boxes.tolist(), flips.tolist())]
    return model_input({"video": video, "augment": drawn}, "cpu")


def reference(video, boxes, flips, size):
    """One clip at a time with torchvision's resized_crop on float frames, flip, then normalize."""
    out = []
    for clip, (top, left, h, w), flip in zip(video, boxes.tolist(), flips.tolist()):
        frames = clip.permute(1, 0, 2, 3).float()  # (T, C, H, W) as the video pipeline holds them
        frames = TF.resized_crop(frames, top, left, h, w, [size, size], antialias=True)
        if flip:
            frames = frames.flip(-1)
        out.append(frames.permute(1, 0, 2, 3))
    x = torch.stack(out) / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def test_per_sample_boxes_and_flips_equal_reference():
    video = clips()
    boxes = torch.tensor([[0, 0, 40, 40], [5, 3, 30, 36], [10, 12, 25, 20]])
    flips = torch.tensor([False, True, True])
    out = on_device(video, boxes, flips, 32)
    assert out.shape == (N, C, T, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(video, boxes, flips, 32), atol=1e-4, rtol=0)


def test_flip_mirrors_and_crop_selects_the_box():
    """Without resizing (box size == output size) the output is exactly the box, mirrored if asked."""
    video = clips(1)
    boxes = torch.tensor([[4, 6, 24, 24]] * N)
    flips = torch.tensor([True, False, True])
    out = on_device(video, boxes, flips, 24)
    crop = normalize(video[:, :, :, 4:28, 6:30])
    torch.testing.assert_close(out[1], crop[1])
    torch.testing.assert_close(out[0], crop[0].flip(-1))
    torch.testing.assert_close(out[2], crop[2].flip(-1))


def test_evaluation_batch_is_one_resize_or_plain_normalization():
    video = clips(2)
    full = torch.tensor([[0, 0, S, S]] * N)
    no_flip = torch.zeros(N, dtype=torch.bool)
    as_stored = model_input({"video": video, "augment": [no_augmentation(S)] * N}, "cpu")
    torch.testing.assert_close(as_stored, normalize(video))
    resized = model_input({"video": video, "augment": [no_augmentation(24)] * N}, "cpu")
    torch.testing.assert_close(resized, reference(video, full, no_flip, 24), atol=1e-4, rtol=0)


def test_matches_the_video_pipeline_train_transform_up_to_uint8_rounding():
    """The same rng draws through ClipTransform (uint8, on CPU workers) and through the device path."""
    video = clips(3, n=1)
    frames = video[0].permute(1, 2, 3, 0).numpy()  # (T, H, W, C) as decoded
    for seed in range(6):
        cpu = normalize(ClipTransform(size=32, train=True)(frames, np.random.default_rng(seed)))
        drawn = Augmentation().draw(np.random.default_rng(seed), S, S, 32)
        out = model_input({"video": video, "augment": [drawn]}, "cpu")[0]
        # uint8 rounding in the CPU path: at most ~1 level = 1 / (255 * 0.225)
        assert (out - cpu).abs().max().item() < 2.5 / (255 * 0.225), seed


def test_model_input_from_a_batch_without_clips_is_refused():
    batch = {"video": None, "indices": torch.arange(0), "augment": []}
    with pytest.raises(ValueError, match="every clip in it failed"):
        model_input(batch, "cpu")


def test_bad_inputs_are_refused():
    video = clips()
    boxes = [(0, 0, 40, 40), (20, 0, 30, 10), (0, 0, 1, 1)]
    with pytest.raises(ValueError, match="outside its 40x40 frames"):
        apply_drawn(video, [Drawn(Augmentation(), (b, False), 32) for b in boxes])
    with pytest.raises(ValueError, match="3 clips but 2 augmentation draws"):
        apply_drawn(video, [no_augmentation(8)] * 2)
    with pytest.raises(ValueError, match="another augmentation or size"):
        apply_drawn(video, [no_augmentation(8), no_augmentation(8), no_augmentation(16)])
    with pytest.raises(TypeError, match="expected uint8 video"):
        normalize(video.int())
