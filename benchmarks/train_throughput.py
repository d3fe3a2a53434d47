#!/usr/bin/env python3
"""GPU training throughput of the multi-task ResNet3D: clips/s, step time, MFU, memory, and
whether each speed variant still computes the right thing.

    python benchmarks/train_throughput.py --tiny                  # CPU smoke run (CI does this)
    python benchmarks/train_throughput.py --batch-size 16 --json tp.json --markdown tp.md
    python benchmarks/train_throughput.py --variants bf16+cl+bench,bf16+cl+bench+compile

Each variant trains ResNet3D-50 (16 x 224^2, configurable) with *train_ddp.py's own step*:
the objects come from ``train_ddp.build_training`` (model, MultiTaskLoss, AdamW with the
loop's parameter groups and defaults, LR schedule, GradScaler enabled for fp16 only, the
non-finite policy) and every timed step calls ``train_ddp.plan_step``,
``train_ddp.set_learning_rates`` and ``train_ddp.train_step`` -- uint8 clips ->
``model_input`` (normalize, or the frame cache's crop/resize/flip, on the device) ->
(channels_last_3d) -> autocast forward -> the loss in fp32 with the loop's denominators ->
scaled backward -> unscale -> clip_grad_norm_ -> finite check -> optimizer step -> scheduler
step -- plus the log window's per-step work, exactly as ``train_one_epoch`` does on one
process.  The model is built with dropout 0 and a constant LR so that every variant's
first step is comparable.  Input is synthetic uint8 clips
made once on the device (no data loading), except in ``cache`` / ``loader`` rows, which are
fed by a real DataLoader and report the data-wait fraction (time blocked on the loader /
step time).

Variant names: a precision, then ``+`` flags, then an optional ``@batch``:
  fp32 | bf16 | fp16      autocast dtype (fp16 with GradScaler); fp32 allows TF32 like train_ddp
  cl                      channels_last_3d (model and input)
  bench                   torch.backends.cudnn.benchmark
  compile                 torch.compile(model) (default mode, as train_ddp --compile)
  strict                  TF32 off (plain fp32 math)
  pad4 | pad8 | s2d       exact stem re-formulations (benchmarks/stem_variants.py)
  cache                   fed by the frame cache (CachedClipDataset, as train_ddp --cache): a
                          raw cache made from generated clips, or --cache DIR --annotations CSV
  loader                  fed by a video-decoding DataLoader (VideoClipDataset): generated
                          H.264 clips at real-clip bitrates, or --videos DIR --annotations CSV
  best                    (instead of a precision) the fastest correct eager variant measured
                          so far in this run, with the flags that follow added
Default on a GPU (default_gpu_variants, most important first): the earlier version's setup
(``fp32``: fp32, contiguous, no benchmark, eager) as the baseline, all knobs on,
``best+compile``, ``best+cache``, the knobs one by one, fp16, the stem ideas,
``best+loader`` and the best at twice the batch.  ``--variants all`` is the full
{fp32, bf16, fp16} x cl x bench x compile grid (24 runs, 12 of them compiling: ~30 min).
At ``--tiny`` (CPU): fp32, channels_last, bf16 (oneDNN off, as train_ddp does on CPUs),
the s2d stem, and both DataLoader rows.

On a GPU every variant runs in its own process (``--isolate off`` to debug in one): a
crash, hang or out-of-memory ends that row only, each gets a fresh allocator for its peak
memory and pays its own cudnn.benchmark autotuning.  After timing, every distinct
convolution of the step is checked at its real shapes against a float64 reference without
cuDNN (benchmarks/conv_check.py); a variant off by more than its precision's tolerance is
WRONG and never "fastest".  Its first-step logits are also compared with a strict-fp32,
cuDNN-free run ("logits d", informational: random-init ResNets amplify rounding).

Output: a table (also ``--markdown PATH``) and every figure in ``--json PATH``, both
rewritten after each variant so that a run stopped early still leaves its rows.

One-shot command for a GPU session with the device tool.  The machine has torch,
torchvision, numpy and pandas but not PyAV or tqdm, which train_ddp.py (and so every row)
imports; bring their wheels first, here, in the repo root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 -d .whl av==18.1.0 tqdm==4.70.1

then one ``run`` with ``carry: [".whl"]`` and ``timeout_s: 480``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site; PYTHONUNBUFFERED=1 python3 benchmarks/train_throughput.py \
      --batch-size 16 --time-budget 390 --json $OUT/tp.json --markdown $OUT/tp.md 2>&1 | tee $OUT/tp.log

Rows that would start past the budget are SKIPPED (named in the table) and can be run in
a second call with ``--variants``.  MLflow and PyYAML are not needed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # `python benchmarks/train_throughput.py` puts benchmarks/, not the repo root, on sys.path;
    # the root must come first so that our `datasets`/`utils` win over PyPI packages.
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import train_ddp  # noqa: E402  (the loop's own step, not a copy)
from benchmarks.conv_check import TOLERANCES, check_conv_calls, collect_conv_calls  # noqa: E402
from benchmarks.gpu_peaks import math_precision  # noqa: E402
from benchmarks.stem_variants import apply_stem_variant  # noqa: E402
from benchmarks.throughput_env import (  # noqa: E402
    _sync,
    conv3d_backend,
    environment,
    flop_counts,
    matmul_tflops,
    version_warnings,
)
from benchmarks.throughput_inputs import loader_batches, synthetic_batch  # noqa: E402
from benchmarks.throughput_report import (  # noqa: E402
    BASELINE,
    format_table,
    markdown_report,
    recommend,
)
from utils.config import TrainConfig  # noqa: E402
from utils.distributed import DistInfo  # noqa: E402
from utils.tasks import parse_tasks  # noqa: E402
from utils.train_state import LogWindow, TrainState  # noqa: E402

TINY = dict(
    depth=18, frames=4, size=32, batch_size=2, warmup=1, steps=2, loader_clips=4, loader_video="64x48x12", num_workers=1
)
TINY_VARIANTS = ["fp32", "fp32+cl", "bf16", "fp32+s2d", "fp32+cache", "fp32+loader"]


def default_gpu_variants(batch_size: int) -> list[str]:
    """Most important first, so that a --time-budget cut drops the least important rows.

    Each eager row costs ~20-40 s on an H100/H200 (process start, cudnn.benchmark autotuning,
    25 steps, the conv check), the compiled one 1-3 min, the loader rows ~30-60 s.
    """
    return [
        BASELINE,  # the earlier version's setup: every speed-up is against this row
        "bf16+cl+bench",  # every knob on: the expected winner
        "best+compile",
        "best+cache",  # the data-wait goal: frame cache
        "bf16",
        "bf16+cl",  # AMP alone, then channels_last_3d (bench is the step to bf16+cl+bench)
        "fp16+cl+bench",
        "bf16+cl+bench+s2d",
        "bf16+cl+bench+pad8",  # the stem ideas
        "best+loader",  # decoding videos on the fly
        f"best@{2 * batch_size}",
    ]


def all_variants() -> list[str]:
    out = []
    for dtype in ("fp32", "bf16", "fp16"):
        for compiled in ("", "+compile"):
            for cl in ("", "+cl"):
                for bench in ("", "+bench"):
                    out.append(dtype + cl + bench + compiled)
    return out


# ------------------------------------------------------------------------------------------
# variants
# ------------------------------------------------------------------------------------------
FLAG_FIELDS = {
    "cl": "channels_last",
    "bench": "cudnn_benchmark",
    "strict": "strict_fp32",
    "compile": "compile",
    "loader": "loader",
    "cache": "cache",
}
INPUT_FLAGS = ("compile", "loader", "cache")  # printed last in a name
STEMS = ("pad4", "pad8", "s2d")


@dataclass(frozen=True)
class Variant:
    dtype: str = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = False
    strict_fp32: bool = False
    stem: str = "plain"
    compile: bool = False
    loader: bool = False  # fed by a video-decoding DataLoader
    cache: bool = False  # fed by a frame-cache DataLoader
    batch_size: int | None = None  # None: the run's --batch-size

    @property
    def name(self) -> str:
        parts = [self.dtype]
        parts += [flag for flag, field in FLAG_FIELDS.items() if flag not in INPUT_FLAGS and getattr(self, field)]
        if self.stem != "plain":
            parts.append(self.stem)
        parts += [flag for flag in INPUT_FLAGS if getattr(self, flag)]
        return "+".join(parts) + (f"@{self.batch_size}" if self.batch_size else "")

    @property
    def fed_by_loader(self) -> bool:
        return self.loader or self.cache


def parse_variant(spec: str, best: Variant | None = None) -> Variant | None:
    """``"bf16+cl+bench@32"`` -> Variant; ``"best+..."`` needs ``best`` (None -> None)."""
    text, _, batch = spec.strip().partition("@")
    head, *flags = [t.strip() for t in text.split("+")]
    if head == "best":
        if best is None:
            return None
        variant = best
    elif head in ("fp32", "bf16", "fp16"):
        variant = Variant(dtype=head)
    else:
        raise ValueError(f"variant {spec!r}: must start with fp32, bf16, fp16 or best, not {head!r}")
    for flag in flags:
        if flag in FLAG_FIELDS:
            variant = replace(variant, **{FLAG_FIELDS[flag]: True})
        elif flag in STEMS:
            variant = replace(variant, stem=flag)
        else:
            raise ValueError(
                f"variant {spec!r}: unknown flag {flag!r}; flags are {', '.join(list(FLAG_FIELDS) + list(STEMS))}"
            )
    if batch:
        if not batch.isdigit() or int(batch) < 1:
            raise ValueError(f"variant {spec!r}: @ must be followed by a batch size")
        variant = replace(variant, batch_size=int(batch))
    if variant.loader and variant.cache:
        raise ValueError(f"variant {spec!r}: loader (decoded videos) and cache (frame cache) exclude each other")
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
    num_workers: int = 4
    prefetch_factor: int = 2
    loader_clips: int = 16
    loader_video: str = "340x256x90"  # W x H x frames of generated clips (MiT-like: 3 s at 30 fps)
    video_dir: str = str(REPO_ROOT / ".cache" / "bench_videos")
    videos: str | None = None
    annotations: str | None = None
    cache: str | None = None
    conv_check: bool = True


# ------------------------------------------------------------------------------------------
# train_ddp.py's step: the loop's own objects and functions, nothing re-implemented here
# ------------------------------------------------------------------------------------------
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class BenchState:
    t: train_ddp.Training  # model, loss, optimizer, LR schedule, GradScaler, non-finite policy
    state: TrainState
    window: LogWindow
    info: DistInfo


def bench_config(s: Settings) -> TrainConfig:
    """The loop's defaults (lr, weight decay, clipping, loss options, AdamW) at the benchmark's
    size; dropout 0 so that every variant's first step is comparable; a constant LR (no warmup:
    every timed step is a full one); a benchmark never stops for non-finite steps, it counts them."""
    return TrainConfig(
        depth=s.depth,
        frames=s.frames,
        size=s.size,
        batch_size=s.batch_size,
        tasks=s.tasks,
        seed=s.seed,
        dropout=0.0,
        schedule="constant",
        warmup_steps=0,
        max_nonfinite_skips=10**9,
        output_dir=tempfile.gettempdir(),
    )


def build_state(variant: Variant, s: Settings, device: torch.device) -> BenchState:
    """train_ddp.build_training() + start_epoch() for one process on ``device``, with the
    variant's precision, memory format, stem and compilation."""
    cfg = replace(bench_config(s), compile=variant.compile)
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=device, backend=None)
    torch.manual_seed(s.seed)  # identical initial weights in every variant's process (as the loop seeds)
    t = train_ddp.build_training(
        cfg,
        parse_tasks(s.tasks),
        total_steps=10**6,
        steps_per_epoch=10**6,
        info=info,
        amp_dtype=AMP_DTYPES[variant.dtype],
        channels_last=variant.channels_last,
    )
    apply_stem_variant(t.model, variant.stem)
    state = TrainState()
    train_ddp.start_epoch(t, state, cfg, info)  # the loop's wrapping (compile) and training mode
    window = LogWindow(t.loss_fn.tasks, t.loss_fn.task_weights, device, log_every=10**9, total_steps=10**9)
    return BenchState(t, state, window, info)


