"""Clip transforms: uint8 frames in, uint8 (C, T, H, W) model-sized clips out.

The pipeline runs in DataLoader workers on uint8 (4x less memory and copy traffic than
float); conversion to float and ImageNet normalization happen later, on the device, in
:func:`normalize_on_device`.

Evaluation (deterministic): resize the short side to ``size`` (bilinear, antialiased), then
centre-crop ``size`` x ``size``.
Training: the training augmentation of datasets/augment.py (random resized crop + horizontal
flip, drawn from the per-sample rng), applied here to the clip's decoded frames -- the same
definition the frame cache applies on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from utils.precision import IMAGENET_MEAN, IMAGENET_STD

from .augment import Augmentation, resized_crop_flip

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipTransform",
    "frames_to_tensor",
    "resize_center_crop",
    "normalize_on_device",
]


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 array -> (T, 3, H, W) uint8 tensor view (no copy)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def resize_center_crop(video: torch.Tensor, size: int) -> torch.Tensor:
    """(T, C, H, W) -> (T, C, size, size): short side to ``size``, then centre crop."""
    video = TF.resize(video, [size], antialias=True)
    return TF.center_crop(video, [size, size])


@dataclass(frozen=True)
class ClipTransform:
    """Callable ``(frames (T, H, W, 3) uint8, rng) -> uint8 tensor (3, T, size, size)``.

    ``train=False``: resize short side + centre crop (``rng`` unused, may be None).
    ``train=True``: ``augment`` drawn from ``rng`` and applied by ``resized_crop_flip``.
    Picklable, so it travels to DataLoader workers with the Dataset.
    """

    size: int = 224
    train: bool = False
    augment: Augmentation = field(default_factory=Augmentation)

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"size must be positive, got {self.size}")

    def _needs_rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        if rng is None:
            raise ValueError("a training transform needs the per-sample rng")
        return rng

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        video = frames_to_tensor(frames)  # (T, C, H, W)
        if not self.train:
            return resize_center_crop(video, self.size).permute(1, 0, 2, 3).contiguous()  # (C, T, H, W)
        box, flip = self.augment.draw(self._needs_rng(rng), video.shape[-2], video.shape[-1])
        return resized_crop_flip(video.transpose(0, 1)[None], [box], [flip], self.size)[0]


def normalize_on_device(
    video: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 clips (..., C, T, H, W) in [0, 255] -> ``dtype``, scaled to [0, 1] and normalized.

    Call it on the device after ``.to(device, non_blocking=True)``; works for a batch
    (N, C, T, H, W) and for one clip (C, T, H, W).
    """
    if video.dtype != torch.uint8:
        raise TypeError(f"expected uint8 video, got {video.dtype}")
    if video.ndim < 4 or video.shape[-4] != len(mean):
        raise ValueError(f"expected (..., {len(mean)}, T, H, W), got shape {tuple(video.shape)}")
    shape = (len(mean), 1, 1, 1)  # broadcast over the channel dim, which is -4 in both layouts
    mean_255 = torch.tensor(mean, dtype=dtype, device=video.device).view(shape) * 255
    inv_std_255 = 1.0 / (torch.tensor(std, dtype=dtype, device=video.device).view(shape) * 255)
    return (video.to(dtype) - mean_255) * inv_std_255
