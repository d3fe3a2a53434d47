"""Build a frame cache: decode every video of an annotation table once, keep K frames as uint8.

    python -m datasets.prepare --videos DIR --annotations CSV --out CACHE_DIR [--workers N]
        [--frames 16] [--stored-size 256] [--shard-size 256]
        [--partial-videos use|skip] [--max-video-seconds 30] [--max-video-pixels 2088960]
    python -m datasets.prepare --from-pt PT_DIR --annotations CSV --out CACHE_DIR   # earlier .pt clips

Each video is decoded in one pass (:func:`datasets.video.decode_clip`: the centre frame of
each of K equal segments of the frames the file holds, of time on variable-rate files; upright;
frames larger than 2S converted at 2S), resized so its short side is S and centre-cropped to
S x S (S = ``--stored-size``; 256 leaves room for 224 training crops), and appended to a shard.
See :mod:`datasets.cache` for the layout and why.

Workers: each worker process writes whole shards (``--shard-size`` videos each) under a
temporary name and commits a shard by fsync + rename + writing its index; a tqdm bar counts
videos.  Resume: rerunning the same command skips every video already in a committed shard
and removes what an interrupted run left behind (temporary files, a shard without an index),
so nothing half-written can ever be read as valid.  Videos that failed are tried again.
Lost work after a kill: at most the shards being written, ``workers x shard-size`` videos.

The cache records its parameters in ``cache.json``; a rerun with other parameters (frames,
size, sampling) into the same directory is refused.  At the end ``manifest.csv``
(one row per video: source, declared and real frame count, fps, size, frames kept, status,
error, note, location) and ``failures.csv`` (every row whose status is not ``ok``) are written.
Statuses: ``ok``; ``short`` (fewer frames than K: stored with repeated frames like the video
Dataset does); ``partial`` (the file ends early, a partial download: stored from the frames that
decode, unless ``--partial-videos skip``); ``skipped`` (over ``--max-video-seconds`` or
``--max-video-pixels``, or partial under ``skip``: not stored, retried by a rerun); ``failed``
(corrupt, empty, unreadable); ``missing`` (no file).  The ``note`` column says what else sets a
stored file apart: a header frame count that is wrong, a variable frame rate, a rotation, a
reduced decoding size.

``--from-pt`` converts the earlier Lightning version's float32 [3, T, H, W] ImageNet-normalized
clips: de-normalize, round, clamp to uint8.  These keep their own frames and size (usually
16 frames at 224: no room for crops around 224, so training crops inside the 224 square).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_file, atomic_write_text, fsync_dir
from utils.cli import CommandLineParser, progress_bar
from utils.precision import IMAGENET_MEAN, IMAGENET_STD

from .cache import (
    FAILURES_FILE,
    MANIFEST_FIELDS,
    MANIFEST_FILE,
    SHARD_DIR,
    STORED_STATUSES,
    CacheMismatchError,
    CacheParams,
    read_params,
    write_csv,
    write_params,
)
from .decode_policy import add_decode_arguments, decode_policy_from_args

__all__ = ["fit_clip", "decode_for_cache", "legacy_pt_clip", "prepare_cache", "main"]

# A legacy clip whose de-normalized values fall this far outside [0, 255] was not made with
# ImageNet statistics; converting it would silently change its colours.
LEGACY_TOLERANCE = 2.0
LOCK_FILE = ".prepare.lock"
SHARD_NAME = "shard-{:06d}"


# ------------------------------------------------------------------------------------------------
# one video -> one clip
# ------------------------------------------------------------------------------------------------
def fit_clip(frames: np.ndarray, stored_size: int) -> np.ndarray:
    """uint8 (K, H, W, 3) -> (K, 3, S, S): short side resized to S (bilinear, antialiased),
    centre S x S kept.  The same resize as the video Dataset's evaluation transform."""
    from .augment import frames_to_tensor, resize_center_crop

    return resize_center_crop(frames_to_tensor(frames), stored_size).contiguous().numpy()