def bench_step(bs: BenchState, batch: dict) -> train_ddp.StepResult:
    """What train_ddp.train_one_epoch() does per step with one micro-batch: plan_step (the
    all-reduce; on one process no collective), set_learning_rates, train_step, the log window."""
    plan = train_ddp.plan_step([batch], bs.t, False, bs.info)
    bs.window.lrs = train_ddp.set_learning_rates(bs.t, bs.state.epoch)
    result = train_ddp.train_step(bs.t, [batch], plan.denominators, bs.state)
    bs.state.step += 1
    bs.window.add_step(
        result.loss_sums, result.loss_counts, result.grad_norm, result.applied, clips=len(batch["indices"])
    )
    return result


def step_rate(variant: Variant, s: Settings, steps: int = 10, warmup: int = 3) -> float:
    """Training clips/s of ``variant`` through the loop's step on synthetic clips held on the
    device (no loader, no checks): what a data loader has to keep up with."""
    device = torch.device(s.device)
    _apply_backend_flags(variant, device)
    state = build_state(variant, s, device)
    batch_size = variant.batch_size or s.batch_size
    batch = synthetic_batch(s, batch_size, device)
    for _ in range(warmup):
        bench_step(state, batch)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        bench_step(state, batch)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------
# one variant (on a GPU in its own process, see --isolate)
# ------------------------------------------------------------------------------------------
def _apply_backend_flags(variant: Variant, device: torch.device) -> None:
    if device.type == "cuda":  # as train_ddp.py: TF32 on for GPUs, benchmark per config
        torch.backends.cudnn.benchmark = variant.cudnn_benchmark
        torch.backends.cuda.matmul.allow_tf32 = not variant.strict_fp32
        torch.backends.cudnn.allow_tf32 = not variant.strict_fp32
    else:  # as train_ddp.py: oneDNN's bf16 conv3d backward is broken on CPUs (torch 2.14.1)
        torch.backends.mkldnn.enabled = variant.dtype != "bf16"


