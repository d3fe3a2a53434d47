"""The frame cache: videos decoded once, stored as uint8 frames in shards, read back by a Dataset.

Why: decoding H.264 on the fly gives 20-40 clips/s per core and float32 ``.pt`` clips cost
9.6 MB each; a GPU trains ResNet3D-50 at 1,000-2,000 clips/s.  So frames are decoded once
(``python -m datasets.prepare``; the earlier Lightning version's ``.pt`` clips with ``--from-pt``), kept
as uint8, and augmented and turned into floats on the GPU (:func:`datasets.augment.model_input`).

Layout of a cache directory::

    cache.json                 every parameter that shaped the cache (see CacheParams) + provenance
    shards/shard-000000.bin    clips back to back (one per video, all the same size)
    shards/shard-000000.json   the shard's index: one record per video it holds (or failed on);
                               written last, so it is the shard's commit marker
    manifest.csv               one row per video: where its clip is, source facts, status, error
    failures.csv               the rows of manifest.csv whose status is not "ok"

Why shards and not one file per video: 43,000+ small files cost a metadata-server round trip
each (open/stat/close) on Lustre/GPFS, for every epoch and every worker; a few hundred
shards of ~1 GB are opened once per process and read with one ``preadv`` per clip, which is
O(1) random access and large contiguous reads.  Each shard is written by one prepare worker
into a temporary name, fsynced and renamed, and only then indexed, so an interrupted run
never leaves a half-written entry that looks valid, and shards are never modified afterwards.

A clip's bytes: a uint8 array (K, 3, S, S), frame-major, so T of K frames are T contiguous
reads (one read when K == T).  3 * K * S * S bytes (3.1 MB for K=16, S=256).  Frames are stored
raw, not compressed: reading them costs a copy and no decoding, so a few reader threads keep a GPU
fed; the disk this takes is in docs/data.md.  Caches in the JPEG format that this project no longer
reads are refused with the command that rebuilds them.

Clips are read with ``preadv`` into the caller's buffers, never through a memory map: an I/O
error under a mapped read (a failing disk, a network file system dropping out) is a SIGBUS that
kills the whole process, while a failed ``preadv`` is an OSError that fails one reported clip.

Every frame is stored S x S: the short side resized to S (bilinear, antialiased), then the
centre S x S square kept.  A fixed size keeps raw clips fixed-length (offset = slot * size)
and batches stackable; the price is that training crops come from the centre square only,
not from the full width of a wide frame.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_write_text

from .augment import Augmentation, Drawn, no_augmentation
from .samplers import parse_key
from .video import BadVideoError, sample_clip_indices

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CacheParams",
    "CacheMismatchError",
    "FrameCache",
    "CachedClipDataset",
    "CachedClips",
    "ClipPlan",
    "collate_cached",
    "MANIFEST_FIELDS",
]

CACHE_FORMAT_VERSION = 1
PARAMS_FILE = "cache.json"
MANIFEST_FILE = "manifest.csv"
FAILURES_FILE = "failures.csv"
SHARD_DIR = "shards"
# Statuses of a manifest row; the first two have a clip in the cache.
# short = fewer frames than K in the video: frames repeat; partial = the file ends early (a
# partial download), stored from the frames that decode (datasets.prepare --partial-videos use)
STORED_STATUSES = ("ok", "short", "partial")
MANIFEST_FIELDS = [
    "video_name",
    "status",
    "error",
    "source",
    "declared_frames",
    "total_frames",
    "fps",
    "height",
    "width",
    "frames_kept",
    "frame_indices",
    "shard",
    "offset",
    "nbytes",
    "note",
]


class CacheMismatchError(ValueError):
    """The cache was built with other parameters than the run (or command) asks for."""


@dataclass(frozen=True)
class CacheParams:
    """Everything that decides a cache's bytes.  Two caches with equal params hold equal clips."""

    frames: int  # K frames kept per video
    stored_size: int  # S: frames are S x S
    # "segment-centres": the centre frame of each of K equal segments of the video (as the
    # video Dataset's evaluation); "legacy-pt": frames converted from the earlier Lightning version's .pt
    sampling: str = "segment-centres"
    fit: str = "short-side-bilinear-antialias+centre-crop"
    version: int = CACHE_FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.frames <= 0 or self.stored_size <= 0:
            raise ValueError(f"frames and stored_size must be positive, got {self.frames}, {self.stored_size}")

    @property
    def frame_bytes(self) -> int:
        return 3 * self.stored_size * self.stored_size

    def describe(self) -> str:
        return (
            f"frames={self.frames}, stored_size={self.stored_size}, uint8, "
            f"sampling={self.sampling}, fit={self.fit}, format version {self.version}"
        )

    def differences(self, other: CacheParams) -> list[str]:
        mine, theirs = asdict(self), asdict(other)
        return [f"{k}: cache has {mine[k]!r}, asked for {theirs[k]!r}" for k in mine if mine[k] != theirs[k]]


