#!/usr/bin/env python3
"""Data throughput, side by side in one run on the same clips: mp4 on the fly, the frame cache,
and the earlier Lightning version's float32 ``.pt`` clips.

    python -m benchmarks.data_throughput                    # 32 generated 3 s clips (~2-4 min on 2 cores)
    python -m benchmarks.data_throughput --clips 64 --max-workers 16 --json data.json
    python -m benchmarks.data_throughput --videos /path/to/mit/clips --clips 64
    python -m benchmarks.data_throughput --hd               # + 720p / 1080p rows (opt-in: minutes more)
    python -m benchmarks.data_throughput --hd-only --work-dir /tmp/dt   # only those rows

What it measures (all on the CPU unless a GPU is there; the tables print as Markdown):
1. Reading, per worker core: one process, one thread, doing exactly a DataLoader worker's job
   for training (the Dataset's ``__getitem__`` in train mode plus the collate), over every
   clip in a shuffled order, after one warm-up pass (files in the page cache: the bytes per
   clip column stands for what the disk / network file system would have to deliver).
   clips/s per core = clips / CPU seconds of the process (user + system), which stays
   meaningful when other jobs share the machine; wall-clock clips/s is printed beside it.
2. Preparation, per core: ``prepare`` (one-pass decode, resize, write; the real command with
   ``--workers 0``) against the earlier approach: seek to each of the 16 frames, decode
   forward from the preceding key frame (what OpenCV's ``CAP_PROP_POS_FRAMES`` does; OpenCV
   is not a dependency, so PyAV's ``container.seek`` stands in), resize to 224, normalize to
   float32 and ``torch.save`` the [3, 16, 224, 224] tensor.  Those ``.pt`` files are the
   earlier format read in (1), by the earlier reader reproduced here (:class:`EarlierPtClips`:
   the project itself reads them only in ``prepare --from-pt``).
3. The loaders with 1..N readers (threads or worker processes), every row feeding the same
   consumer (it receives the batch as a tensor and reads it; benchmarks/loaders.py): the raw
   read (the floor: whole clips into reused buffers, with preadv and out of a memory map), the
   frame-cache loader every command uses (datasets/cache_loader.py), and the DataLoader over the
   same cache (``dataloader``, the reader it replaced) and over the other inputs.  Then the
   cache loader and the DataLoader feeding a consumer that applies the crop/resize/flip/normalization
   (:func:`datasets.augment.model_input`) on the GPU when there is one, else on
   the CPU, where it competes with the readers for cores.
4. With a GPU: the ResNet3D-50 training step rate (bf16, channels_last_3d) on synthetic
   input, to compare the loader against.
5. With ``--hd``: the same preparation comparison on generated 720p and 1080p 3 s clips, and the
   decoding options measured on them (:mod:`benchmarks.hd_decoding`).

Clips are generated (so the benchmark runs anywhere): 3 s, 30 fps H.264 (libx264 defaults:
one key frame per clip) at Moments-in-Time-like sizes, with moving textured shapes; or real
clips with ``--videos DIR``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/data_throughput.py` works too
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.loaders import measure  # noqa: E402
from datasets.augment import normalize, resize_center_crop  # noqa: E402
from datasets.cache import CachedClipDataset, FrameCache, collate_cached  # noqa: E402
from datasets.clips import VideoClipDataset, collate_clips  # noqa: E402
from datasets.prepare import prepare_cache  # noqa: E402
from datasets.video import sample_clip_indices, write_video  # noqa: E402
from utils.atomic import atomic_write  # noqa: E402
from utils.cli import CommandLineParser

# width x height: the common Moments in Time shapes (4:3 and 16:9 landscape, some portrait)
MIT_SIZES = [(340, 256), (320, 240), (454, 256), (480, 360), (640, 360), (256, 340)]


# ------------------------------------------------------------------------------------------------
# clips
# ------------------------------------------------------------------------------------------------
def render_clip(width: int, height: int, frames: int, seed: int) -> np.ndarray:
    """Moving textured ellipses over a panning gradient, a little noise: costs a codec real work."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    shapes = [
        dict(
            c=rng.uniform(30, 230, 3),
            r=rng.uniform(0.08, 0.25) * height,
            p=rng.uniform(0, 1, 2),
            v=rng.uniform(-0.02, 0.02, 2),
            f=rng.uniform(0.05, 0.3),
        )
        for _ in range(int(rng.integers(3, 7)))
    ]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        img = base + 40 * np.sin(xx[..., None] / width * 3 + t * 0.05 + np.arange(3)) * (yy[..., None] / height)
        for s in shapes:
            cy, cx = (s["p"] + s["v"] * t) % 1 * (height, width)
            mask = ((yy - cy) ** 2 + ((xx - cx) * 0.8) ** 2) < s["r"] ** 2
            stripes = 20 * np.sin((xx + yy) * s["f"] + t * 0.3)
            img[mask] = s["c"] + stripes[mask, None]
        out[t] = np.clip(img + rng.normal(0, 3, img.shape), 0, 255)
    return out