def decode_for_cache(path: str, params: CacheParams, policy=None) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode ``path`` once and return (clip (K, 3, S, S) uint8, manifest facts).

    ``policy``: a :class:`datasets.decode_policy.DecodePolicy` (default: its defaults); files it
    turns away raise :class:`datasets.decode_policy.VideoSkipped`."""
    from .video import decode_clip, partial_note

    frames, info = decode_clip(path, params.frames, None, threads=1, short_side=params.stored_size, policy=policy)
    facts = {
        "declared_frames": info["declared_frames"],
        "total_frames": info["total_frames"],
        "fps": round(info["fps"], 4),
        "height": info["source_height"],
        "width": info["source_width"],
        "frames_kept": params.frames,
        "frame_indices": " ".join(map(str, info["indices"])),
        "note": "; ".join(n for n in info["notes"] if n != partial_note(info)),  # the partial one is the error
    }
    problems = []
    if info["partial"]:
        facts["status"] = "partial"
        problems.append(f"partial file: {info['partial']}")
    if info["total_frames"] < params.frames:
        facts.setdefault("status", "short")
        problems.append(f"only {info['total_frames']} frames for {params.frames}: frames repeat")
    if problems:
        facts["error"] = "; ".join(problems)
    return fit_clip(frames, params.stored_size), facts


def legacy_pt_clip(path: str, params: CacheParams | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """An earlier-version float32 [3, T, H, W] normalized clip -> (uint8 (T, 3, H, W), facts)."""
    import torch

    video = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(video, torch.Tensor) or not video.is_floating_point() or video.ndim != 4 or video.shape[0] != 3:
        what = f"{video.dtype} {tuple(video.shape)}" if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"expected a float tensor [3, T, H, W], found {what}")
    _, t, h, w = video.shape
    if params is not None and (t, h, w) != (params.frames, params.stored_size, params.stored_size):
        raise ValueError(
            f"clip is {t}x{h}x{w}, the other clips of this cache are "
            f"{params.frames}x{params.stored_size}x{params.stored_size}"
        )
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)  # the earlier Lightning version normalized with these
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    values = (video.float() * std + mean) * 255
    worst = max(float(-values.min()), float(values.max()) - 255, 0.0)
    if worst > LEGACY_TOLERANCE:
        raise ValueError(f"de-normalized values reach {worst:.1f} outside [0, 255]: not an ImageNet-normalized clip")
    clip = values.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3).contiguous().numpy()
    facts = {"declared_frames": t, "total_frames": t, "height": h, "width": w, "frames_kept": t}
    return clip, facts


# ------------------------------------------------------------------------------------------------
# shards
# ------------------------------------------------------------------------------------------------
def shard_paths(root: Path, shard_id: int) -> tuple[Path, Path]:
    name = SHARD_NAME.format(shard_id)
    return root / SHARD_DIR / f"{name}.bin", root / SHARD_DIR / f"{name}.json"


def write_shard(
    root: Path,
    shard_id: int,
    items: list[tuple[str, str]],
    params: CacheParams,
    source_kind: str,
    tick: Callable[[], None],
    policy=None,
) -> list[dict[str, Any]]:
    """Process ``items`` [(video_name, path)] into shard ``shard_id`` and commit it.

    Data goes to a temporary file first; fsync, rename, then the index (the commit marker)
    is written the same way.  A kill at any moment leaves either a committed shard or
    debris that :func:`clean_debris` removes.
    """
    from .decode_policy import VideoSkipped

    bin_path, index_path = shard_paths(root, shard_id)
    records = []
    offset = 0
    with atomic_file(bin_path, "wb") as fh:
        for name, path in items:
            record: dict[str, Any] = {"video_name": name, "source": path, "status": "ok", "error": ""}
            try:
                if source_kind == "pt":
                    clip, facts = legacy_pt_clip(path, params)
                else:
                    clip, facts = decode_for_cache(path, params, policy)
                data = clip.tobytes()  # (K, 3, S, S) uint8, frame-major
            except VideoSkipped as exc:  # over a limit, or partial under --partial-videos skip
                record.update(status="skipped", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # this one video is unreadable: record it, go on
                record.update(status="failed", error=f"{type(exc).__name__}: {exc}".replace("\n", " "))
            else:
                record.update(facts)
                fh.write(data)
                record.update(shard=bin_path.name, offset=offset, nbytes=len(data))
                offset += len(data)
            records.append(record)
            tick()
    atomic_write_text(index_path, json.dumps({"shard": bin_path.name, "bytes": offset, "records": records}) + "\n")
    return records


def read_committed(root: Path) -> tuple[dict[int, list[dict[str, Any]]], list[str]]:
    """Committed shards {id: records}, and the problems of shards that can't be trusted."""
    committed, problems = {}, []
    for index_path in sorted((root / SHARD_DIR).glob("shard-*.json")):
        shard_id = int(index_path.stem.split("-")[1])
        bin_path, _ = shard_paths(root, shard_id)
        try:
            index = json.loads(index_path.read_text())
            size = bin_path.stat().st_size
            if size != index["bytes"]:
                raise ValueError(f"{bin_path.name} has {size} bytes, its index says {index['bytes']}")
            committed[shard_id] = index["records"]
        except (OSError, ValueError, KeyError) as exc:
            problems.append(f"{index_path.name}: {exc}")
    return committed, problems