def read_params(root: str | os.PathLike) -> tuple[CacheParams, dict[str, Any]]:
    """(params, the whole cache.json) of the cache at ``root``; errors name the file."""
    path = Path(root) / PARAMS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{root} is not a frame cache (no {PARAMS_FILE}); build one with `python -m datasets.prepare`"
        )
    try:
        doc = json.loads(path.read_text())
        fields = dict(doc["params"])
        # written by the versions that also offered JPEG storage: "raw" caches read as before
        storage = fields.pop("storage", "raw")
        fields.pop("jpeg_quality", None)
        params = CacheParams(**fields)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable cache description ({type(exc).__name__}: {exc})") from exc
    if storage != "raw":
        raise CacheMismatchError(
            f"frame cache {root} stores {storage} frames, which this version no longer reads; rebuild it as "
            f"raw uint8 with `python -m datasets.prepare --frames {params.frames} --stored-size "
            f"{params.stored_size} ... --out NEW_DIR` (docs/data.md says how much disk it takes)"
        )
    return params, doc


def write_params(root: str | os.PathLike, params: CacheParams, provenance: Mapping[str, Any]) -> None:
    doc = {"kind": "resnet3d-frame-cache", "params": asdict(params), "provenance": dict(provenance)}
    atomic_write_text(Path(root) / PARAMS_FILE, json.dumps(doc, indent=2) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in fields})
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
class FrameCache:
    """A prepared cache: its params and where each video's clip is.  Picklable (no open files).

    ``FrameCache(root)`` reads ``cache.json`` and ``manifest.csv``; :meth:`check_serves`
    refuses a run the cache was not built for; :meth:`read` returns a clip's frames.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.params, self.description = read_params(self.root)
        if self.params.version != CACHE_FORMAT_VERSION:
            raise CacheMismatchError(
                f"{self.root}: cache format version {self.params.version}, this code reads version "
                f"{CACHE_FORMAT_VERSION}; rebuild it with `python -m datasets.prepare` (new --out directory)"
            )
        manifest = self.root / MANIFEST_FILE
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{self.root}: no {MANIFEST_FILE}, so `python -m datasets.prepare` has not finished here; "
                "rerun the same command (it resumes where it stopped)"
            )
        names, shards, offsets, nbytes, problems = [], [], [], [], {}
        with open(manifest, newline="") as fh:
            for line, row in enumerate(csv.DictReader(fh), start=2):
                if row["status"] in STORED_STATUSES:
                    try:
                        offsets.append(int(row["offset"]))
                        nbytes.append(int(row["nbytes"]))
                    except (TypeError, ValueError) as exc:
                        raise ValueError(f"{manifest} line {line}: bad offset/nbytes ({exc})") from exc
                    names.append(row["video_name"])
                    shards.append(row["shard"])
                else:
                    problems[row["video_name"]] = f"{row['status']}: {row['error']}"
        self.shard_names = sorted(set(shards))
        shard_id = {s: i for i, s in enumerate(self.shard_names)}
        # numpy arrays, not lists of Python objects: forked workers share these pages.
        self.names = np.array(names, dtype=str)
        self.shard_of = np.array([shard_id[s] for s in shards], dtype=np.int32)
        self.offsets = np.array(offsets, dtype=np.int64)
        self.nbytes = np.array(nbytes, dtype=np.int64)
        self.problems = problems  # video_name -> why it has no clip (failed in prepare)
        self._row_of = {n: i for i, n in enumerate(names)}
        self._check_shard_sizes()
        self._fds: dict[int, int] = {}

    def _check_shard_sizes(self) -> None:
        """A shard shorter than its manifest says was damaged after prepare (copy cut short...)."""
        if not len(self.names):
            return
        ends = np.zeros(len(self.shard_names), dtype=np.int64)
        np.maximum.at(ends, self.shard_of, self.offsets + self.nbytes)
        for i, name in enumerate(self.shard_names):
            path = self.root / SHARD_DIR / name
            size = path.stat().st_size if path.exists() else -1
            if size < ends[i]:
                raise ValueError(
                    f"{path}: {'missing' if size < 0 else f'{size} bytes'}, but {MANIFEST_FILE} "
                    f"places clips up to byte {int(ends[i])}; the cache is damaged, rebuild it"
                )

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = {}  # file descriptors don't travel to other processes
        return state

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def row(self, video_name: str) -> int:
        """Row of ``video_name`` in the cache, or -1."""
        return self._row_of.get(video_name, -1)

    def why_missing(self, video_name: str) -> str:
        """Why a video has no clip here: its failure in prepare, or absence from the table."""
        why = self.problems.get(video_name, "not in the cache (its table did not list it)")
        return f"no clip in frame cache {self.root}: {why}"

    def check_serves(self, frames: int, size: int) -> None:
        """Refuse a run (T frames, size x size input) this cache can't feed without making things up.

        K >= T (K > T: T frames chosen per clip, jittered in training) and S >= size (crops are
        resized down/up to ``size``).  Anything else means the cache was built for another run.
        """
        p = self.params
        problems = []
        if p.frames < frames:
            problems.append(f"it keeps {p.frames} frames per clip but the run uses --frames {frames}")
        if p.stored_size < size:
            problems.append(f"it stores {p.stored_size}x{p.stored_size} frames but the run uses --size {size}")
        if problems:
            raise CacheMismatchError(
                f"frame cache {self.root} was built with {p.describe()}; {' and '.join(problems)}. "
                f"Rebuild it for this run: python -m datasets.prepare ... --frames {max(frames, p.frames)} "
                f"--stored-size {max(size, p.stored_size)} --out NEW_DIR"
            )

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:  # reader threads may race here: the first descriptor stored wins
            fd = os.open(self.root / SHARD_DIR / self.shard_names[shard], os.O_RDONLY)
            if self._fds.setdefault(shard, fd) != fd:
                os.close(fd)
        return self._fds[shard]

    def read_raw_into(self, row: int, indices: Sequence[int], frames_out: np.ndarray | Sequence[np.ndarray]) -> None:
        """Frames ``indices`` (increasing) of a raw clip straight into ``frames_out[t]`` (each a
        (3, S, S) uint8 array whose S x S planes are contiguous; ``frames_out`` itself may be a
        strided view, e.g. a (3, T, S, S) clip seen as (T, 3, S, S)), with no intermediate copy.

        Each run of consecutive indices is one ``preadv`` scattering the file's bytes into the
        planes (one in all when T == K).  A shard cut short after the cache was opened, or an
        I/O error, is an OSError naming the shard: one failed clip, not a dead process.
        """
        fb = self.params.frame_bytes
        shard, base = int(self.shard_of[row]), int(self.offsets[row])
        for first, t0, length in _consecutive_runs(indices):
            start, dest = base + first * fb, frames_out[t0 : t0 + length]
            preadv_full(self._fd(shard), _planes(dest), start, self.shard_names[shard])

    def read_raw(self, row: int, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` (increasing) of a raw clip as uint8 (T, 3, S, S); consecutive runs
        of indices are read with one pread each (one in all when T == K)."""
        p = self.params
        out = torch.empty((len(indices), 3, p.stored_size, p.stored_size), dtype=torch.uint8)
        self.read_raw_into(row, indices, out.numpy())
        return out


