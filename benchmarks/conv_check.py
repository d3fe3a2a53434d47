"""Per-layer conv3d conformance: is a speed variant's arithmetic *right*?

Comparing a variant's logits with an fp32 run does not answer that for a randomly
initialised ResNet3D: its residual stack amplifies rounding, so bf16 and fp32 logits of
the same step legitimately differ by tens of percent (measured on CPU: 0.3 % after the stem,
0.5 after layer4).  Known-bad kernels (cuDNN 9.10.2 bf16 conv3d on large shapes,
pytorch/pytorch#163539) are instead caught here, one convolution at a time:

1. every distinct ``conv3d`` call of one training forward is recorded on the ``meta``
   device (input shape, weight shape, stride, padding) -- the stem wrappers' calls too;
2. for each, random input / weight / output-gradient at those exact shapes are pushed
   through forward *and* backward (input and weight gradients) in the variant's settings
   (autocast dtype, channels_last_3d, cudnn.benchmark, TF32), and
3. compared with a float64 reference computed with cuDNN off (native kernels) -- an
   implementation independent of the one under test.

The error of a tensor is max|got - ref| / max|ref|.  Correct kernels stay well inside the
tolerances below (rounding of the inputs and the output only); a broken kernel is off by
O(1).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

# Generous bounds (about 10x what rounding gives) per math precision; fp32 leaves room for
# the FFT / Winograd algorithms cudnn.benchmark may pick.
TOLERANCES: dict[str, float] = {"fp32": 1e-3, "tf32": 1e-2, "fp16": 1e-2, "bf16": 4e-2}


@dataclass(frozen=True)
class ConvCall:
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    input_grad: bool  # False for the stem: the model never asks for the clip's gradient


def _triple(value) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * 3


class _ConvRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ConvCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "conv3d":
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            bound = {**dict(zip(names, args)), **kwargs}
            self.calls.append(
                ConvCall(
                    tuple(bound["input"].shape),
                    tuple(bound["weight"].shape),
                    _triple(bound.get("stride", 1)),
                    _triple(bound.get("padding", 0)),
                    _triple(bound.get("dilation", 1)),
                    int(bound.get("groups", 1)),
                    input_grad=bool(self.calls),
                )
            )
        return func(*args, **kwargs)


def collect_conv_calls(model: nn.Module, input_shape: Sequence[int]) -> list[ConvCall]:
    """The distinct conv3d calls of one forward of ``model`` on ``input_shape`` (meta device)."""
    meta_model = copy.deepcopy(model).to(device="meta").train()
    recorder = _ConvRecorder()
    with recorder, torch.no_grad():
        meta_model(torch.empty(tuple(input_shape), device="meta"))
    distinct: dict[ConvCall, None] = {}
    for call in recorder.calls:
        distinct.setdefault(call, None)
    return list(distinct)


@contextlib.contextmanager
def _reference_math():
    """Native kernels (no cuDNN), no TF32 anywhere."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=False, benchmark=False, deterministic=False, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def _rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    diff = (got.double() - ref).abs().max().item()
    if not math.isfinite(diff):
        return math.inf
    return diff / scale if scale > 0 else diff


def check_conv_calls(
    calls: Sequence[ConvCall], device: torch.device, amp_dtype: torch.dtype | None, channels_last: bool, seed: int = 0
) -> dict:
    """Largest relative error over all calls and their output / input-grad / weight-grad.

    Runs under the caller's cudnn.benchmark / allow_tf32 settings (the variant's), so the
    kernels checked are the ones its training step picks for these shapes.
    Returns ``{"max_rel_error", "worst": "call <i> <tensor> <shapes>", "calls": n}``.
    """
    worst, worst_where = 0.0, ""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    for index, call in enumerate(calls):
        gen = torch.Generator(device=device).manual_seed(seed + index)
        fan_in = math.prod(call.weight_shape[1:])
        x = torch.randn(call.input_shape, generator=gen, device=device, dtype=torch.float64)
        w = torch.randn(call.weight_shape, generator=gen, device=device, dtype=torch.float64)
        w = w * math.sqrt(2.0 / fan_in)
        conv_args = (None, call.stride, call.padding, call.dilation, call.groups)
        with _reference_math():
            xr, wr = x.clone().requires_grad_(call.input_grad), w.clone().requires_grad_(True)
            out_ref = F.conv3d(xr, wr, *conv_args)
            grad_out = torch.randn(out_ref.shape, generator=gen, device=device, dtype=torch.float64)
            refs = torch.autograd.grad(out_ref, [t for t in (xr, wr) if t.requires_grad], grad_out)
        expected = {
            "output": out_ref.detach(),
            **dict(zip([n for n, t in (("input_grad", xr), ("weight_grad", wr)) if t.requires_grad], refs)),
        }
        del xr, wr, out_ref, refs

        xv = x.float().contiguous(memory_format=fmt).requires_grad_(call.input_grad)
        wv = w.float().contiguous(memory_format=fmt).requires_grad_(True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = F.conv3d(xv, wv, *conv_args)
        grads = torch.autograd.grad(
            out, [t for t in (xv, wv) if t.requires_grad], grad_out.to(out.dtype).contiguous(memory_format=fmt)
        )
        got = {
            "output": out.detach(),
            **dict(zip([n for n, t in (("input_grad", xv), ("weight_grad", wv)) if t.requires_grad], grads)),
        }
        for name, ref in expected.items():
            err = _rel_error(got[name], ref)
            if err > worst or not worst_where:
                worst = err
                worst_where = (
                    f"conv {index} {name}: input {list(call.input_shape)} weight "
                    f"{list(call.weight_shape)} stride {list(call.stride)}"
                )
        del x, w, grad_out, expected, xv, wv, out, grads, got
    return {"max_rel_error": worst, "worst": worst_where, "calls": len(calls)}
