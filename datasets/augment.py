"""The training augmentation: one definition for decoded videos (--videos) and the frame cache (--cache).

What is drawn for a training sample, from its own rng ``numpy.random.default_rng([seed, epoch,
index])`` (so it depends on nothing else: not the worker, the world size or a resume), in order:

1. which frames: ``sample_clip_indices`` (one frame from each of T equal segments, jittered;
   datasets/video.py) over the video's frames or the cache's K stored frames;
2. :meth:`Augmentation.draw`: a random resized crop box -- area fraction uniform in
   ``crop_scale``, aspect ratio w/h log-uniform in ``crop_ratio`` -- and a horizontal flip with
   probability ``flip_p``.  One draw per clip: every frame gets the same crop and flip, so motion
   stays coherent.

How it is applied: :func:`resized_crop_flip` (crop each clip's box, resize to size x size,
bilinear and antialiased, flip), on whatever tensor the path holds:

* ``--videos``: in the DataLoader worker, per clip, on its decoded uint8 frames of any size; the
  result stays uint8 (rounded) for the trip to the device (``ClipTransform``);
* ``--cache``: on the device, on the batch of stored S x S clips, in float (``augment_on_device``);
  normalization follows.

Both give the same model input up to uint8 rounding (tests/test_augment.py).  train_ddp.py chooses
the augmentation (``TRAIN_AUGMENTATION``) for both paths; a new kind of augmentation is added here.
Flips keep every label true (facingness and distance do not depend on left/right).  The crop area
range is milder than ImageNet's 0.08-1 on purpose: people count and distance are spatial labels,
and a small crop can cut people out of the picture and make the label false.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DEFAULT_CROP_SCALE", "DEFAULT_CROP_RATIO", "Augmentation", "sample_resized_crop_box", "resized_crop_flip"]

DEFAULT_CROP_SCALE: tuple[float, float] = (0.6, 1.0)
DEFAULT_CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)

Box = tuple[int, int, int, int]  # top, left, height, width


@dataclass(frozen=True)
class Augmentation:
    """The spatial training augmentation's parameters, and its per-sample draw."""

    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")
        if not 0 <= self.flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {self.flip_p}")

    def draw(self, rng: np.random.Generator, height: int, width: int) -> tuple[Box, bool]:
        """(crop box inside a height x width frame, flip) for one clip."""
        box = sample_resized_crop_box(height, width, self.crop_scale, self.crop_ratio, rng)
        return box, bool(rng.random() < self.flip_p)


def sample_resized_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Box:
    """(top, left, box_height, box_width) of a random box inside a height x width frame.

    Area fraction uniform in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``; up to
    10 draws, then the largest centred box whose ratio is clamped into ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        box_w = int(round(math.sqrt(target_area * aspect)))
        box_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return top, left, box_h, box_w
    frame_ratio = width / height
    if frame_ratio < ratio[0]:
        box_w, box_h = width, int(round(width / ratio[0]))
    elif frame_ratio > ratio[1]:
        box_h, box_w = height, int(round(height * ratio[1]))
    else:
        box_w, box_h = width, height
    return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def resized_crop_flip(
    clips: torch.Tensor, boxes: Sequence[Box] | torch.Tensor, flips: Sequence[bool] | torch.Tensor, size: int
) -> torch.Tensor:
    """(N, C, T, H, W) clips -> (N, C, T, size, size), same dtype and device.

    Clip i: crop ``boxes[i]`` = (top, left, height, width), resize to size x size (bilinear,
    antialiased), flip horizontally if ``flips[i]``.  uint8 clips come out uint8 (rounded: the
    worker path), float clips float (the device path).  The frames are resized as T images of C
    channels each, the layout of decoded frames, for which PyTorch's CPU uint8 kernel is fast.
    Boxes and flips are best left on the CPU (reading them there needs no device sync).
    """
    if clips.ndim != 5:
        raise ValueError(f"expected clips (N, C, T, H, W), got shape {tuple(clips.shape)}")
    n, c, t, height, width = clips.shape
    boxes = [tuple(int(v) for v in b) for b in (boxes.tolist() if torch.is_tensor(boxes) else boxes)]
    flips = [bool(f) for f in (flips.tolist() if torch.is_tensor(flips) else flips)]
    if len(boxes) != n or len(flips) != n:
        raise ValueError(f"{n} clips but {len(boxes)} crop boxes and {len(flips)} flips")
    for i, (top, left, h, w) in enumerate(boxes):
        if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > height or left + w > width:
            raise ValueError(f"crop box {boxes[i]} of sample {i} is outside its {height}x{width} frames")
    out = clips.new_empty((n, c, t, size, size))
    if n and all(b == boxes[0] for b in boxes):  # evaluation: one box for all, one call
        top, left, h, w = boxes[0]
        frames = clips[:, :, :, top : top + h, left : left + w].transpose(1, 2).reshape(n * t, c, h, w)
        out.copy_(_resize(frames, size).view(n, t, c, size, size).transpose(1, 2))
    else:
        for i, (top, left, h, w) in enumerate(boxes):
            out[i] = _resize(clips[i, :, :, top : top + h, left : left + w].transpose(0, 1), size).transpose(0, 1)
    flipped = [i for i, f in enumerate(flips) if f]
    if flipped:
        rows = torch.tensor(flipped, device=clips.device)
        out[rows] = out[rows].flip(-1)
    return out


def _resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, size, size); unchanged when already that size."""
    if frames.shape[-2:] == (size, size):
        return frames
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
