#!/usr/bin/env python3
"""How fast is train_ddp.py's training step on this device: clips/s, ms per step, data wait,
peak memory and MFU per variant, and whether each variant's convolutions compute the right thing.

    python benchmarks/train_step.py --tiny                      # CPU smoke run (CI does this)
    python benchmarks/train_step.py --time-budget 390 --json steps.jsonl   # a GPU, default variants
    python benchmarks/train_step.py --variants bf16+cl+bench,bf16+cl+bench+compile@32

Every timed step is the loop's own: the objects come from ``train_ddp.build_training`` (model,
loss, optimizer, LR schedule, GradScaler, non-finite guard) and each step calls
``train_ddp.plan_step``, ``settle``, ``set_learning_rates`` and ``train_step`` as
``train_one_epoch`` does on one process.  Dropout 0 and a constant LR make every variant's
step the same computation.

A variant is a precision, then ``+`` flags, then an optional ``@batch``:
  fp32 | bf16 | fp16   autocast dtype (fp16 with GradScaler); fp32 allows TF32, as train_ddp.py
  cl                   channels_last_3d (model and input)
  bench                torch.backends.cudnn.benchmark
  compile              torch.compile (as train_ddp.py --compile)
  pad4 | pad8          the zero-padded stem (build_model(stem_channels=4 or 8), resnet3d/stem.py)
  cache                fed by the frame cache through the loop's loader (data wait measured):
                       a raw cache of generated clips, or --cache DIR --annotations CSV
Synthetic rows train on uint8 clips held on the device: the step alone.

On a GPU each variant runs in its own process, so an out-of-memory error, a crash or a hang
costs one row; the rows run in priority order, each is printed (and appended to ``--json``)
as it finishes, and a row that would end past ``--time-budget`` is SKIPPED.  After timing,
every distinct convolution of the step is re-run at its real shapes in the variant's settings
and compared with a float64 reference computed without cuDNN; a variant outside its
precision's tolerance is WRONG (cuDNN has shipped conv3d kernels with wrong results).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # `python benchmarks/train_step.py` puts benchmarks/, not the repo root, on sys.path; the
    # root must come first so that our `datasets`/`utils` win over PyPI packages.
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

import train_ddp  # noqa: E402  (the loop's own step, not a copy)
from resnet3d import build_model, count_parameters_and_flops  # noqa: E402
from resnet3d.stem import ChannelPaddedConv3d  # noqa: E402
from utils.config import TrainConfig  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from utils.tasks import output_sizes, parse_tasks  # noqa: E402
from utils.train_state import LogWindow, TrainState  # noqa: E402

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
STEMS = {"pad4": 4, "pad8": 8}
FLAGS = {"cl": "channels_last", "bench": "cudnn_benchmark", "compile": "compile"}
TINY = dict(depth=18, frames=4, size=32, batch_size=2, warmup=1, steps=2, num_workers=1)
TINY_VARIANTS = ["fp32", "fp32+cl", "bf16", "fp32+pad8", "fp32+cache"]


def default_gpu_variants(batch_size: int) -> list[str]:
    """Most important first: a --time-budget cut drops the rows at the end."""
    return [
        "fp32",  # no speed knob: every speed-up is against this row
        "bf16+cl+bench",  # train_ddp.py's GPU defaults
        "bf16+cl+bench+cache",  # does the frame cache keep up with them?
        "bf16+cl+bench+compile",
        "bf16",
        "bf16+cl",  # AMP alone, then channels_last_3d; bench is the step to the defaults
        "fp16+cl+bench",
        "bf16+cl+bench+pad8",
        "bf16+cl+bench+pad4",  # the stem option
        f"bf16+cl+bench@{2 * batch_size}",
    ]


@dataclass(frozen=True)
class Variant:
    dtype: str = "fp32"  # the autocast dtype
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    stem_channels: int = 3
    cache: bool = False  # fed by the frame cache instead of synthetic clips on the device
    batch_size: int | None = None  # None: the run's --batch-size

    @property
    def name(self) -> str:
        parts = [self.dtype] + [flag for flag, field in FLAGS.items() if getattr(self, field)]
        parts += [stem for stem, channels in STEMS.items() if channels == self.stem_channels]
        parts += ["cache"] if self.cache else []
        return "+".join(parts) + (f"@{self.batch_size}" if self.batch_size else "")


def parse_variant(spec: str) -> Variant:
    """``"bf16+cl+bench+pad8@32"`` -> Variant, or a ValueError naming what is wrong."""
    text, _, batch = spec.strip().partition("@")
    head, *flags = [t.strip() for t in text.split("+")]
    if head not in AMP_DTYPES:
        raise ValueError(f"variant {spec!r}: must start with fp32, bf16 or fp16, not {head!r}")
    variant = Variant(dtype=head)
    for flag in flags:
        if flag in FLAGS:
            variant = replace(variant, **{FLAGS[flag]: True})
        elif flag in STEMS:
            variant = replace(variant, stem_channels=STEMS[flag])
        elif flag == "cache":
            variant = replace(variant, cache=True)
        else:
            known = ", ".join([*FLAGS, *STEMS, "cache"])
            raise ValueError(f"variant {spec!r}: unknown flag {flag!r}; flags are {known}")
    if batch:
        if not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"variant {spec!r}: @ must be followed by a batch size")
        variant = replace(variant, batch_size=int(batch))
    return variant


@dataclass
class Settings:
    """Everything a variant's run needs besides the variant (sent to each child as JSON)."""

    device: str
    depth: int = 50
    frames: int = 16
    size: int = 224
    batch_size: int = 16
    warmup: int = 5
    steps: int = 20
    tasks: str = "all"
    seed: int = 0
    num_workers: int = TrainConfig().num_workers
    prefetch_factor: int = TrainConfig().prefetch_factor
    cache: str | None = None  # a real frame cache (with annotations); None: generated clips
    annotations: str | None = None
    work_dir: str = str(REPO_ROOT / ".cache" / "train_step")
    conv_check: bool = True


