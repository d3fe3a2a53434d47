"""What a throughput run is measured on and against: versions, the GPU and its peaks, known
bad torch/cuDNN combinations, which conv3d kernels run, and the model's FLOPs.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import subprocess
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from benchmarks.gpu_peaks import lookup_peaks
from resnet3d import build_model, count_parameters_and_flops

if TYPE_CHECKING:  # type names only: train_throughput imports this module
    from benchmarks.train_throughput import Settings


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cudnn_version_text(version: int | None) -> str | None:
    if not version:
        return None
    if version >= 90000:
        return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"
    return f"{version // 1000}.{version % 1000 // 100}.{version % 100}"


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # no NVML: try the command line tool
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, peak_tflops: float | None) -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version_text(cudnn),
        "cudnn_int": cudnn,
        "cudnn_enabled": torch.backends.cudnn.enabled,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            gpu_multiprocessors=props.multi_processor_count,
            driver=_driver_version(),
        )
        found = lookup_peaks(props.name)
        if found:
            env["peaks"] = {"label": found[0], "tflops": found[1]}
    if peak_tflops:
        env["peaks"] = {"label": "--peak-tflops", "tflops": {k: peak_tflops for k in ("fp32", "tf32", "bf16", "fp16")}}
    return env


def version_warnings(env: dict) -> list[str]:
    out = []
    version = env["torch"].split("+")[0]
    cudnn = env.get("cudnn_int") or 0
    if version == "2.9.0":
        out.append(
            "torch 2.9.0 turns cuDNN off for bf16/fp16 conv3d with cuDNN >= 9.8 (native vol2col "
            "kernels: about 4x slower, far more memory; pytorch/pytorch#163581): use 2.9.1 or later"
        )
    if cudnn == 91002:
        out.append(
            "cuDNN 9.10.2 computes some large bf16 conv3d wrongly (pytorch/pytorch#163539): "
            "trust only variants whose conv check passed"
        )
    if 91002 <= cudnn < 91500:
        out.append(
            f"cuDNN {env['cudnn']}: newer torch releases turn TF32 off for conv3d with cuDNN "
            "9.10.2-9.14 (a broken kernel, pytorch/pytorch#167024), so fp32 rows may run plain "
            "fp32 and their MFU against the TF32 peak understates them"
        )
    if env.get("device", "").startswith("cuda") and not env.get("cudnn_enabled"):
        out.append("torch.backends.cudnn.enabled is False")
    for dtype, backend in (env.get("conv3d_backend") or {}).items():
        if backend != "cudnn":
            out.append(f"{dtype} conv3d does not run on cuDNN here ({backend})")
    return out


def conv3d_backend(device: torch.device) -> dict[str, str]:
    """Which kernels a 3x3x3 conv3d (forward + backward) uses, per dtype, from the profiler's op names."""
    found = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            x = torch.randn(2, 64, 8, 28, 28, device=device, dtype=dtype, requires_grad=True)
            w = torch.randn(64, 64, 3, 3, 3, device=device, dtype=dtype, requires_grad=True)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                torch.nn.functional.conv3d(x, w, padding=1).sum().backward()
                _sync(device)
            ops = {e.key for e in prof.key_averages()}
            if any("cudnn" in op for op in ops):
                found[name] = "cudnn"
            elif any("slow_conv3d" in op or "vol2col" in op for op in ops):
                found[name] = "native vol2col"
            else:
                found[name] = "unknown: " + ", ".join(sorted(op for op in ops if "conv" in op))[:120]
        except Exception as exc:  # the probe must never stop the benchmark
            found[name] = f"probe failed: {type(exc).__name__}"
    return found


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """A large bf16 matrix product's rate: the practical ceiling next to the datasheet peak."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    end.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1000) / 1e12


def analytic_conv_flops(model: nn.Module, input_shape) -> tuple[int, int]:
    """(forward FLOPs, the stem's forward FLOPs) from layer shapes: 2 x MACs of every Conv3d
    and Linear -- an independent check of FlopCounterMode's count."""
    total, per_module = 0, []
    meta = copy.deepcopy(model).to(device="meta")

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv3d):
            flops = 2 * output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            flops = 2 * inputs[0].shape[0] * module.in_features * module.out_features
        total += flops
        per_module.append(flops)

    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, (nn.Conv3d, nn.Linear))]
    with torch.no_grad():
        meta(torch.empty(tuple(input_shape), device="meta"))
    for h in handles:
        h.remove()
    return total, per_module[0]


def flop_counts(s: Settings) -> dict:
    with torch.device("meta"):
        model = build_model(depth=s.depth, tasks=s.tasks, dropout=0.0)
    # Counted at batch 2 (FLOPs are linear in the batch; training-mode BatchNorm refuses a
    # batch of one when the last stage is 1x1x1, as at --tiny sizes).
    shape = (2, 3, s.frames, s.size, s.size)
    counted = count_parameters_and_flops(model, shape)
    forward, stem = analytic_conv_flops(model, shape)
    # backward = 2 x forward for every layer, except that the stem computes no input gradient
    analytic_training = 3 * forward - stem
    return {
        "training_gflops_per_clip": counted["training_flops"] / 2e9,
        "forward_gflops_per_clip": counted["forward_flops"] / 2e9,
        "analytic_training_gflops_per_clip": analytic_training / 2e9,
        "stem_share_of_forward": stem / forward,
        "parameters": counted["parameters"],
    }
