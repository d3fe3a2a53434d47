"""Inputs for benchmarks/train_throughput.py: synthetic batches on the device, and real
DataLoaders (decoded videos or the frame cache) for the data-wait rows.

``s`` below is a ``train_throughput.Settings``; PyAV is imported only by the DataLoader rows.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from utils.tasks import output_sizes, parse_tasks

if TYPE_CHECKING:  # type names only: train_throughput imports this module
    from benchmarks.train_throughput import Settings, Variant


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
    """uint8 clips made once on the device (from a seeded CPU generator: the same bytes in
    every variant's process) and CPU targets, in the loader's batch format (collate_clips)."""
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


def write_synthetic_videos(folder: Path, count: int, spec: str, seed: int) -> list[str]:
    """``count`` H.264 clips of moving colour gradients (cheap to make, real to decode)."""
    width, height, frames = (int(v) for v in spec.lower().split("x"))
    marker = folder / f"COMPLETE-{count}-{spec}-{seed}"
    names = [f"bench_{i:04d}.mp4" for i in range(count)]
    if marker.exists():
        return names
    from datasets.video import write_video  # PyAV: only the loader variants need it

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0 : 2 * width].astype(np.float32)
    for name in names:
        phase = rng.uniform(0, 2 * np.pi, 3)
        # one wide frame, panned across: motion for the codec at the cost of one sin per pixel
        wide = np.stack([127 + 100 * np.sin(xx / (13 + 7 * c) + yy / (17 + 5 * c) + phase[c]) for c in range(3)], -1)
        wide = wide.astype(np.uint8) + rng.integers(0, 12, wide.shape, dtype=np.uint8)  # texture
        step = max(1, width // max(1, frames))
        clip = np.stack([wide[:, (t * step) % width : (t * step) % width + width] for t in range(frames)])
        # fresh noise in every frame: residuals, so files and decode costs are nearer real clips'
        clip += rng.integers(0, 24, clip.shape, dtype=np.uint8)
        write_video(folder / name, clip, fps=30, options={"preset": "veryfast"})
    marker.write_text("done\n")
    return names


def _cache_for(folder: Path, names: list[str], s: Settings) -> Path:
    """A raw frame cache of the generated clips, made once with ``python -m datasets.prepare``'s code."""
    from datasets.prepare import prepare_cache

    stored = max(s.size, round(s.size * 256 / 224))  # prepare's default 256 for 224 training crops
    root = folder / f"cache-{s.frames}x{stored}"
    if not (root / "COMPLETE").exists():
        prepare_cache(
            root,
            names,
            str(folder),
            frames=s.frames,
            stored_size=stored,
            workers=max(0, min(8, (os.cpu_count() or 1) - 1)),
            progress=False,
            log=lambda *_: None,
        )
        (root / "COMPLETE").write_text("done\n")
    return root


def loader_batches(variant: Variant, s: Settings, batch_size: int, n_batches: int, device: torch.device):
    """(iterator over ``n_batches`` real batches, description, the DataLoader).

    ``loader`` variants decode videos (VideoClipDataset), ``cache`` variants read the frame
    cache (CachedClipDataset; crop/resize/flip on the device), as train_ddp.py does with
    --videos / --cache.  Without --annotations both use generated clips (and a cache made
    from them); with it, the table's videos (--videos) or cache (--cache).
    """
    import datasets as data  # PyAV from here on

    tasks = parse_tasks(s.tasks)
    if s.annotations:
        table, _ = data.load_annotation_table(s.annotations, tasks=tasks)
        names, targets = table["video_name"].tolist(), data.build_targets(table, tasks)
        if variant.cache and not s.cache:
            raise SystemExit(f"{variant.name}: --annotations needs --cache DIR for a cache row")
        if not variant.cache and not s.videos:
            raise SystemExit(f"{variant.name}: --annotations needs --videos DIR for a video-decoding row")
        folder, cache_dir = Path(s.videos or "."), s.cache
        what = f"{s.annotations}: " + (f"frame cache {s.cache}" if variant.cache else f"videos {s.videos}")
    else:
        if s.cache:
            raise SystemExit("--cache needs --annotations CSV (the targets of the cached videos)")
        folder = Path(s.video_dir) / f"{s.loader_video}-{s.loader_clips}"
        names = write_synthetic_videos(folder, s.loader_clips, s.loader_video, s.seed)
        targets = synthetic_targets(len(names), tasks, s.seed)
        cache_dir = _cache_for(folder, names, s) if variant.cache else None
        what = f"{len(names)} generated H.264 clips {s.loader_video}" + (
            f", raw frame cache {Path(cache_dir).name}" if variant.cache else ", decoded"
        )
    if variant.cache:
        base = data.CachedClipDataset(
            cache_dir,
            video_names=names,
            targets=targets,
            num_frames=s.frames,
            size=s.size,
            train=True,
            seed=s.seed,
        )
        collate = data.collate_cached
    else:
        base = data.VideoClipDataset(names, targets, folder, num_frames=s.frames, size=s.size, train=True, seed=s.seed)
        collate = data.collate_clips
    # train_ddp.py's own choice of loader (datasets.make_loader): reader threads for the cache,
    # DataLoader worker processes for decoded videos.  The clips cycle to fill n_batches batches,
    # each pass as another epoch (key (pass, clip)): new augmentation every pass.
    order = [(i // len(base), i % len(base)) for i in range(batch_size * n_batches)]
    loader = data.make_loader(
        base,
        order,
        batch_size,
        workers=s.num_workers,
        prefetch=s.prefetch_factor,
        pin_memory=device.type == "cuda",
        drop_last=True,
        collate_fn=collate,
    )
    kind = "reader threads" if isinstance(loader, data.CacheLoader) else "workers"
    return iter(loader), f"{what}; {s.num_workers} {kind} x prefetch {s.prefetch_factor}", loader