def clean_debris(root: Path, committed: dict[int, list]) -> list[str]:
    """Remove what interrupted runs left: temporary files and shards without a valid index."""
    removed = []
    keep = {p.name for i in committed for p in shard_paths(root, i)}
    for path in sorted((root / SHARD_DIR).iterdir()):
        if path.name not in keep:
            path.unlink()
            removed.append(path.name)
    for path in root.glob(".*.tmp*"):  # utils.atomic leftovers (manifest, cache.json)
        path.unlink()
        removed.append(path.name)
    return removed


# ------------------------------------------------------------------------------------------------
# the whole run
# ------------------------------------------------------------------------------------------------
_counter = None


def _init_worker(counter) -> None:
    global _counter
    _counter = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when workers stop
    import torch

    torch.set_num_threads(1)  # one core per worker: the pool is the parallelism


def _tick() -> None:
    with _counter.get_lock():
        _counter.value += 1


def _shard_job(job: tuple) -> tuple[int, list[dict[str, Any]]]:
    root, shard_id, items, params_dict, source_kind, policy = job
    return shard_id, write_shard(Path(root), shard_id, items, CacheParams(**params_dict), source_kind, _tick, policy)


def read_video_names(annotations: str | os.PathLike) -> list[str]:
    """The ``video_name`` column of a CSV (raw or cleaned table), duplicates dropped, in order."""
    with open(annotations, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "video_name" not in reader.fieldnames:
            raise ValueError(f"{annotations}: no video_name column (columns: {reader.fieldnames})")
        names = []
        for line, row in enumerate(reader, start=2):
            name = (row["video_name"] or "").strip()
            if not name:
                raise ValueError(f"{annotations} line {line}: empty video_name")
            names.append(name)
    return list(dict.fromkeys(names))


def locate_sources(names: list[str], source_dir: str, source_kind: str) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> path, name -> why there is none) via one recursive scan of ``source_dir``.  A
    ``--videos`` folder that holds only earlier ``.pt`` clips for the table is refused in one line."""
    from .clips import LEGACY_SUFFIX, PtClipsError, scan_video_root

    index = scan_video_root(source_dir)
    found, missing, pt_clips = {}, {}, []
    for name in names:
        try:
            if source_kind == "pt":
                path = index.resolve(os.path.splitext(os.path.basename(name))[0] + LEGACY_SUFFIX)
            else:
                path = index.resolve(name)
        except ValueError as exc:  # ambiguous basename, or only an earlier .pt clip (convert with --from-pt)
            missing[name] = str(exc)
            pt_clips += [exc] if isinstance(exc, PtClipsError) else []
            continue
        if path:
            found[name] = path
        else:
            missing[name] = f"no file for {name!r} under {source_dir}"
    if pt_clips and not found:
        raise SystemExit(f"--videos {source_dir}: no video for the table, only .pt clips: {pt_clips[0]}")
    return found, missing


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    with open(root / LOCK_FILE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another `datasets.prepare` is writing {root} (it holds {root / LOCK_FILE})") from None
        yield


def legacy_params(first_pt: str) -> CacheParams:
    clip, _ = legacy_pt_clip(first_pt)
    t, _, s, s2 = clip.shape
    if s != s2:
        raise SystemExit(f"{first_pt}: legacy clips are {s}x{s2}; only square clips can be converted")
    return CacheParams(frames=t, stored_size=s, sampling="legacy-pt")


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def prepare_cache(
    out: str | os.PathLike,
    names: list[str],
    source_dir: str,
    *,
    source_kind: str = "video",
    frames: int | None = None,
    stored_size: int | None = None,
    workers: int = 1,
    shard_size: int = 256,
    progress: bool = True,
    provenance: dict | None = None,
    log: Callable[[str], None] = print,
    decode_policy=None,
) -> dict[str, Any]:
    """Build or resume the cache at ``out`` for ``names``; returns a summary dict.

    ``source_kind``: ``"video"`` (decode files under ``source_dir``; ``frames`` default 16,
    ``stored_size`` default 256) or ``"pt"`` (convert earlier-version ``.pt`` clips; frames
    and size come from the clips, and ``frames``/``stored_size`` must be None or equal theirs).
    ``decode_policy``: a :class:`datasets.decode_policy.DecodePolicy` (partial files, limits).
    """

    root = Path(out)
    (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    with exclusive(root):
        found, missing = locate_sources(names, source_dir, source_kind)
        if source_kind == "pt":
            if not found:
                raise SystemExit(f"no .pt clip under {source_dir} for any of the {len(names)} table videos")
            params = legacy_params(found[next(iter(found))])
            for flag, asked, have in (
                ("--frames", frames, params.frames),
                ("--stored-size", stored_size, params.stored_size),
            ):
                if asked is not None and asked != have:
                    raise SystemExit(
                        f"{flag} {asked}: the .pt clips have {have}; they are stored as they are (omit {flag})"
                    )
        else:
            params = CacheParams(frames=frames or 16, stored_size=stored_size or 256)
        if (root / "cache.json").exists():
            existing, _ = read_params(root)
            if existing != params:
                raise CacheMismatchError(
                    f"{root} already holds a cache built with {existing.describe()}; this command asks for "
                    f"{params.describe()} ({'; '.join(existing.differences(params))}). Use another --out "
                    "directory, or delete this one to rebuild it."
                )
        else:
            import av
            import torch
            import torchvision

            write_params(
                root,
                params,
                {
                    **(provenance or {}),
                    "source_dir": str(source_dir),
                    "source_kind": source_kind,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "tools": {"av": av.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
                },
            )

        committed, untrusted = read_committed(root)
        for problem in untrusted:
            log(f"ignoring a damaged shard, its videos are redone: {problem}")
        removed = clean_debris(root, committed)
        if removed:
            log(
                f"removed {len(removed)} leftover file(s) of an interrupted run: {', '.join(removed[:5])}"
                + (" ..." if len(removed) > 5 else "")
            )
        stored = {r["video_name"] for recs in committed.values() for r in recs if r["status"] in STORED_STATUSES}
        pending = [(n, found[n]) for n in names if n in found and n not in stored]
        skipped = sum(1 for n in names if n in stored)
        log(
            f"cache {root} ({params.describe()}): {len(names)} table videos, {skipped} already cached, "
            f"{len(pending)} to do, {len(missing)} without a file"
        )

        next_id = max(committed, default=-1) + 1
        per_shard = max(1, min(shard_size, -(-len(pending) // max(workers, 1))))  # every worker gets work
        jobs = [
            (str(root), next_id + i, chunk, asdict(params), source_kind, decode_policy)
            for i, chunk in enumerate(_chunks(pending, per_shard))
        ]
        start = time.perf_counter()
        bar = progress_bar(total=len(pending), unit="video", disable=not progress)
        try:
            new_records = _run_jobs(jobs, workers, bar)
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        for shard_id, records in new_records:
            committed[shard_id] = records

        # manifest: the latest record of each video, a stored one winning over failures
        latest: dict[str, dict[str, Any]] = {}
        for shard_id in sorted(committed):
            for record in committed[shard_id]:
                old = latest.get(record["video_name"])
                if old is None or old["status"] not in STORED_STATUSES:
                    latest[record["video_name"]] = record
        for name, why in missing.items():
            if name not in latest or latest[name]["status"] not in STORED_STATUSES:
                latest[name] = {"video_name": name, "status": "missing", "error": why, "source": ""}
        rows = list(latest.values())
        write_csv(root / MANIFEST_FILE, rows, MANIFEST_FIELDS)
        failures = [r for r in rows if r["status"] != "ok"]
        write_csv(root / FAILURES_FILE, failures, ["video_name", "status", "source", "error"])
        fsync_dir(root)
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("ok", "short", "partial", "skipped", "failed", "missing")
    }
    done = len(pending)
    summary = {
        "params": params,
        "counts": counts,
        "skipped": skipped,
        "processed": done,
        "seconds": elapsed,
        "videos_per_s": done / elapsed if elapsed > 0 and done else 0.0,
        "manifest": str(root / MANIFEST_FILE),
        "failures": str(root / FAILURES_FILE),
    }
    log(
        f"done: {done} processed in {elapsed:.1f} s ({summary['videos_per_s']:.1f} videos/s), "
        f"{skipped} already cached; "
        f"ok {counts['ok']}, short (frames repeated) {counts['short']}, partial (used) {counts['partial']}, "
        f"skipped {counts['skipped']}, failed {counts['failed']}, missing {counts['missing']}; "
        f"manifest {summary['manifest']}, failure report {summary['failures']}"
    )
    return summary


def _run_jobs(jobs: list[tuple], workers: int, bar) -> list[tuple[int, list]]:
    """Run shard jobs inline (workers 0) or in a process pool; the bar counts videos."""
    results = []
    if not jobs:
        return results
    if workers <= 0:
        for job in jobs:
            root, shard_id, items, params_dict, kind, policy = job
            results.append(
                (
                    shard_id,
                    write_shard(
                        Path(root), shard_id, items, CacheParams(**params_dict), kind, lambda: bar.update(1), policy
                    ),
                )
            )
        return results
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    counter = ctx.Value("q", 0)
    pool = ctx.Pool(processes=min(workers, max(len(jobs), 1)), initializer=_init_worker, initargs=(counter,))
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)  # e.g. scancel / a time limit
    try:
        pending = pool.imap_unordered(_shard_job, jobs)
        while len(results) < len(jobs):
            try:
                results.append(pending.next(timeout=0.25))
            except multiprocessing.TimeoutError:
                pass
            bar.update(counter.value - bar.n)
        bar.update(counter.value - bar.n)
        pool.close()
    except BaseException:
        pool.terminate()  # workers die mid-shard; their temporary files are cleaned by the rerun
        raise
    finally:
        pool.join()
        signal.signal(signal.SIGTERM, previous_term)
    return results


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def usable_cores() -> int:
    """Cores this process may run on (a SLURM job's allocation, not the whole node)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = CommandLineParser(
        prog="python -m datasets.prepare",
        description="Decode every video of an annotation table once into a uint8 frame cache "
        "(train with `train_ddp.py --cache DIR`).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--videos", help="video root, searched recursively for the table's video_name")
    source.add_argument("--from-pt", help="directory of the earlier Lightning version's float32 .pt clips to convert")
    parser.add_argument("--annotations", required=True, help="CSV with a video_name column (the annotation table)")
    parser.add_argument("--out", required=True, help="cache directory (created; an existing one is resumed)")
    parser.add_argument(
        "--workers",
        type=int,
        default=usable_cores(),
        help=f"worker processes (0 = in this process); default: the cores this process may use ({usable_cores()} here)",
    )
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="K frames kept per video, segment centres; default 16 (more than training's "
        "--frames, e.g. 32, allows temporal jitter; with --from-pt: the clips' own)",
    )
    parser.add_argument(
        "--stored-size",
        type=int,
        default=None,
        help="frames stored S x S (short side resized to S, centre crop); default 256 "
        "(the .pt clips' own size with --from-pt)",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=256,
        help="videos per shard (default 256, ~0.8 GB raw at 16x256x256); a kill loses at most "
        "workers x shard-size videos of work",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_decode_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.shard_size <= 0 or any(v is not None and v <= 0 for v in (args.frames, args.stored_size)):
        raise SystemExit("--shard-size, --frames and --stored-size must be positive")
    try:
        names = read_video_names(args.annotations)
    except (OSError, ValueError) as exc:
        raise SystemExit(str(exc)) from exc
    try:
        summary = prepare_cache(
            args.out,
            names,
            args.videos or args.from_pt,
            source_kind="pt" if args.from_pt else "video",
            frames=args.frames,
            stored_size=args.stored_size,
            workers=args.workers,
            shard_size=args.shard_size,
            progress=not args.no_progress,
            provenance={"annotations": str(args.annotations)},
            decode_policy=decode_policy_from_args(args),
        )
    except CacheMismatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished shards are kept; rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    return 0 if sum(summary["counts"][s] for s in STORED_STATUSES) > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