def make_clips(folder: Path, count: int, seconds: float, fps: int) -> list[str]:
    """``count`` generated H.264 clips in ``folder`` (reused if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        width, height = MIT_SIZES[i % len(MIT_SIZES)]
        name = f"clip_{i:04d}_{width}x{height}.mp4"
        if not (folder / name).exists():
            frames = render_clip(width, height, int(round(seconds * fps)), i)
            atomic_write(folder / name, functools.partial(write_video, frames=frames, fps=fps))
        names.append(name)
    return names


def real_clips(folder: Path, count: int) -> list[str]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".webm", ".mov"))
    if not files:
        raise SystemExit(f"--videos {folder}: no video files")
    return [files[i % len(files)].name for i in range(min(count, len(files)))]


# ------------------------------------------------------------------------------------------------
# the earlier approach: seek to each of 16 frames, float32 .pt
# ------------------------------------------------------------------------------------------------
def seek_decode(path: str, num_frames: int) -> np.ndarray:
    """The segment-centre frames, each reached by a seek to the preceding key frame and decoding
    forward (one seek per frame, as OpenCV's CAP_PROP_POS_FRAMES does)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        rate, time_base = stream.average_rate, stream.time_base
        start = stream.start_time or 0
        frames = []
        for index in sample_clip_indices(int(stream.frames), num_frames):
            target = start + int(round(int(index) / rate / time_base))
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= target:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    break
        return np.stack(frames)


def earlier_prepare(path: str, out_path: Path, num_frames: int, size: int) -> None:
    frames = torch.from_numpy(seek_decode(path, num_frames)).permute(0, 3, 1, 2)
    clip = resize_center_crop(frames, size).permute(1, 0, 2, 3)  # (3, T, size, size) uint8
    torch.save(normalize(clip).contiguous(), out_path)


class EarlierPtClips(torch.utils.data.Dataset):
    """The earlier Lightning version's reader of its ``.pt`` clips, for the comparison only: load the
    normalized float32 (3, T, size, size) clip, flip it in training (its only augmentation)."""

    def __init__(self, names: list[str], pt_dir: Path, seed: int = 0):
        self.paths = [pt_dir / (Path(n).stem + ".pt") for n in names]
        self.names, self.seed = names, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        clip = torch.load(self.paths[index], map_location="cpu", weights_only=True)
        if np.random.default_rng([self.seed, epoch, index]).random() < 0.5:
            clip = clip.flip(-1)
        return {
            "video": clip.contiguous(),
            "targets": {},
            "video_id": self.names[index],
            "index": index,
            "error": None,
            "note": None,
        }


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
class Timer:
    """Wall and CPU (user + system of this process) seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def worker_rate(dataset, collate, batch_size: int, min_time: float) -> dict:
    """A DataLoader worker's training job in this process: shuffled keys, items, collate."""
    n = len(dataset)

    def one_pass(epoch):
        order = np.random.default_rng(epoch).permutation(n)
        for b in range(0, n, batch_size):
            batch = collate([dataset[(epoch, int(i))] for i in order[b : b + batch_size]])
            if batch["bad"]:
                raise RuntimeError(f"benchmark clip failed to load: {batch['bad'][0]}")

    one_pass(0)  # warm-up: page cache, lazy imports, file handles
    clips, epoch = 0, 1
    with Timer() as t:
        while True:
            one_pass(epoch)
            clips, epoch = clips + n, epoch + 1
            if time.perf_counter() - t.wall >= min_time:
                break
    return {"clips_per_cpu_s": clips / max(t.cpu, 1e-9), "clips_per_s": clips / t.wall, "clips": clips}


def loop_step_rate(
    device: torch.device, batch_size: int, frames: int, size: int, steps: int = 10, depth: int = 50
) -> float:
    """Training clips/s of train_ddp.py's own step (via benchmarks/train_step.py) for
    ResNet3D-``depth`` on synthetic clips: bf16 autocast + channels_last_3d + cudnn.benchmark on
    CUDA (train_ddp's GPU defaults), fp32 elsewhere."""
    from benchmarks.train_step import Settings, Variant, step_rate

    cuda = device.type == "cuda"
    variant = Variant(dtype="bf16", channels_last=True, cudnn_benchmark=True) if cuda else Variant()
    settings = Settings(device=str(device), depth=depth, frames=frames, size=size, batch_size=batch_size)
    return step_rate(variant, settings, steps=steps)


def cpu_normalize_ms(frames: int, size: int, reps: int = 5) -> float:
    """What the workers no longer do: uint8 -> normalized float32 for one clip, on one core."""
    clip = torch.randint(0, 256, (3, frames, size, size), dtype=torch.uint8)
    normalize(clip)
    with Timer() as t:
        for _ in range(reps):
            normalize(clip)
    return 1000 * t.cpu / reps


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    import av

    return (
        f"{cpu}, {cores} cores usable (load average {load:.1f} at start), {gpu}; Python "
        f"{platform.python_version()}, torch {torch.__version__}, PyAV {av.__version__}"
    )


def _row(rows: list[dict], name: str, readers: int, key: str = "raw") -> dict:
    return next(r for r in rows if r["name"] == name and r["readers"] == readers and r["input"] == key)


def loader_table_rows(rows: list[dict], inputs: dict) -> list[list]:
    """The loader table: each row's CPU cost against the DataLoader and the raw read (pread) of
    the same input and readers; ``inputs``: input key -> (label, ...)."""
    out = []
    for r in rows:
        base = _row(rows, "dataloader", r["readers"], r["input"])["clips_per_cpu_s"]
        raw = [x for x in rows if x["name"] == "raw-read" and x["readers"] == r["readers"] and x["input"] == r["input"]]
        out.append(
            [
                r["name"],
                inputs[r["input"]][0],
                r["readers"],
                f"{r['clips_per_s']:.0f}",
                f"{r['clips_per_cpu_s']:.0f}",
                f"{r['clips_per_cpu_s'] / base:.2f}x",
                f"{r['clips_per_cpu_s'] / raw[0]['clips_per_cpu_s']:.2f}" if raw else "",
            ]
        )
    return out


def loader_checks(rows: list[dict], max_readers: int) -> list[str]:
    """The targets of the cache loader, per CPU-second into the same consumer (measured side by side)."""
    checks = []
    for w in sorted({1, max_readers}):
        r = _row(rows, "cache-loader", w)["clips_per_cpu_s"]
        checks.append(
            f"cache-loader at {w} reader(s): {r:.0f} clips per CPU-second (target >= 1,500), "
            f"{r / _row(rows, 'dataloader', w)['clips_per_cpu_s']:.1f}x the DataLoader (target >= 4x), "
            f"{r / _row(rows, 'raw-read', w)['clips_per_cpu_s']:.2f} of the raw read with pread and "
            f"{r / _row(rows, 'raw-read-mmap', w)['clips_per_cpu_s']:.2f} of the mmap one (target >= 0.7)"
        )
    dl1, dln = _row(rows, "dataloader", 1), _row(rows, "dataloader", max_readers)
    checks.append(
        f"dataloader (cache raw) at {max_readers} workers: {dln['clips_per_s'] / dl1['clips_per_s']:.2f}x "
        f"the clips/s of 1 worker (linear = {max_readers}x)"
    )
    return checks


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def run(args: argparse.Namespace) -> dict:
    unknown = set(args.loader_formats.split(",")) - {"mp4", "pt", "raw"}
    if unknown:
        raise SystemExit(f"--loader-formats: unknown input(s) {sorted(unknown)}; choose from mp4, pt, raw")
    torch.set_num_threads(1)  # per-core figures: one thread (workers run single-threaded too)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="data_throughput-"))
    results: dict = {"machine": machine(), "settings": vars(args).copy()}
    print(f"machine: {results['machine']}", flush=True)
    try:
        if args.videos:
            video_dir = Path(args.videos)
            names = real_clips(video_dir, args.clips)
            source = f"{len(names)} clips from {video_dir}"
        else:
            video_dir = work / f"videos-{args.clips}x{args.seconds}s{args.fps}"
            names = make_clips(video_dir, args.clips, args.seconds, args.fps)
            source = f"{len(names)} generated {args.seconds:g} s {args.fps} fps H.264 clips at MiT-like sizes"
        paths = {n: str(next(video_dir.rglob(n))) for n in names}
        print(f"clips: {source}", flush=True)
        T, size, stored = args.frames, args.size, args.stored_size

        # -- 2. preparation (first: it writes what (1) reads) ----------------------------------------
        prep_rows, prep = [], {}
        cache_dir = work / "cache-raw"
        shutil.rmtree(cache_dir, ignore_errors=True)
        with Timer() as t:
            prepare_cache(
                cache_dir,
                names,
                str(video_dir),
                frames=T,
                stored_size=stored,
                workers=0,
                progress=False,
                log=lambda m: None,
            )
        prep["raw"] = len(names) / t.cpu
        pt_dir = work / "pt"
        shutil.rmtree(pt_dir, ignore_errors=True)
        pt_dir.mkdir()
        with Timer() as t:
            for n in names:
                earlier_prepare(paths[n], pt_dir / (Path(n).stem + ".pt"), T, size)
        prep["seek"] = len(names) / t.cpu
        # the two decoders agree on which frames they return (checked on the first clip)
        from datasets.video import decode_clip

        same = np.array_equal(seek_decode(paths[names[0]], T), decode_clip(paths[names[0]], T)[0])
        for key, label in (
            ("raw", f"`prepare` ({T} frames, one pass, {stored}x{stored} uint8)"),
            ("seek", f"earlier: seek to each of {T} frames, {size}x{size} float32 .pt"),
        ):
            prep_rows.append([label, f"{prep[key]:.1f}", f"{prep[key] / prep['seek']:.1f}x"])
        results["prepare_videos_per_core_s"] = prep
        results["seek_frames_match_one_pass"] = bool(same)

        # -- 1. reading per worker core ---------------------------------------------------------------
        mp4_bytes = np.mean([os.path.getsize(p) for p in paths.values()])
        pt_bytes = np.mean([os.path.getsize(p) for p in pt_dir.glob("*.pt")])
        cache = FrameCache(cache_dir)
        common = dict(num_frames=T, size=size, train=True, seed=0)
        readers = {
            "mp4": (
                f"mp4 on the fly (decode, crop+flip {size}x{size} on the CPU)",
                VideoClipDataset(names, {}, video_dir, **common),
                collate_clips,
                mp4_bytes,
            ),
            "pt": (
                f"earlier float32 .pt ({size}x{size}, normalized)",
                EarlierPtClips(names, pt_dir),
                collate_clips,
                pt_bytes,
            ),
            "raw": (
                f"cache raw uint8 ({stored}x{stored})",
                CachedClipDataset(cache, names, {}, **common),
                collate_cached,
                cache.nbytes.mean(),
            ),
        }
        read, read_rows = {}, []
        for key, (label, dataset, collate, nbytes) in readers.items():
            print(f"reading: {label} ...", flush=True)
            read[key] = dict(worker_rate(dataset, collate, args.batch_size, args.min_time), bytes_per_clip=nbytes)
        for key, (label, *_rest) in readers.items():
            r = read[key]
            read_rows.append(
                [
                    label,
                    mb(r["bytes_per_clip"]),
                    f"{r['clips_per_cpu_s']:.0f}",
                    f"{r['clips_per_s']:.0f}",
                    f"{r['clips_per_cpu_s'] / read['pt']['clips_per_cpu_s']:.1f}x",
                    f"{r['bytes_per_clip'] / read['pt']['bytes_per_clip']:.2f}",
                ]
            )
        results["read_per_core"] = read
        results["cpu_normalize_ms_per_clip"] = cpu_normalize_ms(T, size)

        # -- 3. the loaders with 1..N readers -----------------------------------------------------------
        max_workers = args.max_workers or (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )
        raw_set, raw_collate = readers["raw"][1], readers["raw"][2]
        runs = [(name, "raw") for name in ("raw-read", "raw-read-mmap", "cache-loader")]
        runs += [("dataloader", key) for key in dict.fromkeys(["raw", *args.loader_formats.split(",")])]
        loader = []
        for w in range(1, max_workers + 1):
            for name, key in runs:
                print(f"loader: {name} ({key}), {w} reader(s) ...", flush=True)
                row = measure(name, readers[key][1], readers[key][2], args.batch_size, w, args.loader_time, device)
                loader.append({**row, "input": key})
        augmented = []
        for name in ("cache-loader", "dataloader"):
            print(f"loader: {name} + augmentation on {device.type}, {max_workers} reader(s) ...", flush=True)
            augmented.append(
                measure(
                    name, raw_set, raw_collate, args.batch_size, max_workers, args.loader_time, device, augment=True
                )
            )
        results["loader"], results["loader_augment"] = loader, augmented
        loader_rows = loader_table_rows(loader, readers)
        augment_rows = [
            [r["name"], r["readers"], f"{r['clips_per_s']:.0f}", f"{r['clips_per_cpu_s']:.0f}"] for r in augmented
        ]

        # -- 4. against the GPU's training step rate ---------------------------------------------------
        gpu_line = "no GPU here: the loader was not compared with a training step rate"
        if device.type == "cuda":
            rate = loop_step_rate(device, args.batch_size, T, size)
            best = max(r["clips_per_s"] for r in augmented if r["name"] == "cache-loader")
            results["gpu_step_clips_per_s"] = rate
            gpu_line = (
                f"{torch.cuda.get_device_name(device)}: ResNet3D-50 trains {rate:.0f} clips/s (bf16, "
                f"batch {args.batch_size}); the cache loader with augmentation delivers {best:.0f} clips/s "
                f"({best / rate:.2f}x the step rate) with {max_workers} workers"
            )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    pt_read, raw_read = read["pt"], read["raw"]
    checks = [
        f"cache raw vs .pt per core: {raw_read['clips_per_cpu_s'] / pt_read['clips_per_cpu_s']:.1f}x (target >= 5x) "
        f"at {raw_read['bytes_per_clip'] / pt_read['bytes_per_clip']:.2f} of its bytes per clip (target <= 0.33)",
        f"prepare vs seek per frame, per core: {prep['raw'] / prep['seek']:.1f}x (target >= 5x); "
        f"seek and one-pass frames identical: {'yes' if same else 'NO'}",
        *loader_checks(loader, max_workers),
        f"uint8 -> normalized float32 on the CPU: {results['cpu_normalize_ms_per_clip']:.1f} ms per "
        f"{T}x{size}x{size} clip (now done on the {'GPU' if device.type == 'cuda' else 'device'})",
        gpu_line,
    ]
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    report = "\n\n".join(
        [
            f"Machine: {results['machine']}; load average {load_end:.1f} at the end. Clips: {source}; "
            f"{T} frames, model input {size}x{size}, cache stored at {stored}x{stored}, batch {args.batch_size}.",
            "Reading, per worker core (train-mode item + collate; files in the page cache):\n\n"
            + table(
                ["format", "bytes/clip", "clips/s per core (CPU time)", "clips/s (wall)", "vs .pt", "bytes vs .pt"],
                read_rows,
            ),
            "Preparation, per core:\n\n" + table(["method", "videos/s per core", "vs seek"], prep_rows),
            f"Loaders -> the same consumer on {device.type} (it receives the batch as a tensor and reads it), "
            f"{args.batch_size} clips per batch; readers = threads or DataLoader workers; clips per CPU-second "
            "counts every thread and process:\n\n"
            + table(
                [
                    "loader",
                    "input",
                    "readers",
                    "clips/s (wall)",
                    "clips per CPU-second",
                    "vs dataloader (CPU)",
                    "vs raw read, pread (CPU)",
                ],
                loader_rows,
            ),
            f"Loaders -> augmentation on {device.type} (crop, resize, flip, normalize), raw cache:\n\n"
            + table(["loader", "readers", "clips/s (wall)", "clips per CPU-second"], augment_rows),
            "\n".join(f"- {c}" for c in checks if c),
        ]
    )
    if args.hd:
        report += "\n\n" + hd_rows(args, results)
    results["report"] = report
    return results


def hd_rows(args: argparse.Namespace, results: dict) -> str:
    """Section 5 (``--hd``): measured into ``results["hd"]``, returned as report text."""
    from benchmarks.hd_decoding import run_hd

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="data_throughput-hd-"))
    try:
        results["hd"], report = run_hd(
            work,
            args.frames,
            args.stored_size,
            args.size,
            args.hd_sizes,
            args.hd_clips,
            args.min_time,
            args.seconds,
            args.fps,
        )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return report


