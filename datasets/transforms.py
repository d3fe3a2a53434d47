"""Clip transforms: uint8 frames in, uint8 (C, T, H, W) model-sized clips out.

The pipeline runs in DataLoader workers on uint8 (4x less memory and copy traffic than
float); conversion to float and ImageNet normalization happen later, on the device, in
:func:`normalize_on_device`.

Evaluation (deterministic):
    resize the short side to ``size`` (bilinear, antialiased), then centre-crop
    ``size`` x ``size``.
Training (parameters from the per-sample numpy rng; one draw per clip, so every frame
of a clip gets the same crop and flip and motion stays coherent):
    random resized crop: a box covering a fraction of the frame area drawn uniformly from
    ``crop_scale`` (default 0.6-1.0) with aspect ratio w/h log-uniform in ``crop_ratio``
    (default 3/4-4/3) is resized to ``size`` x ``size``.  The area range is milder than the
    ImageNet default (0.08-1) on purpose: people count and distance are spatial labels, and
    a small crop can cut people out of the picture and make the label false.
    Then a horizontal flip with probability ``flip_p`` (0.5).  Flips keep every label
    true (facingness and distance do not depend on left/right).
Legacy ``.pt`` clips (float, already normalized, already model-sized): evaluation leaves
them unchanged; training applies only the horizontal flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_CROP_SCALE",
    "DEFAULT_CROP_RATIO",
    "ClipTransform",
    "frames_to_tensor",
    "resize_center_crop",
    "sample_resized_crop_box",
    "normalize_on_device",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
DEFAULT_CROP_SCALE: tuple[float, float] = (0.6, 1.0)
DEFAULT_CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 array -> (T, 3, H, W) uint8 tensor view (no copy)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def resize_center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """(T, C, H, W) -> (T, C, size, size): short side to ``size``, then centre crop."""
    video = TF.resize(video, [size], antialias=True)
    return TF.center_crop(video, [size, size])


def sample_resized_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[int, int, int, int]:
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


@dataclass(frozen=True)
class ClipTransform:
    """Callable ``(frames (T, H, W, 3) uint8, rng) -> uint8 tensor (3, T, size, size)``.

    ``train=False``: resize short side + centre crop (``rng`` unused, may be None).
    ``train=True``: random resized crop + horizontal flip drawn from ``rng``.
    Picklable, so it travels to DataLoader workers with the Dataset.
    """

    size: int = 224
    train: bool = False
    crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE
    crop_ratio: tuple[float, float] = DEFAULT_CROP_RATIO
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < lo <= hi, got {self.crop_ratio}")

    def _needs_rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        if rng is None:
            raise ValueError("a training transform needs the per-sample rng")
        return rng

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        video = frames_to_tensor(frames)
        if not self.train:
            video = resize_center_crop(video, self.size)
        else:
            rng = self._needs_rng(rng)
            top, left, box_h, box_w = sample_resized_crop_box(
                video.shape[-2], video.shape[-1], self.crop_scale, self.crop_ratio, rng
            )
            video = TF.resized_crop(video, top, left, box_h, box_w, [self.size, self.size], antialias=True)
            if rng.random() < self.flip_p:
                video = TF.horizontal_flip(video)
        return video.permute(1, 0, 2, 3).contiguous()  # (T, C, H, W) -> (C, T, H, W)

    def legacy(self, video: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Transform for legacy pre-normalized float clips (3, T, H, W): flip only, in training."""
        if self.train and self._needs_rng(rng).random() < self.flip_p:
            video = video.flip(-1)
        return video.contiguous()


def normalize_on_device(
    video: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 clips (..., C, T, H, W) in [0, 255] -> ``dtype``, scaled to [0, 1] and normalized.

    Call it on the device after ``.to(device, non_blocking=True)``; works for a batch
    (N, C, T, H, W) and for one clip (C, T, H, W).  Floating-point input is returned as is:
    it comes from legacy ``.pt`` clips that were normalized when they were made.
    """
    if video.is_floating_point():
        return video
    if video.dtype != torch.uint8:
        raise TypeError(f"expected uint8 or floating-point video, got {video.dtype}")
    if video.ndim < 4 or video.shape[-4] != len(mean):
        raise ValueError(f"expected (..., {len(mean)}, T, H, W), got shape {tuple(video.shape)}")
    shape = (len(mean), 1, 1, 1)  # broadcast over the channel dim, which is -4 in both layouts
    mean_255 = torch.tensor(mean, dtype=dtype, device=video.device).view(shape) * 255
    inv_std_255 = 1.0 / (torch.tensor(std, dtype=dtype, device=video.device).view(shape) * 255)
    return (video.to(dtype) - mean_255) * inv_std_255