def _first_step_record(result: train_ddp.StepResult) -> dict:
    outputs = result.outputs
    logits = torch.cat([outputs[k].double().flatten() for k in sorted(outputs)])
    return {"logits": logits.cpu().tolist(), "loss": result.loss.item(), "grad_norm": result.grad_norm.item()}


def _count_host_syncs(step: Callable[[], Any]) -> int:
    """Synchronising CUDA calls in one step (torch's sync debug mode warns on each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def run_reference(s: Settings, batch_size: int) -> dict:
    """First step in strict fp32 with cuDNN off: the logits every variant is compared with."""
    device = torch.device(s.device)
    variant = Variant(dtype="fp32", strict_fp32=True)
    _apply_backend_flags(variant, device)
    with torch.backends.cudnn.flags(enabled=False, benchmark=False, deterministic=False, allow_tf32=False):
        state = build_state(variant, s, device)
        return _first_step_record(bench_step(state, synthetic_batch(s, batch_size, device)))


def run_variant(variant: Variant, s: Settings) -> dict:
    """Warm up, time, measure memory, check the convolutions.  Returns the row's figures."""
    device = torch.device(s.device)
    on_gpu = device.type == "cuda"
    batch_size = variant.batch_size or s.batch_size
    t_start = time.perf_counter()
    _apply_backend_flags(variant, device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    state = build_state(variant, s, device)
    row: dict[str, Any] = {}
    loader = None
    if variant.fed_by_loader:
        # The workers prefetch num_workers x prefetch_factor batches; warming up through that
        # many more steps starts the timing from the loader's steady state, not a full queue.
        extra = s.num_workers * s.prefetch_factor
        batches, row["input"], loader = loader_batches(variant, s, batch_size, s.warmup + extra + s.steps, device)
        warmup = s.warmup + extra
    else:
        fixed = synthetic_batch(s, batch_size, device)
        batches, row["input"] = iter(lambda: fixed, None), "synthetic uint8 clips on the device"
        warmup = s.warmup

    def fetch() -> dict:
        batch = next(batches)
        if len(batch["indices"]) == 0:
            raise RuntimeError(f"the loader returned a batch with no readable clip: {batch['bad'][:3]}")
        return batch

    nonfinite = 0
    t0 = time.perf_counter()
    first = bench_step(state, fetch())
    _sync(device)
    row["first_step_s"] = time.perf_counter() - t0  # includes autotuning / compilation
    row["first_step"] = _first_step_record(first)
    nonfinite += not first.applied
    del first
    for _ in range(max(0, warmup - 1)):
        nonfinite += not bench_step(state, fetch()).applied
    _sync(device)
    row["warmup_s"] = time.perf_counter() - t0

    step_times, data_s = [], 0.0
    t_timed = time.perf_counter()
    for _ in range(s.steps):
        t_data = time.perf_counter()
        batch = fetch()
        t_compute = time.perf_counter()
        data_s += t_compute - t_data
        nonfinite += not bench_step(state, batch).applied
        step_times.append(time.perf_counter() - t_data)
    _sync(device)
    total = time.perf_counter() - t_timed
    row.update(
        batch=batch_size,
        clips_per_s=batch_size * s.steps / total,
        step_ms=1000 * total / s.steps,
        step_ms_median=1000 * statistics.median(step_times),
        data_wait_fraction=data_s / total,
        nonfinite_steps=nonfinite,
        peak_mem_gb=torch.cuda.max_memory_allocated(device) / 2**30 if on_gpu else None,
    )
    if variant.compile:
        row["compile_s"] = max(0.0, row["first_step_s"] - row["step_ms_median"] / 1000)
    if loader is not None:
        del batches, loader  # stops the workers
    if on_gpu and not variant.compile:
        fixed_batch = synthetic_batch(s, batch_size, device)
        try:
            row["host_syncs_per_step"] = _count_host_syncs(lambda: bench_step(state, fixed_batch))  # noqa: F821
        except Exception as exc:  # informational only
            row["host_syncs_per_step"] = f"n/a ({type(exc).__name__})"
    shape = (batch_size, 3, s.frames, s.size, s.size)
    calls = collect_conv_calls(state.t.model, shape)
    del state
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()
    if s.conv_check:
        precision = math_precision(variant.dtype, tf32=on_gpu and not variant.strict_fp32)
        row["conv_check"] = {
            **check_conv_calls(calls, device, AMP_DTYPES[variant.dtype], variant.channels_last, seed=s.seed),
            "tolerance": TOLERANCES[precision],
            "precision": precision,
        }
    if variant.compile:
        torch._dynamo.reset()  # in-process runs: the next variant compiles afresh
    row["wall_s"] = time.perf_counter() - t_start
    return row


def _child_main(spec_path: str, out_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    settings = Settings(**spec["settings"])
    try:
        if spec.get("reference"):
            result = {"reference": run_reference(settings, spec["batch_size"])}
        else:
            result = run_variant(Variant(**spec["variant"]), settings)
        code = 0
    except BaseException as exc:  # reported as the row's error; the parent goes on
        result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        print(result["traceback"], file=sys.stderr, flush=True)
        code = 1
    Path(out_path).write_text(json.dumps(result))
    return code


def run_isolated(cmd: list[str], timeout: float) -> tuple[dict | None, str | None]:
    """Run ``cmd`` (a child writing JSON to its last argument) in its own process group.

    Returns (result, None) or (partial result or None, error text: crash signal, timeout,
    exit status)."""
    out_path = cmd[-1]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and its DataLoader workers
        proc.wait()
        return None, f"TIMEOUT after {timeout:.0f} s"
    result = None
    with contextlib.suppress(OSError, ValueError):
        result = json.loads(Path(out_path).read_text())
    if code < 0:
        return result, f"CRASHED ({signal.Signals(-code).name})"
    if code != 0 or result is None:
        return result, (result or {}).get("error") or f"exit status {code}"
    return result, None


# ------------------------------------------------------------------------------------------
# the parent: run the variants, compare, report
# ------------------------------------------------------------------------------------------
def _rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else abs(a - b)


def finish_row(
    row: dict,
    variant: Variant,
    reference: dict | None,
    flops: dict,
    env: dict,
    on_gpu: bool,
    baseline: dict | None,
    batch_size: int,
) -> dict:
    """Adds the variant's fields, status, MFU, speed-up and the logits comparison."""
    row.update(asdict(variant), name=variant.name)
    row.setdefault("batch", variant.batch_size or batch_size)
    if row.get("error"):
        return row
    conv = row.get("conv_check")
    row["status"] = "WRONG" if conv and not conv["max_rel_error"] <= conv["tolerance"] else "OK"
    first = row.pop("first_step", None)
    if reference and first and len(first["logits"]) == len(reference["logits"]):
        got, ref = np.array(first["logits"]), np.array(reference["logits"])
        row["logits_rel_diff"] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
        row["loss_rel_diff"] = _rel(first["loss"], reference["loss"])
        row["grad_norm_rel_diff"] = _rel(first["grad_norm"], reference["grad_norm"])
    precision = math_precision(variant.dtype, tf32=on_gpu and not variant.strict_fp32)
    peak = (env.get("peaks") or {}).get("tflops", {}).get(precision)
    row["mfu_precision"] = precision
    row["mfu"] = (row["clips_per_s"] * flops["training_gflops_per_clip"] / 1e3 / peak) if peak else None
    if baseline and baseline.get("clips_per_s"):
        row["speedup_vs_baseline"] = row["clips_per_s"] / baseline["clips_per_s"]
    return row


def _best(rows: list[dict]) -> Variant | None:
    """The fastest correct eager variant so far (eager: ``best+loader`` and ``best@32`` must
    not pay for another compilation; ``best+compile`` shows what compiling adds to it)."""
    ok = [
        r
        for r in rows
        if r.get("status") == "OK"
        and not (r.get("loader") or r.get("cache"))
        and not r.get("compile")
        and r.get("clips_per_s")
    ]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["clips_per_s"])
    return Variant(**{f.name: best[f.name] for f in fields(Variant)})


def _estimate_s(variant: Variant) -> float:
    """Rough wall time of a variant on an H100-class GPU, for the --time-budget check."""
    return 20 + (150 if variant.compile else 0) + (60 if variant.fed_by_loader else 0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--tiny", action="store_true", help="CPU smoke size: depth 18, 4 x 32^2, batch 2, 1 warm-up + 2 timed steps"
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16, help="clips per GPU per step")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps (autotuning, compilation)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument(
        "--variants", default="default", help="default, all, or a comma list such as fp32,bf16+cl+bench,best+compile"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak TFLOP/s for MFU on a GPU missing from benchmarks/gpu_peaks.py",
    )
    p.add_argument("--json", default=None, help="write every figure here")
    p.add_argument("--markdown", default=None, help="write the report table here")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds: start no variant that would end past this (outputs still written)",
    )
    p.add_argument("--variant-timeout", type=float, default=480, help="seconds before a variant is killed")
    p.add_argument(
        "--isolate",
        choices=("auto", "on", "off"),
        default="auto",
        help="one process per variant (auto: on GPUs, where a crash or OOM must not end the "
        "run; off on CPUs, where the extra imports dominate a --tiny run)",
    )
    p.add_argument("--no-conv-check", action="store_true", help="skip the per-layer convolution check")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("loader variants")
    g.add_argument(
        "--num-workers", type=int, default=TrainConfig().num_workers, help="DataLoader workers (train_ddp.py's default)"
    )
    g.add_argument("--prefetch-factor", type=int, default=TrainConfig().prefetch_factor)
    g.add_argument("--loader-clips", type=int, default=16, help="generated clips (cycled)")
    g.add_argument("--loader-video", default="340x256x90", help="generated clips' W x H x frames (30 fps)")
    g.add_argument("--video-dir", default=Settings.video_dir, help="where generated clips are kept")
    g.add_argument("--videos", default=None, help="real videos instead (with --annotations)")
    g.add_argument("--annotations", default=None, help="annotation CSV for --videos / --cache")
    g.add_argument("--cache", default=None, help="frame cache directory (datasets/cache.py) instead of decoding")
    p.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        given = {
            a.lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")
        }
        for key, value in TINY.items():
            if key not in given:
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return _child_main(*args.child)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else "cpu"
        if args.device == "auto"
        else args.device
    )
    on_gpu = device.type == "cuda"
    s = Settings(
        device=str(device),
        depth=args.depth,
        frames=args.frames,
        size=args.size,
        batch_size=args.batch_size,
        warmup=args.warmup,
        steps=args.steps,
        seed=args.seed,
        num_workers=args.num_workers,
        prefetch_factor=args.prefetch_factor,
        loader_clips=args.loader_clips,
        loader_video=args.loader_video,
        video_dir=args.video_dir,
        videos=args.videos,
        annotations=args.annotations,
        cache=args.cache,
        conv_check=not args.no_conv_check,
    )
    if args.variants == "default":
        specs = default_gpu_variants(s.batch_size) if on_gpu else TINY_VARIANTS
    elif args.variants == "all":
        specs = all_variants()
    else:
        specs = [v for v in args.variants.split(",") if v.strip()]
    for spec in specs:  # fail on a typo now, not after an hour of measuring
        parse_variant(spec, best=Variant())

    t_begin = time.perf_counter()
    env = environment(device, args.peak_tflops)
    if on_gpu:
        env["conv3d_backend"] = conv3d_backend(device)
        with contextlib.suppress(Exception):
            env["matmul_bf16_tflops"] = matmul_tflops(device)
        torch.cuda.empty_cache()
    flops = flop_counts(s)
    report: dict[str, Any] = {
        "environment": env,
        "settings": asdict(s),
        "flops": flops,
        "warnings": version_warnings(env),
        "variants": [],
    }
    print(
        f"{env['date']}  torch {env['torch']}  CUDA {env['cuda']}  cuDNN {env['cudnn']} "
        f"(enabled {env['cudnn_enabled']})  device {env.get('gpu_name') or device}"
        + (f"  driver {env['driver']}" if env.get("driver") else ""),
        flush=True,
    )
    print(
        f"ResNet3D-{s.depth} {s.frames}x{s.size}^2 batch {s.batch_size}: "
        f"{flops['training_gflops_per_clip']:.2f} GFLOP per training clip counted, "
        f"{flops['analytic_training_gflops_per_clip']:.2f} analytic; the stem is "
        f"{100 * flops['stem_share_of_forward']:.0f}% of the forward",
        flush=True,
    )
    for w in report["warnings"]:
        print(f"WARNING: {w}", flush=True)
    if not env.get("peaks"):
        print(
            "MFU: n/a ("
            + ("CPU" if not on_gpu else f"{env.get('gpu_name')} is not in benchmarks/gpu_peaks.py; pass --peak-tflops")
            + ")",
            flush=True,
        )

    isolate = args.isolate == "on" or (args.isolate == "auto" and on_gpu)
    workdir = Path(tempfile.mkdtemp(prefix="train_throughput-"))

    def execute(spec: dict, label: str) -> tuple[dict | None, str | None]:
        if not isolate:
            try:
                if spec.get("reference"):
                    return {"reference": run_reference(Settings(**spec["settings"]), spec["batch_size"])}, None
                return run_variant(Variant(**spec["variant"]), Settings(**spec["settings"])), None
            except Exception as exc:
                traceback.print_exc()
                return None, f"{type(exc).__name__}: {exc}"
        spec_path, out_path = workdir / f"{label}.json", workdir / f"{label}.out.json"
        spec_path.write_text(json.dumps(spec))
        timeout = args.variant_timeout
        if args.time_budget:  # a hung variant must not eat the time left for writing the results
            timeout = min(timeout, max(30.0, args.time_budget + 60 - (time.perf_counter() - t_begin)))
        return run_isolated(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path), str(out_path)], timeout
        )

    references: dict[int, dict | None] = {}

    def reference_for(batch_size: int) -> dict | None:
        if batch_size not in references:
            result, error = execute(
                {"reference": True, "batch_size": batch_size, "settings": asdict(s)}, f"reference-{batch_size}"
            )
            references[batch_size] = (result or {}).get("reference")
            if error:
                report["warnings"].append(f"no logits reference at batch {batch_size}: {error}")
        return references[batch_size]

    rows: list[dict] = report["variants"]
    done: set[str] = set()
    # compile and loader rows run the same convolutions as their eager / synthetic twin
    conv_checked: dict[tuple, tuple[str, dict]] = {}
    for index, spec_text in enumerate(specs):
        variant = parse_variant(spec_text, best=_best(rows))
        if variant is None:
            rows.append(
                {"name": spec_text, "status": "SKIPPED", "error": "no correct variant before it", **asdict(Variant())}
            )
            continue
        if variant.name in done:
            continue
        done.add(variant.name)
        elapsed = time.perf_counter() - t_begin
        if args.time_budget and elapsed + _estimate_s(variant) > args.time_budget:
            rows.append(
                finish_row(
                    {"status": "SKIPPED", "error": f"time budget ({elapsed:.0f} s used)"},
                    variant,
                    None,
                    flops,
                    env,
                    on_gpu,
                    None,
                    s.batch_size,
                )
            )
            _write_outputs(report, args)
            continue
        print(f"[{index + 1}/{len(specs)}] {variant.name} ...", flush=True)
        reference = reference_for(variant.batch_size or s.batch_size) if not variant.fed_by_loader else None
        kernels = (
            variant.dtype,
            variant.channels_last,
            variant.cudnn_benchmark,
            variant.strict_fp32,
            variant.stem,
            variant.batch_size or s.batch_size,
        )
        twin = conv_checked.get(kernels)
        settings = replace(s, conv_check=s.conv_check and twin is None)
        result, error = execute({"variant": asdict(variant), "settings": asdict(settings)}, f"variant-{index}")
        row = dict(result or {})
        if twin and not error:
            row["conv_check"] = {**twin[1], "from": twin[0]}
        elif row.get("conv_check"):
            conv_checked[kernels] = (variant.name, row["conv_check"])
        if error:
            row["error"] = error
            row["status"] = error.split(" ")[0] if error.startswith(("CRASHED", "TIMEOUT")) else "ERROR"
        baseline = next((r for r in rows if r["name"] == BASELINE and r.get("clips_per_s")), None)
        if variant.name == BASELINE:
            baseline = row
        rows.append(finish_row(row, variant, reference, flops, env, on_gpu, baseline, s.batch_size))
        r = rows[-1]
        print(
            f"    {r['status']}"
            + (
                f": {r['clips_per_s']:.2f} clips/s, {r['step_ms']:.1f} ms/step, first step {r['first_step_s']:.1f} s"
                if r.get("clips_per_s")
                else ""
            )
            + (f" ({r['error'].splitlines()[0][:200]})" if r.get("error") else ""),
            flush=True,
        )
        _write_outputs(report, args)

    report["recommendation"] = recommend(rows)
    report["total_s"] = time.perf_counter() - t_begin
    _write_outputs(report, args)
    shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(format_table(rows))
    rec = report["recommendation"]
    if rec.get("fastest"):
        print(f"\nfastest correct: {rec['fastest']}")
    if rec.get("train_ddp_flags"):
        print(f"fastest train_ddp.py can express: {rec['fastest_train_ddp']} -> {rec['train_ddp_flags']}")
    for note in rec.get("notes", []):
        print(f"  - {note}")
    print(f"total {report['total_s']:.0f} s", flush=True)
    return 0


def _write_outputs(report: dict, args: argparse.Namespace) -> None:
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown_report(report))


if __name__ == "__main__":
    sys.exit(main())
