"""The model's input on the device: normalization, and for the frame cache the training
augmentation (datasets/augment.py) applied to the whole batch.

The CPU costs 8-10 ms per clip to turn uint8 into normalized float, more than reading a
cached clip, so the reader threads of :class:`datasets.cache_loader.CacheLoader` only
read bytes and draw each sample's crop box and flip (``Augmentation.draw``, from its own
seeded rng); this module applies them with ``resized_crop_flip`` -- the function the video
path applies in its workers -- on float values (no rounding back to uint8), then ImageNet
normalization for the whole batch.
"""

from __future__ import annotations

from typing import Any

import torch

from .augment import resized_crop_flip
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device

__all__ = ["resized_crop_flip_normalize", "augment_on_device", "model_input"]


def _normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """In place: [0, 255] float (N, C, T, H, W) -> ImageNet-normalized."""
    shape = (1, len(mean), 1, 1, 1)
    mean_255 = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape) * 255
    inv_std_255 = 1.0 / (torch.tensor(std, dtype=x.dtype, device=x.device).view(shape) * 255)
    return x.sub_(mean_255).mul_(inv_std_255)


def resized_crop_flip_normalize(
    video: torch.Tensor,
    crop_boxes: torch.Tensor,
    flips: torch.Tensor,
    size: int,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (N, C, T, S, S) on any device -> ``dtype`` (N, C, T, size, size), normalized.

    ``crop_boxes``: int (N, 4) rows (top, left, height, width) inside the S x S frame;
    ``flips``: bool (N,).  Both are small and best left on the CPU (reading them there
    needs no device sync).  Every frame of a clip gets its clip's box and flip.
    """
    if video.dtype != torch.uint8 or video.ndim != 5:
        raise ValueError(f"expected uint8 clips (N, C, T, H, W), got {video.dtype} {tuple(video.shape)}")
    return _normalize_(resized_crop_flip(video.to(dtype), crop_boxes, flips, size), mean, std)


def augment_on_device(
    batch: dict[str, Any], device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A :func:`datasets.cache.collate_cached` batch -> the model's normalized float input on ``device``.

    The uint8 clips are copied with ``non_blocking=True`` (asynchronous from pinned memory).
    """
    if batch.get("video") is None:
        raise ValueError("batch has no clips ('video' is None: every clip in it failed)")
    video = batch["video"].to(device, non_blocking=True)
    return resized_crop_flip_normalize(video, batch["crop_boxes"], batch["flips"], int(batch["out_size"]), dtype=dtype)


def model_input(batch: dict[str, Any], device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """A collated batch -> the model's input on ``device``: uint8 clips become ImageNet-normalized
    float there (the workers never do float work); frame-cache batches (``crop_boxes``) are also
    cropped, resized and flipped there.  The training loop and the throughput benchmark both call it."""
    if "crop_boxes" in batch:
        x = augment_on_device(batch, device)
    else:
        x = normalize_on_device(batch["video"].to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x
