"""Per-layer features of every video, for encoding models and RSA: one memory-mapped .npy per layer.

    python extract_features.py --checkpoint best.pt --videos DIR --annotations CSV --split all \\
        --layers layer2,layer3,layer4,avgpool,last_linear --output feats/     # mean-pooled, float32
    torchrun --nproc_per_node=8 extract_features.py ...                      # same files, faster
    python extract_features.py --random-init --depth 50 clips/ list.txt --output feats_rand/
    python extract_features.py --checkpoint moments_resnet3d50.pth.tar --list-layers

Model: this project's checkpoint, an earlier Lightning one, the official Moments in Time weights
(backbone only: their classifier is dropped on loading), or ``--random-init --depth N`` (seeded
by ``--seed``) as the untrained control.  Videos: an annotation table's split (``--annotations
--split``, clips from ``--videos DIR`` or the frame cache ``--cache DIR``) or, like predict.py,
video files, folders and .txt lists.  Clips are sampled as evaluate.py samples them
(``--views NxM``: N temporal clips x M spatial crops, each video's views averaged after pooling),
and the network runs as in evaluation (autocast on GPUs per ``--amp``); ``--dtype`` is only the
storage type.

Layers are the model's own module names (``--list-layers`` prints them with their shapes for
the chosen ``--frames``/``--size``): ``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1`` ...
``layer4`` and their blocks (``layer4.2``), ``avgpool``, and ``last_linear`` (the multi-task
head's outputs, concatenated; only for checkpoints with a trained head).  The pass stops after
the deepest layer asked for.

Every video is extracted exactly once whatever the number of processes; a video that cannot be
read keeps its row (status ``error``, NaN features).  A rerun of the same command continues an
interrupted extraction (see analysis/features/store.py); a rerun on a complete one does nothing.

Outputs in --output (the format ``align_features.py`` reads; docs/features.md):
    features.json   manifest: format_version, complete, num_videos, layers {name: file, shape,
                    dtype, axes, ...}, pool, frames, size, views, checkpoint, project_dim, versions, ...
    index.csv       row, video_name, path, status (ok | error | pending), error
    <layer>.npy     first axis = index.csv rows: (N, C) mean/max, (N, C, T') time,
                    (N, C, T', H', W') none, (N, D) projected
    file_names.txt  the ok rows' video_name, one a line, in row order (thingsvision's list)
    net2brain_consolidated/<layer>.npz   with --export npz: Net2Brain's consolidated per-layer
                    files, the ok rows keyed by file stem (analysis/features/exports.py)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import torch

from analysis.features.exports import EXPORTS, check_exportable
from analysis.features.layers import LayerInfo, LayerTap, list_layers
from analysis.features.manifest import layer_entry, stored_shape
from analysis.features.pooling import POOLS, average_views, pool, pooled_shape
from analysis.features.projection import NONZEROS_PER_INPUT, SparseRandomProjection, layer_seed
from analysis.features.provenance import peak_rss_mib, rss_mib, sha256_file, sha256_rows, versions
from analysis.features.store import FORMAT_VERSION, PENDING, FeatureStore, FeatureStoreError
from datasets import (
    MultiViewClipDataset,
    PtClipsError,
    VideoIndex,
    load_annotation_table,
    parse_views,
    scan_video_root,
)
from datasets.splits import SPLIT_METHODS, SPLIT_NAMES, select_split
from datasets.video_paths import VIDEO_EXTENSIONS, collect_video_paths, parse_extensions
from inference import (
    CHECKPOINT_ERRORS,
    add_inference_arguments,
    clips_to_model_input,
    load_inference_model,
    open_cached_views,
    place_model,
    random_init_model,
    shard_loader,
)
from utils.cli import CommandLineParser, progress_bar, run_entry_point
from utils.distributed import all_gather_objects, broadcast_object, destroy_distributed, init_distributed
from utils.precision import resolve_amp

HEAD = "last_linear"
DEFAULT_LAYERS = "layer1,layer2,layer3,layer4"
INDEX_REFRESH_S = 30.0  # how stale index.csv may be while a run goes on


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(description="Per-layer features of every video, one memory-mapped .npy per layer.")
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="video files, folders or .txt lists (instead of --annotations)"
    )
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="this project's, an earlier Lightning, or an official MiT checkpoint")
    model.add_argument("--random-init", action="store_true", help="an untrained network of --depth (seeded)")
    p.add_argument(
        "--depth", type=int, default=None, help="with --random-init; or for checkpoints that do not record it"
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--videos",
        help="video root (with --annotations: searched recursively for its video_name; alone: every video under it)",
    )
    src.add_argument("--cache", help="frame cache directory (python -m datasets.prepare); needs --annotations")
    p.add_argument("--annotations", default=None, help="CSV with a video_name column (an annotation table)")
    p.add_argument("--split", default="all", choices=(*SPLIT_NAMES, "all"), help="which videos of the table")
    p.add_argument(
        "--split-method",
        default=None,
        choices=SPLIT_METHODS,
        help="how the table is split (default: what the checkpoint was trained with, else auto)",
    )
    p.add_argument("--val-fraction", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--test-fraction", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--layers", default=DEFAULT_LAYERS, help="comma list of layer names, or 'all' (see --list-layers)")
    p.add_argument("--list-layers", action="store_true", help="print the layers with their shapes and exit")
    p.add_argument("--pool", default="mean", choices=POOLS, help="what is kept of each (C, T, H, W) output")
    p.add_argument("--views", default="1x1", help="N temporal clips x M spatial crops per video, averaged")
    p.add_argument("--dtype", default="float32", choices=("float16", "float32"), help="storage type of the arrays")
    p.add_argument(
        "--project-dim",
        type=int,
        default=None,
        help="sparse random projection of every layer larger than this to this many dimensions",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random-init and of the projection")
    p.add_argument("--output", default=None, help="output folder (required unless --list-layers)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier extraction in --output first")
    p.add_argument(
        "--export",
        default=None,
        choices=EXPORTS,
        help="also write net2brain_consolidated/<layer>.npz (Net2Brain's per-layer files, keyed by file stem)",
    )
    p.add_argument("--frames", type=int, default=None, help="clip length (default: as trained, else 16)")
    p.add_argument("--size", type=int, default=None, help="clip size (default: as trained, else 224)")
    add_inference_arguments(p, amp_note="features are stored as --dtype")
    p.add_argument("--extensions", default=",".join(VIDEO_EXTENSIONS), help="file endings taken from folders")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dist-timeout", type=float, default=1800.0, help="seconds a collective may wait")
    return p


def check_arguments(p: argparse.ArgumentParser, args) -> None:
    if args.random_init and args.depth is None:
        p.error("--random-init needs --depth (18, 34, 50, 101 or 152)")
    if args.list_layers:
        return
    if args.output is None:
        p.error("--output is required")
    if args.annotations and args.paths:
        p.error("give either --annotations (with --videos or --cache) or video PATHs, not both")
    if args.annotations and not (args.videos or args.cache):
        p.error("--annotations needs --videos DIR or --cache DIR to find the clips")
    if args.cache and not args.annotations:
        p.error("--cache needs --annotations (the frame cache is addressed by the table's video_name)")
    if not (args.annotations or args.paths or args.videos):
        p.error("no videos: give --annotations with --videos/--cache, or video PATHs, or --videos DIR")
    if args.project_dim is not None and args.project_dim < 1:
        p.error("--project-dim must be >= 1")


def log0(info, *msg) -> None:
    if info.is_main:
        print(*msg, flush=True)


def load_model(args):
    if args.random_init:
        return random_init_model(args.depth, seed=args.seed, frames=args.frames, size=args.size)
    try:
        return load_inference_model(
            args.checkpoint, depth=args.depth, frames=args.frames, size=args.size, require_heads=False
        )
    except CHECKPOINT_ERRORS as exc:
        raise SystemExit(f"--checkpoint {exc}") from exc


def choose_layers(names: str, available: list[LayerInfo], spec) -> list[LayerInfo]:
    """The requested layers in the order given; unknown names and an untrained head refused."""
    by_name = {info.name: info for info in available}
    wanted = list(by_name) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise SystemExit("--layers is empty")
    for name in wanted:
        if name == HEAD and name not in by_name:
            raise SystemExit(
                f"--layers {HEAD}: {no_head_reason(spec)}; the head's input is the layer "
                "avgpool (the pooled backbone features)"
            )
        if name not in by_name:
            raise SystemExit(
                f"--layers: no layer {name!r} in {spec.network}; valid names: "
                f"{', '.join(by_name)} (--list-layers prints their shapes)"
            )
    return [by_name[n] for n in dict.fromkeys(wanted)]


def no_head_reason(spec) -> str:
    if spec.kind == "random_init":
        return "a --random-init network has no trained head"
    if spec.kind == "mit":
        return (
            f"{spec.path} holds the official Moments in Time weights, whose classifier is dropped on loading "
            "(the project's multi-task head replaces it in training), so there is no trained head to read"
        )
    return f"{spec.path} holds no multi-task head"


def print_layers(available: list[LayerInfo], spec, pool_mode: str, project_dim: int | None) -> None:
    print(
        f"layers of {spec.network} ({spec.kind}{': ' + spec.path if spec.path else ''}) for "
        f"{spec.frames} frames x {spec.size} px; output per clip, and stored per video with --pool {pool_mode}"
        + (f" --project-dim {project_dim}" if project_dim else "")
        + ":"
    )
    for info in available:
        shape, projected = stored_shape(info, pool_mode, project_dim)
        print(
            f"  {info.name:<12} {'x'.join(map(str, info.shape)):>20}  ->  {'x'.join(map(str, shape))}"
            + ("  (projected)" if projected else "")
        )
    if not any(info.name == HEAD for info in available):
        print(f"  ({HEAD} is not offered: {no_head_reason(spec)})")


def videos_of_table(args, spec) -> tuple[list[str], dict]:
    """The table's video names of ``--split``, in table order, and where they came from."""
    try:
        table, _ = load_annotation_table(args.annotations, require_targets=False)
        rows, how = np.arange(len(table)), None
        if args.split != "all":  # "all" needs no split, so a plain stimulus list without one will do
            rows, _, how = select_split(
                table,
                args.split,
                method=args.split_method,
                val_fraction=args.val_fraction,
                test_fraction=args.test_fraction,
                trained_with=spec.config,
                source=args.annotations,
            )
    except ValueError as exc:  # AnnotationError, SplitError: they name the file, row and column
        raise SystemExit(f"--annotations: {exc}") from exc
    if len(rows) == 0:
        raise SystemExit(
            f"split {args.split!r} of {args.annotations} is empty" + (f" (split method {how['method']})" if how else "")
        )
    source = {
        "kind": "cache" if args.cache else "videos",
        "annotations": os.path.abspath(args.annotations),
        "split": args.split,
        "split_method": how,
    }
    return table["video_name"].to_numpy()[rows].tolist(), source