def _consecutive_runs(indices: Sequence[int]) -> list[tuple[int, int, int]]:
    """Increasing frame indices -> (first index, position in ``indices``, length) of each run of
    consecutive ones: [0, 1, 2, 5, 6] -> [(0, 0, 3), (5, 3, 2)]."""
    runs, t = [], 0
    while t < len(indices):
        length = 1
        while t + length < len(indices) and indices[t + length] == indices[t] + length:
            length += 1
        runs.append((int(indices[t]), t, length))
        t += length
    return runs


def _planes(frames: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """The destination buffers of a ``preadv`` filling ``frames`` (L, 3, S, S) in file order: the
    whole block when it is contiguous, else each frame, else each frame's S x S channel planes."""
    if isinstance(frames, np.ndarray) and frames.flags.c_contiguous:
        return [frames]
    planes = []
    for frame in frames:
        if frame.flags.c_contiguous:
            planes.append(frame)
            continue
        for plane in frame:
            if not plane.flags.c_contiguous:
                raise ValueError(f"frame planes of strides {plane.strides} cannot receive a read")
            planes.append(plane)
    return planes


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def preadv_full(fd: int, buffers: Sequence[np.ndarray], offset: int, name: str) -> None:
    """Fill ``buffers`` (writable, contiguous) with the file's bytes from ``offset`` on: one
    ``preadv`` per IOV_MAX buffers, continued after a partial read (legal on network file
    systems); the end of the file before they are full is an OSError naming ``name``."""
    views = [memoryview(b).cast("B") for b in buffers]
    wanted = sum(v.nbytes for v in views)
    done = 0
    while views:
        got = os.preadv(fd, views[:_IOV_MAX], offset + done)
        if got <= 0:
            raise OSError(f"short read in {name}: {done} of {wanted} bytes")
        done += got
        while views and got >= views[0].nbytes:  # drop the buffers this read filled
            got -= views[0].nbytes
            views.pop(0)
        if got:
            views[0] = views[0][got:]


# ------------------------------------------------------------------------------------------------
# the Dataset
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipPlan:
    """One sample decided from its key alone, before any byte is read: which clip, which of its
    stored frames, and the augmentation the device will apply (None: the consumer resizes)."""

    index: int  # in the dataset
    video_id: str
    row: int  # in the cache; -1 when the cache has no clip for the video
    frames: np.ndarray  # increasing indices into the K stored frames
    augment: Drawn | None = None


class CachedClips(torch.utils.data.Dataset):
    """What the datasets over a frame cache share, and what :class:`datasets.cache_loader.CacheLoader`
    needs from them: ``plan(key)``, ``clip_shape``, ``frame_slots(clip)`` (where each planned
    frame lands in a clip buffer), ``read_into(plan, clip)`` and ``batch(video, plans, bad)``
    (the batch a collate function would make of those items)."""

    cache: FrameCache
    video_names: np.ndarray
    rows: np.ndarray  # the cache row of each video, -1 when missing
    bad_video: str = "skip"

    def __len__(self) -> int:
        return len(self.video_names)

    @property
    def missing(self) -> list[str]:
        """Video names the cache has no clip for."""
        return [str(n) for n, r in zip(self.video_names, self.rows) if r < 0]

    def _index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        return index % len(self)

    def read_into(self, plan: ClipPlan, clip: np.ndarray) -> str | None:
        """The plan's frames of a raw cache straight into ``clip`` (uint8, ``clip_shape``).
        Returns None, or why the clip could not be read (raises under ``bad_video="error"``)."""
        return self._guarded(plan, lambda: self.cache.read_raw_into(plan.row, plan.frames, self.frame_slots(clip)))[1]

    def _guarded(self, plan: ClipPlan, read) -> tuple[Any, str | None]:
        """(``read()``, None), or (None, why it failed) for a missing or unreadable clip; under
        ``bad_video="error"`` the failure raises BadVideoError naming the video."""
        try:
            if plan.row < 0:
                raise LookupError(self.cache.why_missing(plan.video_id))
            return read(), None
        except Exception as exc:  # one clip failed to read: see bad_video
            message = f"{plan.video_id}: {type(exc).__name__}: {exc}"
            if self.bad_video == "error":
                raise BadVideoError(message) from exc
            return None, message


class CachedClipDataset(CachedClips):
    """Clips from a frame cache, with per-row targets; uint8 at stored size + the augmentation to apply.

    The readers only read bytes and draw the augmentation; it is applied, with normalization, to
    the whole batch on the device by :func:`datasets.augment.model_input`.  Randomness comes only
    from ``default_rng([seed, epoch, index])``, drawn in the same order as the video Dataset
    (T segment offsets, then ``augment.draw``; datasets/augment.py).

    Training: T of the K stored frames by jittered segments (when K == T all of them, so no
    temporal jitter: build the cache with more frames, e.g. 32, to get it); ``augment`` drawn for
    the S x S frame.  Evaluation: segment centres, the whole S x S frame resized to ``size`` (the
    field of view of the video Dataset's short-side resize + centre crop, resampled twice
    instead of once).

    Item: ``{"video": uint8 (3, T, S, S) or None, "targets", "video_id", "index", "error",
    "augment": the sample's draw (datasets.augment.Drawn)}``.
    Videos the cache lacks (failed in prepare, or not in the table it was built from) come
    back as failed samples (``error`` set) or raise under ``bad_video="error"``.
    """

    def __init__(
        self,
        cache: FrameCache | str | os.PathLike,
        video_names: Sequence[str],
        targets: Mapping[str, np.ndarray],
        *,
        num_frames: int = 16,
        size: int = 224,
        train: bool = False,
        seed: int = 0,
        bad_video: str = "skip",
        augment: Augmentation | None = None,
    ) -> None:
        if bad_video not in ("skip", "error"):
            raise ValueError(f"bad_video must be 'skip' or 'error', got {bad_video!r}")
        self.cache = cache if isinstance(cache, FrameCache) else FrameCache(cache)
        self.cache.check_serves(num_frames, size)
        names = [str(n) for n in video_names]
        self.targets: dict[str, np.ndarray] = {}
        for key, values in targets.items():
            values = np.asarray(values)
            if values.shape != (len(names),):
                raise ValueError(f"target {key!r} has shape {values.shape}, expected ({len(names)},)")
            dtype = np.int64 if np.issubdtype(values.dtype, np.integer) else np.float32
            self.targets[key] = values.astype(dtype)
        self.video_names = np.array(names, dtype=str)
        self.rows = np.array([self.cache.row(n) for n in names], dtype=np.int64)
        self.num_frames, self.size, self.train, self.seed = num_frames, size, train, seed
        self.bad_video = bad_video
        self.augment = augment or Augmentation()

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        stored = self.cache.params.stored_size
        return (3, self.num_frames, stored, stored)

    def plan(self, key: int | tuple[int, int]) -> ClipPlan:
        epoch, index = parse_key(key)
        index = self._index(index)
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        indices = sample_clip_indices(self.cache.params.frames, self.num_frames, rng)
        stored = self.cache.params.stored_size
        drawn = self.augment.draw(rng, stored, stored, self.size) if rng is not None else no_augmentation(self.size)
        return ClipPlan(index, str(self.video_names[index]), int(self.rows[index]), indices, drawn)

    @staticmethod
    def frame_slots(clip: np.ndarray) -> np.ndarray:
        """Where the planned frames of a (3, T, S, S) clip go: frame t is ``clip[:, t]``."""
        return clip.swapaxes(0, 1)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        plan = self.plan(key)
        sample: dict[str, Any] = {
            "video": None,
            "targets": {k: torch.tensor(v[plan.index]) for k, v in self.targets.items()},
            "video_id": plan.video_id,
            "index": plan.index,
            "error": None,
            "augment": plan.augment,
        }
        clip = torch.empty(self.clip_shape, dtype=torch.uint8)
        sample["error"] = self.read_into(plan, clip.numpy())
        sample["video"] = clip if sample["error"] is None else None
        return sample

    def batch(
        self, video: torch.Tensor | None, plans: Sequence[ClipPlan], bad: Sequence[tuple[ClipPlan, str]]
    ) -> dict[str, Any]:
        """The :func:`collate_cached` batch of these items, around ``video`` (the good clips, uint8
        (N, 3, T, S, S), filled by the caller; None when there are none)."""
        indices = np.array([p.index for p in plans], dtype=np.int64)
        return _cached_batch(
            video,
            {k: torch.from_numpy(v[indices]) for k, v in self.targets.items()},
            [p.video_id for p in plans],
            torch.from_numpy(indices),
            [(p.video_id, message) for p, message in bad],
            [p.augment for p in plans],
        )


def _stack_shared(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.stack straight into shared memory when in a DataLoader worker (as default_collate
    does), saving the copy the worker -> main process transfer would otherwise make."""
    out = None
    if torch.utils.data.get_worker_info() is not None:
        numel = sum(t.numel() for t in tensors)
        storage = tensors[0]._typed_storage()._new_shared(numel, device=tensors[0].device)
        out = tensors[0].new(storage).resize_(len(tensors), *tensors[0].shape)
    return torch.stack(list(tensors), out=out)


def collate_cached(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch of :class:`CachedClipDataset` items: the contract's keys plus what the device needs.

    Returns ``{"video": uint8 (N, 3, T, S, S) or None, "targets", "video_ids", "indices",
    "bad", "augment": [each good sample's draw]}``.
    """
    good = [s for s in samples if s["error"] is None]
    bad = [(s["video_id"], s["error"]) for s in samples if s["error"] is not None]
    keys = list(samples[0]["targets"]) if samples else []
    targets = {
        k: torch.stack([s["targets"][k] for s in good]) if good else samples[0]["targets"][k].new_empty((0,))
        for k in keys
    }
    batch = _cached_batch(
        None,
        targets,
        [s["video_id"] for s in good],
        torch.tensor([s["index"] for s in good], dtype=torch.int64),
        bad,
        [s["augment"] for s in good],
    )
    if good:
        batch["video"] = _stack_shared([s["video"] for s in good])
    return batch


def _cached_batch(
    video: torch.Tensor | None,
    targets: dict[str, torch.Tensor],
    video_ids: list[str],
    indices: torch.Tensor,
    bad: list[tuple[str, str]],
    augment: list[Drawn],
) -> dict[str, Any]:
    """The one place a frame-cache batch is assembled (:func:`collate_cached` and the loader)."""
    return {
        "video": video,
        "targets": targets,
        "video_ids": video_ids,
        "indices": indices,
        "bad": bad,
        "augment": augment,  # applied by datasets.augment.model_input, whatever its steps
    }