# ------------------------------------------------------------------------------------------
# the loop's step
# ------------------------------------------------------------------------------------------
@dataclass
class BenchState:
    t: train_ddp.Training
    state: TrainState
    window: LogWindow
    info: DistInfo


def build_state(variant: Variant, s: Settings, device: torch.device) -> BenchState:
    """train_ddp.build_training() + start_epoch() for one process, in the variant's settings."""
    cfg = TrainConfig(
        depth=s.depth,
        frames=s.frames,
        size=s.size,
        batch_size=variant.batch_size or s.batch_size,
        tasks=s.tasks,
        seed=s.seed,
        dropout=0.0,
        schedule="constant",
        warmup_steps=0,
        max_nonfinite_skips=10**9,  # a benchmark counts non-finite steps, it never stops for them
        compile=variant.compile,
        output_dir=tempfile.gettempdir(),
    )
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=device, backend=None)
    torch.manual_seed(s.seed)  # the same initial weights in every variant's process
    t = train_ddp.build_training(
        cfg, parse_tasks(s.tasks), 10**6, 10**6, info, AMP_DTYPES[variant.dtype], variant.channels_last
    )
    if variant.stem_channels != 3:
        # build_model(stem_channels=C)'s stem around the same conv1.weight Parameter, so the
        # optimizer and the buffer snapshot that build_training made stay valid.
        t.model.conv1 = ChannelPaddedConv3d.from_conv(t.model.conv1, variant.stem_channels)
    state = TrainState()
    train_ddp.start_epoch(t, state, cfg, info)  # the loop's wrapping (compile) and training mode
    window = LogWindow(t.loss_fn.tasks, t.loss_fn.task_weights, device, log_every=10**9, total_steps=10**9)
    return BenchState(t, state, window, info)


def bench_step(bs: BenchState, batch: dict) -> train_ddp.StepResult:
    """What train_ddp.train_one_epoch() does for one step of one micro-batch on one process."""
    plan = train_ddp.plan_step([batch], bs.t, False, bs.info)
    train_ddp.settle(bs.t, bs.state, plan.last_step_nonfinite)
    bs.window.lrs = train_ddp.set_learning_rates(bs.t, bs.state.epoch)
    result = train_ddp.train_step(bs.t, [batch], plan.denominators, bs.state)
    bs.state.step += 1
    bs.window.add_step(
        result.loss_sums, result.loss_counts, result.grad_norm, result.applied, clips=len(batch["indices"])
    )
    return result