def videos_of_paths(args) -> list[str]:
    """Video files, folders and lists (predict.py's rules) as absolute paths, in the order given."""
    given = args.paths or [args.videos]
    found = collect_video_paths(given, parse_extensions(args.extensions))
    if not found:
        raise SystemExit(f"no videos found in {given}")
    return [os.path.abspath(p) for p in found]


def clip_dataset(args, spec, names: list[str], temporal: int, spatial: int, source: dict):
    """The multi-view dataset of ``names`` (evaluate.py's), each row's path, and the rows whose
    failure is known without decoding (a missing file, a video the cache lacks)."""
    if args.cache:
        dataset = open_cached_views(args.cache, names, spec, temporal, spatial)
        source["cache"] = os.path.abspath(args.cache)
        failed = {
            i: f"{n}: LookupError: {dataset.cache.why_missing(n)}" for i, n in enumerate(names) if dataset.rows[i] < 0
        }
        return dataset, [source["cache"]] * len(names), failed
    if args.annotations:
        try:
            index = scan_video_root(args.videos)
        except FileNotFoundError as exc:
            raise SystemExit(f"--videos: {exc}") from exc
        source["videos"] = os.path.abspath(args.videos)
        root = args.videos
    else:
        index, root = VideoIndex(root=os.sep), os.sep  # absolute paths resolve as they are
    try:
        dataset = MultiViewClipDataset(
            names,
            {},
            root,
            num_frames=spec.frames,
            size=spec.size,
            temporal_views=temporal,
            spatial_views=spatial,
            index=index,
        )
    except PtClipsError as exc:
        raise SystemExit(f"--videos {args.videos}: {exc}") from exc
    if args.annotations:
        failed = {
            i: f"{os.path.join(root, n)}: FileNotFoundError: no {n!r} under {root}"
            for i, (n, p) in enumerate(zip(names, dataset.paths))
            if not p
        }
        return dataset, dataset.paths.tolist(), failed  # a table's missing video has no path
    failed = {i: f"{n}: FileNotFoundError: no such file" for i, (n, p) in enumerate(zip(names, dataset.paths)) if not p}
    return dataset, names, failed


