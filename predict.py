"""Predict the annotation features of videos with a trained checkpoint.

    python predict.py --checkpoint best.pt clips/ more.mp4 list.txt --output predictions.csv
    torchrun --nproc_per_node=4 predict.py --checkpoint best.pt clips/ --output predictions.csv

PATH arguments: video files; folders (searched recursively for video files, hidden ones
skipped, in sorted order); or text files (.txt, .lst, .list) with one path per line (blank
lines and lines starting with # skipped; relative paths are relative to the list file's
folder).  The CSV has one row per video, in the order given: ``video`` (the path), ``video_name``
(its file name), then the predictions in the annotation table's schema (see
utils/evaluation.py: scores and confidences in [0, 1], people count class and
probabilities, Indoor/Outdoor with p(Outdoor)), then ``error``.  A video that cannot be read
(missing, corrupt, no frames) or that the decoding flags turn away (longer than
``--max-video-seconds``, frames larger than ``--max-video-pixels``, a partial download under
``--partial-videos skip``) gets a row with its error and empty predictions; the others go on.
Batched; on the GPU when there is one (one process per GPU under torchrun, each video
predicted exactly once), else on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

from datasets import MultiViewClipDataset, VideoIndex, add_decode_arguments, decode_policy_from_args, parse_views
from datasets.video_paths import VIDEO_EXTENSIONS, collect_video_paths, parse_extensions
from inference import CHECKPOINT_ERRORS, add_inference_arguments, infer_dataset, load_inference_model
from utils.cli import CommandLineParser, run_entry_point
from utils.distributed import destroy_distributed, init_distributed
from utils.evaluation import prediction_frame, write_csv


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(description="Predict social features of videos with a trained checkpoint.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="video files, folders, or text files listing videos")
    p.add_argument("--checkpoint", required=True, help="this project's checkpoint, or an earlier Lightning one")
    p.add_argument("--output", required=True, help="CSV to write")
    p.add_argument("--views", default="1x1", help="N temporal clips x M spatial crops per video, averaged")
    add_inference_arguments(p)
    p.add_argument("--depth", type=int, default=None, help="only for checkpoints that do not record it")
    p.add_argument("--tasks", default=None, help="only for checkpoints that do not record them")
    p.add_argument("--frames", type=int, default=None, help="clip length (default: as trained, else 16)")
    p.add_argument("--size", type=int, default=None, help="clip size (default: as trained, else 224)")
    p.add_argument(
        "--extensions", default=",".join(VIDEO_EXTENSIONS), help="file endings taken from folders (comma list)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dist-timeout", type=float, default=1800.0)
    add_decode_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        temporal, spatial = parse_views(args.views)
    except ValueError as exc:
        parser.error(f"--views: {exc}")
    decode_policy = decode_policy_from_args(args)
    extensions = parse_extensions(args.extensions)
    info = init_distributed(args.device, args.dist_timeout)
    try:
        try:
            model, spec = load_inference_model(
                args.checkpoint, depth=args.depth, tasks=args.tasks, frames=args.frames, size=args.size
            )
        except CHECKPOINT_ERRORS as exc:
            raise SystemExit(f"--checkpoint {exc}") from exc
        inputs = collect_video_paths(args.paths, extensions)
        if not inputs:
            raise SystemExit(f"no videos found in {args.paths} (file endings {', '.join(extensions)})")
        if info.is_main:
            for note in spec.notes:
                print(f"note: {note}", flush=True)
            if not info.distributed and torch.cuda.device_count() > 1:
                print(
                    f"note: {torch.cuda.device_count()} GPUs visible, one used; run under "
                    f"`torchrun --nproc_per_node={torch.cuda.device_count()}` to use all",
                    flush=True,
                )
            print(
                f"predicting {len(inputs)} videos with {spec.path} ({spec.network}, "
                f"{spec.frames}x{spec.size}px, {temporal}x{spatial} views) on {info.world_size} "
                f"process(es), {info.device}",
                flush=True,
            )
        # Missing files never reach the loader: their error is known now and needs no decoding.
        exists = [os.path.isfile(p) for p in inputs]
        readable = [os.path.abspath(p) for p, ok in zip(inputs, exists) if ok]
        dataset = MultiViewClipDataset(
            readable,
            {},
            os.sep,
            num_frames=spec.frames,
            size=spec.size,
            temporal_views=temporal,
            spatial_views=spatial,
            index=VideoIndex(root=os.sep),
            decode_policy=decode_policy,
        )
        probs, errors = infer_dataset(
            model,
            dataset,
            info,
            spec.tasks,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            amp=args.amp,
            progress=not args.no_progress,
            desc="predicting",
        )
        if not info.is_main:
            return 0
        return write_predictions(args, inputs, exists, probs, errors, spec, t0)
    finally:
        destroy_distributed()


def write_predictions(args, inputs, exists, probs, errors, spec, t0) -> int:
    """Rank 0: merge the loader's rows with the missing files' rows, in input order."""
    n = len(inputs)
    rows = np.flatnonzero(exists)
    full = {}
    for name, values in probs.items():
        full[name] = np.full((n, *values.shape[1:]), np.nan, dtype=np.float32)
        full[name][rows] = values
    all_errors: list[str | None] = [f"{p}: FileNotFoundError: no such file" for p in inputs]
    for row, error in zip(rows, errors):
        all_errors[row] = error
    frame = prediction_frame(
        {"video": inputs, "video_name": [os.path.basename(p) for p in inputs]}, full, spec.tasks, all_errors
    )
    write_csv(frame, args.output)
    failed = [e for e in all_errors if e is not None]
    print(
        f"wrote {args.output}: {n - len(failed)} of {n} videos predicted in {time.perf_counter() - t0:.1f} s"
        + (f"; {len(failed)} could not be read (see the error column)" if failed else ""),
        flush=True,
    )
    for error in failed[:10]:
        print(f"  {error}", flush=True)
    if len(failed) > 10:
        print(f"  ... and {len(failed) - 10} more", flush=True)
    return 1 if len(failed) == n else 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
