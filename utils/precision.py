"""Numerics every entry point shares: the autocast dtype and the ImageNet input statistics.

One definition for training, evaluation, prediction, feature extraction, the model logged to
MLflow and the benchmarks, so they cannot drift apart.
"""

from __future__ import annotations

import sys

import torch

# The Moments in Time models (and the earlier Lightning version's .pt clips) were normalized with these.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


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