def build_inputs(args, spec, temporal: int, spatial: int):
    """The videos in row order: (table of video_name + path, dataset, rows known to fail, source)."""
    if args.annotations:
        names, source = videos_of_table(args, spec)
    else:
        names, source = videos_of_paths(args), {"kind": "paths"}
    dataset, paths, failed = clip_dataset(args, spec, names, temporal, spatial, source)
    shown = names if args.annotations else [os.path.basename(n) for n in names]
    return pd.DataFrame({"video_name": shown, "path": paths}), dataset, failed, source


def build_manifest(args, spec, layers, inputs, source, temporal, spatial, autocast) -> dict:
    n = len(inputs)
    entries = {layer.name: layer_entry(layer, n, args.pool, args.project_dim, args.dtype) for layer in layers}
    checkpoint = {
        "path": os.path.abspath(spec.path) if spec.path else None,
        "kind": spec.kind,
        "depth": spec.depth,
        "sha256": sha256_file(spec.path) if spec.path else None,
        "step": spec.step,
        "training_run_id": spec.run_id,
        "tasks": list(spec.tasks),
    }
    if spec.kind == "random_init":
        checkpoint["seed"] = args.seed
    projection = None
    if args.project_dim is not None:
        projection = {
            "method": "sparse Johnson-Lindenstrauss (block construction), see analysis/features/projection.py",
            "nonzeros_per_input": NONZEROS_PER_INPUT,
            "seed": args.seed,
        }
    return {
        "format_version": FORMAT_VERSION,
        "complete": False,
        "num_videos": n,
        "layers": entries,
        "pool": args.pool,
        "frames": spec.frames,
        "size": spec.size,
        "views": f"{temporal}x{spatial}",
        "dtype": args.dtype,
        "checkpoint": checkpoint,
        "project_dim": args.project_dim,
        "projection": projection,
        "autocast": str(autocast).replace("torch.", "") if autocast else None,
        "source": source,
        "inputs_sha256": sha256_rows(inputs[["video_name", "path"]].itertuples(index=False)),
        "versions": versions(),
        "counts": {"ok": 0, "error": 0, "pending": n},
        "attempts": [],
    }


