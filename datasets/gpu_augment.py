"""Crop, resize, flip and normalize a batch of cached uint8 clips on the device.

The CPU costs 8-10 ms per clip to turn uint8 into normalized float, more than reading a
cached clip, so the DataLoader workers of :class:`datasets.cache.CachedClipDataset` only
read bytes and draw each sample's crop box and flip (from its own seeded rng); this module
applies them to the whole batch where the model runs.

Per sample: crop ``(top, left, height, width)`` of the S x S stored frames, resize to
``size`` x ``size`` (bilinear, antialiased when shrinking: the same operation as
``torchvision.transforms.v2.functional.resized_crop`` in the video Dataset, but on float
values, so without its rounding back to uint8), flip if asked, then ImageNet
normalization for the whole batch.  Samples sharing one box (all of them in evaluation)
are resized in a single call; different boxes are resized one sample at a time: a few
dozen small kernel launches per step, negligible next to a ResNet3D step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device

__all__ = ["resized_crop_flip_normalize", "decode_jpeg_batch", "augment_on_device", "model_input"]


def _normalize_(x: torch.Tensor, mean, std) -> torch.Tensor:
    """In place: [0, 255] float (N, C, T, H, W) -> ImageNet-normalized."""
    shape = (1, len(mean), 1, 1, 1)
    mean_255 = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape) * 255
    inv_std_255 = 1.0 / (torch.tensor(std, dtype=x.dtype, device=x.device).view(shape) * 255)
    return x.sub_(mean_255).mul_(inv_std_255)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) float -> (B, C, size, size); unchanged when already that size."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


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
    n, c, t, height, width = video.shape
    boxes = [tuple(int(v) for v in b) for b in crop_boxes.tolist()]
    if len(boxes) != n or len(flips) != n:
        raise ValueError(f"{n} clips but {len(boxes)} crop boxes and {len(flips)} flips")
    for i, (top, left, h, w) in enumerate(boxes):
        if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > height or left + w > width:
            raise ValueError(f"crop box {boxes[i]} of sample {i} is outside its {height}x{width} frames")
    out = torch.empty((n, c, t, size, size), dtype=dtype, device=video.device)
    if n and all(b == boxes[0] for b in boxes):
        top, left, h, w = boxes[0]
        crop = video[:, :, :, top:top + h, left:left + w].reshape(n * c, t, h, w).to(dtype)
        out.copy_(_resize(crop, size).view(n, c, t, size, size))
    else:
        # interpolate treats (C, T, h, w) as a batch of C images with T channels: one call per clip.
        for i, (top, left, h, w) in enumerate(boxes):
            out[i] = _resize(video[i, :, :, top:top + h, left:left + w].to(dtype), size)
    flip_rows = torch.as_tensor(flips, dtype=torch.bool).nonzero().flatten().tolist()
    if flip_rows:
        rows = torch.tensor(flip_rows, device=video.device)
        out[rows] = out[rows].flip(-1)
    return _normalize_(out, mean, std)


def decode_jpeg_batch(data: torch.Tensor, lengths: torch.Tensor, num_clips: int,
                      device: torch.device | str) -> torch.Tensor:
    """Concatenated JPEG frames (uint8, on the CPU) -> uint8 (N, 3, T, S, S) on ``device``.

    All N * T frames go to one ``torchvision.io.decode_jpeg`` call: batched nvJPEG on a
    CUDA device, libjpeg on the CPU.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    frames = list(torch.split(data, lengths.tolist()))
    decoded = torch.stack(decode_jpeg(frames, mode=ImageReadMode.RGB, device=device))  # (N*T, 3, S, S)
    nt, c, h, w = decoded.shape
    return decoded.view(num_clips, nt // num_clips, c, h, w).transpose(1, 2)


def augment_on_device(batch: dict[str, Any], device: torch.device | str,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A :func:`datasets.cache.collate_cached` batch -> the model's normalized float input on ``device``.

    The uint8 clips are copied with ``non_blocking=True`` (asynchronous from pinned memory);
    JPEG batches are decoded on the device.
    """
    n = len(batch["indices"])
    if batch.get("video") is not None:
        video = batch["video"].to(device, non_blocking=True)
    elif "jpeg_data" in batch:
        video = decode_jpeg_batch(batch["jpeg_data"], batch["jpeg_lengths"], n, device)
    else:
        raise ValueError("batch has neither clips ('video') nor encoded frames ('jpeg_data')")
    return resized_crop_flip_normalize(video, batch["crop_boxes"], batch["flips"], int(batch["out_size"]),
                                       dtype=dtype)


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