def run_hd_only(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    results: dict = {"machine": machine(), "settings": vars(args).copy()}
    print(f"machine: {results['machine']}", flush=True)
    report = hd_rows(args, results)
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    results["report"] = f"Machine: {results['machine']}; load average {load_end:.1f} at the end.\n\n{report}"
    return results


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=32, help="number of clips")
    p.add_argument("--videos", default=None, help="use real clips from this folder instead of generated ones")
    p.add_argument("--seconds", type=float, default=3.0, help="length of generated clips")
    p.add_argument("--fps", type=int, default=30, help="frame rate of generated clips")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (T = K)")
    p.add_argument("--size", type=int, default=224, help="model input size")
    p.add_argument("--stored-size", type=int, default=256, help="cache frame size")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds each per-core reading figure runs at least")
    p.add_argument(
        "--max-workers",
        type=int,
        default=0,
        help="loader readers (threads or DataLoader workers) up to this (0 = the usable cores)",
    )
    p.add_argument("--loader-time", type=float, default=3.0, help="seconds each loader figure runs at least")
    p.add_argument(
        "--loader-formats",
        default="mp4,pt,raw",
        help="inputs measured through the DataLoader besides raw (from: mp4, pt, raw)",
    )
    p.add_argument("--cpu", action="store_true", help="consumer on the CPU even when a GPU is there")
    p.add_argument("--work-dir", default=None, help="keep clips, caches and .pt files here (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument(
        "--hd",
        action="store_true",
        help="add the 720p/1080p rows: prepare vs seek, decoding options "
        "(opt-in: rendering the clips alone takes minutes)",
    )
    p.add_argument("--hd-only", action="store_true", help="only the --hd rows")
    p.add_argument("--hd-sizes", default="1280x720,1920x1080", help="WxH list of the generated HD clips")
    p.add_argument("--hd-clips", type=int, default=2, help="generated clips per HD size")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = run_hd_only(args) if args.hd_only else run(args)
    print("\n" + results["report"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({k: v for k, v in results.items()}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