def prepare_store(store, args, info, spec, layers, inputs, failed, source, temporal, spatial, autocast):
    """Rank 0 creates or checks the files, records the known failures and this attempt; every rank
    learns the outcome (or the reason to stop) at the same time, so no rank waits for a dead one."""
    outcome, manifest = None, None
    if info.is_main:
        try:
            manifest = build_manifest(args, spec, layers, inputs, source, temporal, spatial, autocast)
            outcome = store.prepare(manifest, inputs, overwrite=args.overwrite)
            if outcome != "complete":
                status = store.status()
                rows = [i for i in sorted(failed) if status[i] == PENDING]
                store.fail_rows(rows, [failed[i] for i in rows])
                earlier = store.read_manifest().get("attempts", []) if outcome == "resumed" else []
                manifest["attempts"] = [
                    *earlier,
                    {
                        "started": datetime.now(UTC).isoformat(timespec="seconds"),
                        "world_size": info.world_size,
                        "device": str(info.device),
                        "batch_size": args.batch_size,
                        "versions": manifest["versions"],
                    },
                ]
                store.write_manifest(manifest)  # an attempt that is killed stays on record, without results
        except (FeatureStoreError, OSError) as exc:
            outcome = f"error: --output: {exc}"
    outcome = broadcast_object(outcome, info)
    if outcome.startswith("error: "):
        raise SystemExit(outcome[len("error: ") :])
    return outcome, manifest


class IndexRefresher:
    """Rank 0 rewrites index.csv from the status file now and then, so an interrupted run's index
    says which rows are done (at most INDEX_REFRESH_S stale)."""

    def __init__(self, store, inputs, enabled: bool) -> None:
        self.store, self.inputs, self.enabled = store, inputs, enabled
        self.last = time.monotonic()

    def __call__(self) -> None:
        if self.enabled and time.monotonic() - self.last > INDEX_REFRESH_S:
            self.store.write_index(self.inputs)
            self.last = time.monotonic()