def apply_backend_flags(variant: Variant, device: torch.device) -> None:
    if device.type == "cuda":  # as train_ddp.configure_device: TF32 on, benchmark per variant
        torch.backends.cudnn.benchmark = variant.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:  # as train_ddp.resolve_amp: oneDNN's bf16 conv3d backward is wrong on CPUs
        torch.backends.mkldnn.enabled = variant.dtype != "bf16"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(variant: Variant, s: Settings, steps: int = 10, warmup: int = 3) -> float:
    """Clips/s of the step alone on synthetic clips: what a data loader has to keep up with."""
    device = torch.device(s.device)
    apply_backend_flags(variant, device)
    bs = build_state(variant, s, device)
    batch = synthetic_batch(s, variant.batch_size or s.batch_size, device)
    for _ in range(warmup):
        bench_step(bs, batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        bench_step(bs, batch)
    sync(device)
    return steps * len(batch["indices"]) / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------
def synthetic_targets(n: int, tasks, seed: int) -> dict[str, np.ndarray]:
    """Valid targets of every head output, with missing values (NaN / -1) like the real table."""
    rng = np.random.default_rng(seed)
    targets: dict[str, np.ndarray] = {}
    for name in output_sizes(tasks):
        if name == "peoplecount":
            values = rng.integers(0, 5, n).astype(np.int64)
            values[rng.random(n) < 0.1] = -1
        elif name in ("location_score", "peoplecount_certain"):
            values = rng.integers(0, 2, n).astype(np.float32)
            values[rng.random(n) < 0.1] = np.nan
        elif name.endswith("_score"):
            values = (rng.integers(0, 11, n) / 10).astype(np.float32)
            values[rng.random(n) < 0.15] = np.nan
        else:  # confidences: never missing in cleaned tables
            values = (rng.integers(0, 11, n) / 10).astype(np.float32)
        targets[name] = values
    return targets


def synthetic_batch(s: Settings, batch_size: int, device: torch.device) -> dict:
    """uint8 clips on the device (the same bytes in every process) in the loader's batch format."""
    gen = torch.Generator().manual_seed(s.seed + 1)
    video = torch.randint(0, 256, (batch_size, 3, s.frames, s.size, s.size), dtype=torch.uint8, generator=gen)
    targets = synthetic_targets(batch_size, parse_tasks(s.tasks), s.seed + 2)
    return {
        "video": video.to(device),
        "targets": {k: torch.from_numpy(v) for k, v in targets.items()},
        "indices": torch.arange(batch_size),
        "video_ids": [f"synthetic_{i}" for i in range(batch_size)],
        "bad": [],
    }


def generated_cache(s: Settings, clips: int) -> tuple[Path, list[str], dict[str, np.ndarray]]:
    """A raw frame cache of ``clips`` generated H.264 clips, made once with datasets.prepare's
    code.  A raw cache's read cost depends on its bytes, not on what the frames show."""
    from datasets.prepare import prepare_cache
    from datasets.video import write_video

    stored = max(s.size, round(s.size * 256 / 224))  # prepare's default 256 for 224 crops
    folder = Path(s.work_dir) / f"clips-{clips}-{s.frames}x{stored}"
    names = [f"clip_{i:04d}.mp4" for i in range(clips)]
    root = folder / "cache"
    if not (root / "COMPLETE").exists():
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(s.seed)
        for name in names:
            side = stored + stored % 2  # H.264's 4:2:0 needs even sides; prepare resizes
            frames = rng.integers(0, 256, (s.frames, side, side, 3), dtype=np.uint8)
            write_video(folder / name, frames, fps=30, options={"preset": "ultrafast"})
        workers = max(0, min(8, (os.cpu_count() or 1) - 1))
        prepare_cache(
            root,
            names,
            str(folder),
            frames=s.frames,
            stored_size=stored,
            workers=workers,
            progress=False,
            log=lambda *_: None,
        )
        (root / "COMPLETE").write_text("done\n")
    return root, names, synthetic_targets(clips, parse_tasks(s.tasks), s.seed)


def cache_batches(s: Settings, batch_size: int, n_batches: int, device: torch.device):
    """(iterator over ``n_batches`` batches from the frame cache, description, the loader), built as
    train_ddp.py builds its --cache loader (datasets.make_loader: reader threads for a raw cache)."""
    import datasets as data

    tasks = parse_tasks(s.tasks)
    if s.annotations or s.cache:
        if not (s.annotations and s.cache):
            raise SystemExit("--cache DIR and --annotations CSV go together (the cached videos' targets)")
        table, _ = data.load_annotation_table(s.annotations, tasks=tasks)
        root, names, targets = s.cache, table["video_name"].tolist(), data.build_targets(table, tasks)
        what = f"frame cache {s.cache}"
    else:
        root, names, targets = generated_cache(s, max(batch_size, 16))
        what = f"raw frame cache of {len(names)} generated clips"
    dataset = data.CachedClipDataset(
        root,
        video_names=names,
        targets=targets,
        num_frames=s.frames,
        size=s.size,
        train=True,
        seed=s.seed,
        augment=train_ddp.TRAIN_AUGMENTATION,  # the loop's own crops and flips
    )
    # the clips cycle to fill n_batches, each pass another epoch: fresh augmentation each time
    order = [(i // len(dataset), i % len(dataset)) for i in range(batch_size * n_batches)]
    loader = data.make_loader(
        dataset,
        order,
        batch_size,
        workers=s.num_workers,
        prefetch=s.prefetch_factor,
        pin_memory=device.type == "cuda",
        drop_last=True,
        collate_fn=data.collate_cached,
    )
    return iter(loader), f"{what}; {s.num_workers} readers x prefetch {s.prefetch_factor}", loader


# ------------------------------------------------------------------------------------------
# the convolution check
# ------------------------------------------------------------------------------------------
# About 10x what rounding gives per math precision; fp32 leaves room for the FFT / Winograd
# algorithms cudnn.benchmark may pick.  A wrong kernel is off by O(1).
TOLERANCES = {"fp32": 1e-3, "tf32": 1e-2, "fp16": 1e-2, "bf16": 4e-2}


@dataclass(frozen=True)
class ConvCall:
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    input_grad: bool  # False for the stem: the model never asks for the clip's gradient


class _ConvRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ConvCall] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") == "conv3d":
            bound = {**dict(zip(("input", "weight", "bias", "stride", "padding"), args)), **kwargs}
            triple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * 3  # noqa: E731
            self.calls.append(
                ConvCall(
                    tuple(bound["input"].shape),
                    tuple(bound["weight"].shape),
                    triple(bound.get("stride", 1)),
                    triple(bound.get("padding", 0)),
                    input_grad=bool(self.calls),
                )
            )
        return func(*args, **kwargs)


def collect_conv_calls(model: nn.Module, input_shape) -> list[ConvCall]:
    """The distinct conv3d calls of one training forward of ``model`` (on the meta device)."""
    meta = copy.deepcopy(model).to(device="meta").train()
    recorder = _ConvRecorder()
    with recorder, torch.no_grad():
        meta(torch.empty(tuple(input_shape), device="meta"))
    return list(dict.fromkeys(recorder.calls))


def _rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    diff = (got.double() - ref).abs().max().item()
    if not math.isfinite(diff):
        return math.inf
    return diff / scale if scale > 0 else diff


def check_conv_calls(calls, device: torch.device, amp_dtype, channels_last: bool, seed: int = 0) -> dict:
    """Largest relative error (max|got - ref| / max|ref|) of the output, input gradient and weight
    gradient of every call, run in the caller's cuDNN settings (the variant's kernels), against
    float64 computed with cuDNN off: an implementation independent of the one under test."""
    worst, where = 0.0, ""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    for index, call in enumerate(calls):
        gen = torch.Generator(device=device).manual_seed(seed + index)
        x = torch.randn(call.input_shape, generator=gen, device=device, dtype=torch.float64)
        w = torch.randn(call.weight_shape, generator=gen, device=device, dtype=torch.float64)
        w = w * math.sqrt(2.0 / math.prod(call.weight_shape[1:]))
        conv_args = (None, call.stride, call.padding)
        with torch.backends.cudnn.flags(enabled=False, benchmark=False, deterministic=False, allow_tf32=False):
            xr, wr = x.clone().requires_grad_(call.input_grad), w.clone().requires_grad_(True)
            out_ref = F.conv3d(xr, wr, *conv_args)
            grad_out = torch.randn(out_ref.shape, generator=gen, device=device, dtype=torch.float64)
            wanted = [t for t in (xr, wr) if t.requires_grad]
            expected = [out_ref.detach(), *torch.autograd.grad(out_ref, wanted, grad_out)]
        xv = x.float().contiguous(memory_format=fmt).requires_grad_(call.input_grad)
        wv = w.float().contiguous(memory_format=fmt).requires_grad_(True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = F.conv3d(xv, wv, *conv_args)
        wanted = [t for t in (xv, wv) if t.requires_grad]
        got = [out.detach(), *torch.autograd.grad(out, wanted, grad_out.to(out.dtype).contiguous(memory_format=fmt))]
        names = ["output", "input_grad", "weight_grad"] if call.input_grad else ["output", "weight_grad"]
        for name, g, ref in zip(names, got, expected):
            err = _rel_error(g, ref)
            if err > worst or not where:
                worst = err
                where = f"conv {index} {name}: input {list(call.input_shape)} weight {list(call.weight_shape)}"
        del x, w, xr, wr, out_ref, grad_out, expected, xv, wv, out, got
    return {"max_rel_error": worst, "worst": where, "calls": len(calls)}


# ------------------------------------------------------------------------------------------
# FLOPs and peaks (MFU)
# ------------------------------------------------------------------------------------------
# Dense vendor datasheet TFLOP/s at boost clock (the datasheets print the 2:4-sparse figure,
# twice these); "tf32" is fp32 math on tensor cores (train_ddp.py allows TF32).  The more
# specific names come first: torch names an SXM H100 "NVIDIA H100 80GB HBM3".
_H100_SXM = {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}
_HOPPER_NVL = {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}
PEAKS: list[tuple[tuple[str, ...], str, dict[str, float]]] = [
    (("H100", "PCIE"), "H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0}),
    (("H100", "NVL"), "H100 NVL", _HOPPER_NVL),
    (("H200", "NVL"), "H200 NVL", _HOPPER_NVL),
    (("GH200",), "GH200", _H100_SXM),
    (("H200",), "H200 SXM", _H100_SXM),
    (("H100",), "H100 SXM", _H100_SXM),
    (("A100",), "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
]


def lookup_peaks(device_name: str) -> tuple[str, dict[str, float]] | None:
    """(the table's name for the GPU, {precision: dense TFLOP/s}), or None for an unknown GPU."""
    upper = device_name.upper()
    return next(((label, dict(p)) for needles, label, p in PEAKS if all(n in upper for n in needles)), None)


def math_precision(dtype: str, on_gpu: bool) -> str:
    """The precision a variant's convolutions run in: fp32 runs as TF32 on GPUs (train_ddp.py allows it)."""
    return "tf32" if dtype == "fp32" and on_gpu else dtype


def training_gflops_per_clip(s: Settings) -> float:
    """Counted forward + backward FLOPs of the plain model (a padded stem's zeros are no work)."""
    with torch.device("meta"):
        model = build_model(depth=s.depth, tasks=s.tasks, dropout=0.0)
    # counted at batch 2 (FLOPs are linear in the batch; training BatchNorm refuses one clip
    # when layer4's grid is 1x1x1, as at --tiny sizes)
    return count_parameters_and_flops(model, (2, 3, s.frames, s.size, s.size))["training_flops"] / 2e9


# ------------------------------------------------------------------------------------------
# one variant (on a GPU in a process of its own)
# ------------------------------------------------------------------------------------------
def run_variant(variant: Variant, s: Settings) -> dict:
    """Warm up, time, measure memory, check the convolutions: the row's figures."""
    device = torch.device(s.device)
    on_gpu = device.type == "cuda"
    batch_size = variant.batch_size or s.batch_size
    t_start = time.perf_counter()
    apply_backend_flags(variant, device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    bs = build_state(variant, s, device)
    row: dict[str, Any] = {}
    warmup, loader = s.warmup, None
    if variant.cache:
        # the readers prefetch workers x prefetch batches: warming up through that many more
        # steps starts the timing from the loader's steady state, not from a full queue
        warmup += s.num_workers * s.prefetch_factor
        batches, row["input"], loader = cache_batches(s, batch_size, warmup + s.steps, device)
    else:
        fixed = synthetic_batch(s, batch_size, device)
        batches, row["input"] = iter(lambda: fixed, None), "synthetic uint8 clips on the device"

    t0 = time.perf_counter()
    applied = []  # device bools, read once after the timing as the loop reads them: rarely
    for i in range(warmup):
        applied.append(bench_step(bs, next(batches)).applied)
        if i == 0:
            sync(device)
            row["first_step_s"] = time.perf_counter() - t0  # autotuning and compilation included
    sync(device)
    row["warmup_s"] = time.perf_counter() - t0

    data_s, t_timed = 0.0, time.perf_counter()
    for _ in range(s.steps):
        t_data = time.perf_counter()
        batch = next(batches)
        data_s += time.perf_counter() - t_data
        applied.append(bench_step(bs, batch).applied)
    sync(device)
    total = time.perf_counter() - t_timed
    row.update(
        batch=batch_size,
        clips_per_s=batch_size * s.steps / total,
        step_ms=1000 * total / s.steps,
        data_wait=data_s / total,
        nonfinite_steps=int((~torch.stack(applied)).sum().item()) if applied else 0,
        peak_mem_gb=torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None,
    )
    calls = collect_conv_calls(bs.t.model, (batch_size, 3, s.frames, s.size, s.size))
    del bs, batches, applied, loader  # the loader's reader threads stop before the check
    if on_gpu:
        torch.cuda.empty_cache()
    if s.conv_check:
        precision = math_precision(variant.dtype, on_gpu)
        check = check_conv_calls(calls, device, AMP_DTYPES[variant.dtype], variant.channels_last, s.seed)
        row["conv_check"] = {**check, "tolerance": TOLERANCES[precision], "precision": precision}
    if variant.compile:
        torch._dynamo.reset()  # in one process (--isolate off) the next variant compiles afresh
    row["wall_s"] = time.perf_counter() - t_start
    return row


def child_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    try:
        result, code = run_variant(Variant(**spec["variant"]), Settings(**spec["settings"])), 0
    except BaseException as exc:  # the row's error; the parent goes on with the next row
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        print(result["traceback"], file=sys.stderr, flush=True)
        code = 1
    Path(out_path).write_text(json.dumps(result))
    return code


def run_isolated(cmd: list[str], timeout: float) -> tuple[dict | None, str | None]:
    """Run ``cmd`` (a child that writes JSON to its last argument) in a process group of its own.
    Returns (result, None) or (what the child wrote or None, the crash signal / timeout / status)."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and its loader's processes
        proc.wait()
        return None, f"TIMEOUT after {timeout:.0f} s"
    result = None
    with contextlib.suppress(OSError, ValueError):
        result = json.loads(Path(cmd[-1]).read_text())
    if code < 0:
        return result, f"CRASHED ({signal.Signals(-code).name})"
    if code != 0 or result is None:
        return result, (result or {}).get("error") or f"exit status {code}"
    return result, None


# ------------------------------------------------------------------------------------------
# the parent: rows in priority order, within the budget, reported as they finish
# ------------------------------------------------------------------------------------------
def finish_row(row: dict, variant: Variant, gflops: float, peaks: dict | None, on_gpu: bool, base: dict | None) -> dict:
    """The row's name and status (OK, WRONG from the conv check, or the failure), MFU, speed-up."""
    row = {"name": variant.name, **asdict(variant), **row}
    if row.get("error"):
        row.setdefault("status", "ERROR")
        return row
    conv = row.get("conv_check")
    row["status"] = "WRONG" if conv and not conv["max_rel_error"] <= conv["tolerance"] else "OK"
    row["mfu_precision"] = math_precision(variant.dtype, on_gpu)
    peak = (peaks or {}).get(row["mfu_precision"])
    row["mfu"] = row["clips_per_s"] * gflops / 1e3 / peak if peak else None
    if base and base.get("clips_per_s"):
        row["speedup"] = row["clips_per_s"] / base["clips_per_s"]
    return row


COLUMNS = ("variant", "clips/s", "ms/step", "x fp32", "data wait", "peak GB", "MFU", "conv err", "status")


def table_line(row: dict) -> str:
    def num(key: str, fmt: str) -> str:
        return "-" if row.get(key) is None else format(row[key], fmt)

    conv = (row.get("conv_check") or {}).get("max_rel_error")
    mfu = row.get("mfu")
    status = row["status"] + (f" ({row['error'].splitlines()[0][:80]})" if row.get("error") else "")
    cells = [
        row["name"],
        num("clips_per_s", ".2f"),
        num("step_ms", ".1f"),
        num("speedup", ".2f"),
        "-" if row.get("data_wait") is None else f"{100 * row['data_wait']:.1f}%",
        num("peak_mem_gb", ".1f"),
        "-" if mfu is None else f"{100 * mfu:.1f}% {row['mfu_precision']}",
        "-" if conv is None else f"{conv:.1e}",
        status,
    ]
    return "| " + " | ".join(cells) + " |"


def train_ddp_flags(row: dict) -> str:
    """The train_ddp.py options that run a row's variant (the padded stem has none yet)."""
    amp = "off" if row["dtype"] == "fp32" else row["dtype"]
    return (
        f"--amp {amp} --channels-last {'on' if row['channels_last'] else 'off'} "
        + ("--cudnn-benchmark" if row["cudnn_benchmark"] else "--no-cudnn-benchmark")
        + (" --compile" if row["compile"] else "")
    )


def environment(device: torch.device) -> dict:
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    env: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return env


def known_problems(env: dict) -> list[str]:
    out = []
    if env["torch"].split("+")[0] == "2.9.0" and env["device"].startswith("cuda"):
        out.append("torch 2.9.0 runs bf16/fp16 conv3d without cuDNN (pytorch/pytorch#163581): far slower")
    if env.get("cudnn") == 91002:
        out.append("cuDNN 9.10.2 computes some bf16 conv3d wrongly (pytorch/pytorch#163539): trust OK rows only")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke size: ResNet3D-18, 4 x 32^2, batch 2, 1 + 2 steps")
    p.add_argument("--device", default="auto", help="auto (cuda if there is one), cpu, cuda, cuda:N")
    p.add_argument("--variants", default="default", help="default, or a comma list such as fp32,bf16+cl+bench")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16, help="clips per step (a variant's @N overrides it)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (autotuning, compilation)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="append one JSON line per row here, as each finishes")
    p.add_argument("--time-budget", type=float, default=None, help="seconds: start no row that would end later")
    p.add_argument("--variant-timeout", type=float, default=480, help="seconds before a row's process is killed")
    p.add_argument(
        "--isolate",
        choices=("auto", "on", "off"),
        default="auto",
        help="a process per row (auto: on GPUs, where an out-of-memory error or a hang must cost one row)",
    )
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU on a GPU not in the table")
    p.add_argument("--no-conv-check", action="store_true", help="skip the float64 convolution check")
    g = p.add_argument_group("cache rows")
    g.add_argument("--num-workers", type=int, default=Settings.num_workers, help="reader threads (train_ddp.py's)")
    g.add_argument("--prefetch-factor", type=int, default=Settings.prefetch_factor)
    g.add_argument("--cache", default=None, help="a real frame cache (datasets.prepare) instead of generated clips")
    g.add_argument("--annotations", default=None, help="the annotation CSV of --cache's videos")
    g.add_argument("--work-dir", default=Settings.work_dir, help="where generated clips and their cache are kept")
    p.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        given = {a.lstrip("-").replace("-", "_") for a in (sys.argv[1:] if argv is None else argv) if a[:2] == "--"}
        for key, value in TINY.items():
            if key not in given:
                setattr(args, key, value)
    return args


def estimate_s(variant: Variant) -> float:
    """A row's rough wall time on an H100-class GPU (process start, autotuning, steps, the check)."""
    return 30 + (150 if variant.compile else 0) + (60 if variant.cache else 0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child)
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if args.device == "auto" else args.device)
    on_gpu = device.type == "cuda"
    s = Settings(
        device=str(device),
        **{k: getattr(args, k) for k in ("depth", "frames", "size", "batch_size", "warmup", "steps", "seed")},
        **{k: getattr(args, k) for k in ("num_workers", "prefetch_factor", "cache", "annotations", "work_dir")},
        conv_check=not args.no_conv_check,
    )
    if args.variants == "default":
        specs = default_gpu_variants(s.batch_size) if on_gpu else TINY_VARIANTS
    else:
        specs = [v for v in args.variants.split(",") if v.strip()]
    variants = list(dict.fromkeys(parse_variant(spec) for spec in specs))  # a typo fails now, not in an hour

    t_begin = time.perf_counter()
    env = environment(device)
    found = lookup_peaks(env["gpu"]) if on_gpu else None
    peaks = {k: args.peak_tflops for k in TOLERANCES} if args.peak_tflops else (found[1] if found else None)
    gflops = training_gflops_per_clip(s)
    header = {"kind": "environment", **env, "peaks": peaks, "training_gflops_per_clip": gflops, **asdict(s)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(header) + "\n")
    print(
        f"{env['date']}  torch {env['torch']}  CUDA {env['cuda']}  cuDNN {env['cudnn']}  {env.get('gpu', device)}\n"
        f"ResNet3D-{s.depth} {s.frames}x{s.size}^2 batch {s.batch_size}: {gflops:.2f} GFLOP per training clip; "
        + (f"peaks of {found[0] if found and not args.peak_tflops else '--peak-tflops'}" if peaks else "MFU: no peak")
    )
    for problem in known_problems(env):
        print(f"WARNING: {problem}")
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)

    isolate = args.isolate == "on" or (args.isolate == "auto" and on_gpu)
    spec_dir = Path(tempfile.mkdtemp(prefix="train_step-"))
    rows: list[dict] = []
    for index, variant in enumerate(variants):
        elapsed = time.perf_counter() - t_begin
        if args.time_budget and elapsed + estimate_s(variant) > args.time_budget:
            row: dict[str, Any] = {"status": "SKIPPED", "error": f"time budget ({elapsed:.0f} s used)"}
        elif isolate:
            spec, out = spec_dir / f"{index}.json", spec_dir / f"{index}.out.json"
            spec.write_text(json.dumps({"variant": asdict(variant), "settings": asdict(s)}))
            timeout = args.variant_timeout
            if args.time_budget:  # a hang must not eat the time left for the other rows
                timeout = min(timeout, max(60.0, args.time_budget + 60 - elapsed))
            result, error = run_isolated(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(spec), str(out)], timeout
            )
            row = {**(result or {}), **({"error": error, "status": error.split(" ")[0]} if error else {})}
            if error and not error.startswith(("CRASHED", "TIMEOUT")):
                row["status"] = "ERROR"
        else:
            try:
                row = run_variant(variant, s)
            except Exception as exc:
                traceback.print_exc()
                row = {"error": f"{type(exc).__name__}: {exc}"}
        base = next((r for r in rows if r["name"] == "fp32" and r["status"] == "OK"), None)
        rows.append(finish_row(row, variant, gflops, peaks, on_gpu, row if variant.name == "fp32" else base))
        print(table_line(rows[-1]), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps({"kind": "variant", **rows[-1]}, default=str) + "\n")
    ok = [r for r in rows if r["status"] == "OK" and not r["cache"]]
    if ok:
        best = max(ok, key=lambda r: r["clips_per_s"])
        stem = f", build_model(stem_channels={best['stem_channels']})" if best["stem_channels"] != 3 else ""
        print(f"\nfastest correct: {best['name']}  (train_ddp.py {train_ddp_flags(best)}{stem})")
    for r in rows:
        if r["status"] == "WRONG":
            print(f"WRONG: {r['name']}: {r['conv_check']['worst']} off by {r['conv_check']['max_rel_error']:.2g}")
    print(f"total {time.perf_counter() - t_begin:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
