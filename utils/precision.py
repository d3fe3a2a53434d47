"""Numerics every entry point shares: the autocast dtype, the ImageNet input statistics and the
one normalizer of the model's input (:func:`normalize`).

One definition for training, evaluation, prediction, feature extraction, the model logged to
MLflow and the benchmarks, so they cannot drift apart.
"""

from __future__ import annotations

import sys

import torch

# The Moments in Time models (and the earlier Lightning version's .pt clips) were normalized with these.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(
    video: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Clips (..., C, T, H, W) in [0, 255], uint8 or float -> ``dtype``, scaled to [0, 1] and
    normalized with ``mean`` / ``std``, on the clips' device.

    The one normalizer of the model's input: training and evaluation on both data paths
    (``datasets.augment.model_input``), inference, and the model logged to MLflow.  Works for a
    batch (N, C, T, H, W) and for one clip (C, T, H, W).  A float input of ``dtype`` is not
    changed (the result is a new tensor).
    """
    if video.dtype != torch.uint8 and not video.is_floating_point():
        raise TypeError(f"expected uint8 video (or float in [0, 255]), got {video.dtype}")
    if video.ndim < 4 or video.shape[-4] != len(mean):
        raise ValueError(f"expected (..., {len(mean)}, T, H, W), got shape {tuple(video.shape)}")
    shape = (len(mean), 1, 1, 1)  # broadcast over the channel dim, which is -4 in both layouts
    mean_255 = torch.tensor(mean, dtype=dtype, device=video.device).view(shape) * 255
    inv_std_255 = 1.0 / (torch.tensor(std, dtype=dtype, device=video.device).view(shape) * 255)
    x = video.to(dtype)
    x = x.sub_(mean_255) if x is not video else x - mean_255  # one new tensor either way
    return x.mul_(inv_std_255)


def resolve_amp(amp: str, device: torch.device, quiet: bool = False) -> torch.dtype | None:
    """``--amp auto|bf16|fp16|off`` -> the autocast dtype (None = full fp32).

    ``auto``: bf16 on GPUs that support it (else fp16), fp32 on a CPU.  An explicit ``bf16`` on a
    CPU is honoured, with PyTorch's oneDNN kernels turned off for the whole process: in
    torch 2.14.1, oneDNN's bf16 conv3d backward returns non-deterministic, sometimes non-finite
    gradients (and crashes on 4-frame inputs); the native kernels are slower but correct.
    """
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ValueError(f"--amp must be auto, bf16, fp16 or off, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    if dtype == torch.bfloat16 and device.type != "cuda" and torch.backends.mkldnn.enabled:
        torch.backends.mkldnn.enabled = False
        if not quiet:
            print(
                "--amp bf16 on CPU: oneDNN disabled (its bf16 conv3d backward is broken in this PyTorch "
                "build); expect slow steps",
                file=sys.stdout,
                flush=True,
            )
    return dtype


def amp_name(dtype: torch.dtype | None) -> str:
    """For logs and tags: "bf16", "fp16" or "off"."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "off")