@torch.no_grad()
def extract_shard(
    tap, loader, store, *, device, size, channels_last, autocast, views, projections, progress, after_batch
) -> list[int]:
    """This rank's rows: features written and their status set batch by batch; returns the rows done."""
    done: list[int] = []
    for batch in loader:
        store.fail_rows(batch["bad_indices"], [error for _, error in batch["bad"]])
        rows = batch["indices"].numpy()
        if len(rows):
            x = clips_to_model_input(batch["video"], device, size=size, channels_last=channels_last)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                kept = tap(x)
            values = {}
            for name, value in kept.items():
                value = average_views(value, views)
                if name in projections:
                    value = projections[name](value.flatten(1))
                values[name] = value.cpu().numpy()
            store.write_rows(rows, values)
        done += rows.tolist() + list(batch["bad_indices"])
        progress.update(len(rows) + len(batch["bad_indices"]))
        after_batch()
    return done


def check_exactly_once(done_by_rank: list[list[int]], pending: np.ndarray, num_rows: int) -> None:
    """Every pending row done by exactly one rank, and no other row touched."""
    seen = np.zeros(num_rows, dtype=np.int64)
    for rows in done_by_rank:
        np.add.at(seen, np.asarray(rows, dtype=np.int64), 1)
    expected = np.zeros(num_rows, dtype=np.int64)
    expected[pending] = 1
    if np.any(seen != expected):
        raise RuntimeError(
            f"exactly-once violated over {len(done_by_rank)} ranks: rows done too often "
            f"{np.flatnonzero(seen > expected)[:10].tolist()}, never "
            f"{np.flatnonzero(seen < expected)[:10].tolist()}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    t0 = time.perf_counter()
    try:
        temporal, spatial = parse_views(args.views)
    except ValueError as exc:
        parser.error(f"--views: {exc}")
    info = init_distributed(args.device, args.dist_timeout)
    try:
        # Everything that can fail on bad input happens on every rank before the long part.
        model, spec = load_model(args)
        for note in spec.notes:
            log0(info, f"note: {note}")
        available = list_layers(model, spec.frames, spec.size)
        if args.list_layers:
            if info.is_main:
                print_layers(available, spec, args.pool, args.project_dim)
            return 0
        layers = choose_layers(args.layers, available, spec)
        inputs, dataset, failed, source = build_inputs(args, spec, temporal, spatial)
        try:
            check_exportable(inputs["video_name"].astype(str).tolist(), npz=args.export == "npz")
        except ValueError as exc:
            raise SystemExit(str(exc)) from exc
        autocast = resolve_amp(args.amp, info.device, quiet=not info.is_main)
        store = FeatureStore(args.output, [layer.name for layer in layers], rank=info.rank)
        outcome, manifest = prepare_store(
            store, args, info, spec, layers, inputs, failed, source, temporal, spatial, autocast
        )
        if outcome == "complete":
            log0(info, f"{args.output} already holds this extraction, complete; nothing to do")
            if info.is_main:
                export(args, store, store.read_manifest(), inputs)
            return 0
        pending = np.flatnonzero(store.status() == PENDING)
        log0(
            info,
            f"extracting {', '.join(layer.name for layer in layers)} (--pool {args.pool}) of "
            f"{len(pending)} of {len(inputs)} videos"
            + (" (continuing)" if outcome == "resumed" else "")
            + f" with {spec.network} ({spec.kind}), {spec.frames}x{spec.size}px, {temporal}x{spatial} "
            f"views, on {info.world_size} process(es), {info.device}",
        )
        if not info.distributed and torch.cuda.device_count() > 1:
            log0(
                info,
                f"note: {torch.cuda.device_count()} GPUs visible, one used; run under "
                f"`torchrun --nproc_per_node={torch.cuda.device_count()}` to use all",
            )
        t_loop, rss_before = time.perf_counter(), rss_mib()
        done = run_extraction(
            args, info, spec, model, layers, dataset, store, inputs, pending, autocast, temporal * spatial
        )
        loop_s = time.perf_counter() - t_loop
        shares = all_gather_objects(
            {
                "rows": done,
                "seconds": loop_s,
                "peak_rss_mib": peak_rss_mib(),
                "rss_before_mib": rss_before,
                "gpu_peak_mib": gpu_peak_mib(info.device),
            },
            info,
        )
        if not info.is_main:
            return 0
        check_exactly_once([s["rows"] for s in shares], pending, len(inputs))
        return finish(args, store, manifest, inputs, shares, info, time.perf_counter() - t0)
    finally:
        destroy_distributed()


def run_extraction(args, info, spec, model, layers, dataset, store, inputs, pending, autocast, views) -> list[int]:

    loader = shard_loader(dataset, info, batch_size=args.batch_size, num_workers=args.num_workers, indices=pending)
    channels_last = place_model(model, info.device)
    projections = {}
    for layer in layers:
        shape, projected = stored_shape(layer, args.pool, args.project_dim)
        if projected:
            in_dim = int(np.prod(pooled_shape(layer.shape, args.pool)))
            projections[layer.name] = SparseRandomProjection(
                in_dim, args.project_dim, layer_seed(args.seed, layer.name), info.device
            )
    suffix = f" (rank 0 of {info.world_size})" if info.world_size > 1 else ""
    bar = progress_bar(
        total=len(loader.sampler),
        desc="extracting" + suffix,
        unit="video",
        disable=not (info.is_main and not args.no_progress),
    )
    try:
        with LayerTap(model, layers, reduce=lambda output: pool(output, args.pool)) as tap:
            return extract_shard(
                tap,
                loader,
                store,
                device=info.device,
                size=spec.size,
                channels_last=channels_last,
                autocast=autocast,
                views=views,
                projections=projections,
                progress=bar,
                after_batch=IndexRefresher(store, inputs, info.is_main),
            )
    finally:
        bar.close()


def gpu_peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def export(args, store, manifest, inputs) -> None:
    """Rank 0, on a complete extraction: file_names.txt and the --export files."""
    written = store.write_exports(inputs, manifest, npz=args.export == "npz")
    shown = [os.path.relpath(p, args.output) for p in written]
    print(f"exported {', '.join(shown[:4])}" + (f" and {len(shown) - 4} more" if len(shown) > 4 else ""), flush=True)


def finish(args, store, manifest, inputs, shares, info, total_s) -> int:
    """Rank 0: the index and the manifest from the status file, and a summary."""
    counts = store.write_index(inputs)
    processed = sum(len(s["rows"]) for s in shares)
    slowest = max(s["seconds"] for s in shares)
    attempt = {
        "videos": processed,
        "extraction_s": round(slowest, 3),
        "videos_per_s": round(processed / slowest, 3) if slowest > 0 else None,
        "total_s": round(total_s, 3),
        "peak_rss_mib": round(max(s["peak_rss_mib"] for s in shares), 1),
        "rss_growth_mib": round(max(s["peak_rss_mib"] - s["rss_before_mib"] for s in shares), 1),
        "gpu_peak_mib": max((s["gpu_peak_mib"] for s in shares if s["gpu_peak_mib"] is not None), default=None),
    }
    manifest["attempts"][-1].update(attempt)
    manifest["counts"] = counts
    manifest["complete"] = counts["pending"] == 0
    store.write_manifest(manifest)
    if manifest["complete"]:  # every row is final here: all ranks' rows are written and gathered
        export(args, store, manifest, inputs)
    failed = store.errors()
    print(
        f"wrote {args.output}: {counts['ok']} of {len(inputs)} videos ok, {counts['error']} failed; "
        f"{processed} extracted in {slowest:.1f} s ({attempt['videos_per_s']} videos/s over {info.world_size} "
        f"process(es)); peak memory {attempt['peak_rss_mib']:.0f} MiB RSS (+{attempt['rss_growth_mib']:.0f} MiB "
        "during extraction)" + (f", GPU {attempt['gpu_peak_mib']:.0f} MiB" if attempt["gpu_peak_mib"] else ""),
        flush=True,
    )
    for row, error in list(sorted(failed.items()))[:10]:
        print(f"  row {row}: {error}", flush=True)
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more (index.csv)", flush=True)
    if not manifest["complete"]:
        print(f"error: {counts['pending']} rows are still pending; rerun the same command", file=sys.stderr)
        return 1
    return 1 if counts["ok"] == 0 else 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
