"""The training augmentation (datasets/augment.py): one draw per sample, one function applying it,
the same model input from decoded videos (--videos) and from the frame cache (--cache), and a new
step added by touching only the augmentation module."""

from dataclasses import dataclass

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
    make_loader,
    model_input,
    write_video,
)
from datasets.augment import (
    IMAGENET_STD,
    Augmentation,
    Drawn,
    HorizontalFlip,
    RandomResizedCrop,
    Step,
    apply_drawn,
    normalize,
)
from datasets.prepare import prepare_cache

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


def crop_flip(boxes, flips, size):
    return [Drawn(Augmentation(), (box, flip), size) for box, flip in zip(boxes, flips)]


def test_uint8_clips_are_resized_exactly_as_torchvision_does_and_float_within_one_level():
    rng = np.random.default_rng(0)
    clips = torch.from_numpy(rng.integers(0, 256, (3, 3, 5, 48, 60), dtype=np.uint8))
    boxes, flips = [(0, 0, 48, 60), (5, 7, 30, 41), (10, 2, 37, 37)], [False, True, False]
    out = apply_drawn(clips, crop_flip(boxes, flips, 24))
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 5, 24, 24)
    for i, ((top, left, h, w), flip) in enumerate(zip(boxes, flips)):
        expected = TF.resized_crop(clips[i].transpose(0, 1), top, left, h, w, [24, 24], antialias=True)
        expected = TF.horizontal_flip(expected) if flip else expected
        assert torch.equal(out[i], expected.transpose(0, 1)), i
    as_float = apply_drawn(clips.float(), crop_flip(boxes, flips, 24))
    assert as_float.dtype == torch.float32
    assert (as_float - out.float()).abs().max().item() <= 1.01


def test_one_box_for_the_whole_batch_equals_per_clip_boxes():
    clips = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 2, 40, 40), dtype=np.uint8)).float()
    box = (3, 4, 30, 33)
    flips = [False, True, False, True]
    together = apply_drawn(clips, crop_flip([box] * 4, flips, 16))
    one_by_one = torch.cat([apply_drawn(clips[i : i + 1], crop_flip([box], [flips[i]], 16)) for i in range(4)])
    torch.testing.assert_close(together, one_by_one)


def test_the_draw_is_one_box_and_one_flip_from_the_samples_rng():
    aug = Augmentation()
    first = aug.draw(np.random.default_rng([0, 1, 2]), 48, 60, 24)
    assert first == aug.draw(np.random.default_rng([0, 1, 2]), 48, 60, 24)
    draws = [aug.draw(np.random.default_rng([0, e, 2]), 48, 60, 24).params for e in range(200)]
    assert 70 < sum(flip for _, flip in draws) < 130
    for (top, left, h, w), _ in draws:
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 60
        assert 0.55 <= h * w / (48 * 60) <= 1.0
    fixed = Augmentation([RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.25, 1.25)), HorizontalFlip(p=0.0)])
    assert fixed.draw(np.random.default_rng(0), 48, 60, 24).params == ((0, 0, 48, 60), False)


# ------------------------------------------------------------------------------------------------
# a new augmentation, written here and touching nothing but the augmentation module's Step
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Brightness(Step):
    """Toy step: every pixel of a clip times one factor drawn uniform in [lo, hi], kept in range."""

    lo: float = 0.6
    hi: float = 1.4

    def draw(self, rng, height, width):
        return float(rng.uniform(self.lo, self.hi))

    def apply(self, clips, params, size):
        factors = torch.tensor(params, dtype=torch.float32, device=clips.device).view(-1, 1, 1, 1, 1)
        return self.like((clips.float() * factors).clamp(0, 255), clips)


WITH_BRIGHTNESS = Augmentation([RandomResizedCrop(), HorizontalFlip(), Brightness()])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_a_new_step_applies_alike_on_the_cpu_and_the_device(device):
    """The worker path (uint8 on the CPU, rounded) and the device path (float) of one draw."""
    clips = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 3, 3, 40, 40), dtype=np.uint8))
    drawn = [WITH_BRIGHTNESS.draw(np.random.default_rng([7, 0, i]), 40, 40, 24) for i in range(4)]
    assert len({d.params[2] for d in drawn}) == 4  # each sample its own factor
    on_cpu = normalize(apply_drawn(clips, drawn))
    on_device = model_input({"video": clips, "augment": drawn}, torch.device(device)).cpu()
    # the uint8 path rounds twice (after the resize, after the brightness): under 2 levels
    assert (on_cpu - on_device).abs().max().item() <= 2 * ONE_LEVEL
    # the steps before it drew what they draw without it (it draws last), and it did its job
    plain = [Drawn(Augmentation(), d.params[:2], 24) for d in drawn]
    before = apply_drawn(clips.float(), plain)
    factors = torch.tensor([d.params[2] for d in drawn]).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(on_device, normalize((before * factors).clamp(0, 255)), atol=1e-4, rtol=0)


def test_a_new_step_gives_the_same_input_from_decoded_videos_and_the_frame_cache(square_video):
    """Through the datasets, their loaders and collate functions, which carry the draw unread."""
    root, cache_dir = square_video
    targets = {"valence_score": np.array([0.5], dtype=np.float32)}
    common = dict(num_frames=4, size=32, train=True, seed=3, augment=WITH_BRIGHTNESS)
    videos = VideoClipDataset(["square.mp4"], targets, root, **common)
    cached = CachedClipDataset(FrameCache(cache_dir), ["square.mp4"], targets, **common)
    keys = [(epoch, 0) for epoch in range(6)]
    options = dict(workers=1, prefetch=1, pin_memory=False)
    video_batches = make_loader(videos, keys, 1, collate_fn=collate_clips, **options)
    cache_batches = make_loader(cached, keys, 1, **options)
    factors = []
    for key, from_video, from_cache in zip(keys, video_batches, cache_batches):
        x_video, x_cache = model_input(from_video, "cpu"), model_input(from_cache, "cpu")
        assert x_video.shape == x_cache.shape == (1, 3, 4, 32, 32)
        assert (x_video - x_cache).abs().max().item() <= 2 * ONE_LEVEL, key
        factors.append(from_cache["augment"][0].params[2])
        plain = CachedClipDataset(
            FrameCache(cache_dir), ["square.mp4"], targets, **{**common, "augment": Augmentation()}
        )
        unbrightened = model_input(collate_cached([plain[key]]), "cpu")
        assert not torch.allclose(x_cache, unbrightened, atol=ONE_LEVEL), key
    assert len(set(factors)) == len(keys) and all(0.6 <= f <= 1.4 for f in factors)
