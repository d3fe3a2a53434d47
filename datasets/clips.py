"""Map-style clip Dataset (video file + per-row targets -> clip sample) and its collate.

Item and batch formats are the team contract's (see ``VideoClipDataset.__getitem__``
and ``collate_clips``).  Keys are an ``int`` index or an ``(epoch, index)`` tuple; training
randomness comes only from ``numpy.random.default_rng([seed, epoch, index])``, so a
sample's clip depends on nothing else (not the worker, world size or global RNG state).

Videos are located by one recursive scan of the video root in the main process
(:func:`scan_video_root`), because Moments in Time trees keep clips in class sub-folders
while the annotation table only holds basenames.  Bad files never crash a worker under
``bad_video="skip"``: the sample comes back with ``error`` set and ``collate_clips`` drops
it and reports it in ``bad``.

The earlier Lightning version's float32 ``.pt`` clips are not read here: ``python -m datasets.prepare
--from-pt`` converts them once into a frame cache.  A video root that holds such a clip where a
video should be is refused with that command (:class:`PtClipsError`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .augment import Augmentation, ClipTransform
from .decode_policy import DecodePolicy
from .samplers import parse_key
from .video import BadVideoError, decode_clip, partial_note

__all__ = [
    "LEGACY_SUFFIX",
    "AmbiguousVideoError",
    "PtClipsError",
    "VideoIndex",
    "scan_video_root",
    "VideoClipDataset",
    "collate_clips",
]

LEGACY_SUFFIX = ".pt"  # torch.save'd float32 [3, T, H, W] clips of the earlier Lightning version (prepare --from-pt)


class AmbiguousVideoError(ValueError):
    """Two files under the video root share the basename an annotation row asks for."""


class PtClipsError(ValueError):
    """The video root holds the earlier Lightning version's ``.pt`` clip where a video should be.

    Raised when the dataset is built, not per sample: every such clip would fail the same way, and
    the remedy (one conversion with ``prepare --from-pt``) is the same for all of them.
    """


@dataclass
class VideoIndex:
    """Basename -> path for every file under ``root`` (one scan; hidden files skipped)."""

    root: str
    paths: dict[str, str] = field(default_factory=dict)
    duplicates: dict[str, list[str]] = field(default_factory=dict)

    def _lookup(self, basename: str) -> str | None:
        if basename in self.duplicates:
            listed = " and ".join(self.duplicates[basename])
            raise AmbiguousVideoError(
                f"video name {basename!r} is ambiguous under {self.root}: found {listed}; remove or rename one of them"
            )
        return self.paths.get(basename)

    def resolve(self, name: str) -> str | None:
        """Path of the file for annotation ``name``, or None if there is none.

        ``name`` may be a basename (searched in the whole tree) or a path relative to the
        root.  Raises :class:`PtClipsError` when only ``<stem>.pt`` is there (an earlier clip).
        """
        if os.sep in name or (os.altsep and os.altsep in name):
            candidate = os.path.join(self.root, name)
            if os.path.isfile(candidate):
                return candidate
            name = os.path.basename(name)
        found = self._lookup(name)
        if found is None:
            pt_clip = self._lookup(os.path.splitext(name)[0] + LEGACY_SUFFIX)
            if pt_clip is not None:
                raise PtClipsError(
                    f"{pt_clip} is a {LEGACY_SUFFIX} clip of the earlier Lightning version, not a video; "
                    f"{LEGACY_SUFFIX} clips are read only by `python -m datasets.prepare --from-pt {self.root} "
                    "--annotations CSV --out CACHE_DIR` (run it once, then train or evaluate with --cache CACHE_DIR)"
                )
        return found


def scan_video_root(root: str | os.PathLike) -> VideoIndex:
    """Walk ``root`` once (following no symlinked directories) and index files by basename."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"video root {root} is not a directory")
    index = VideoIndex(root=root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = os.path.join(dirpath, filename)
            if filename in index.duplicates:
                index.duplicates[filename].append(path)
            elif filename in index.paths:
                index.duplicates[filename] = [index.paths.pop(filename), path]
            else:
                index.paths[filename] = path
    return index


class VideoClipDataset(torch.utils.data.Dataset):
    """Clips of the videos named in an annotation table, with their per-row targets.

    Args:
        video_names: the table's ``video_name`` column (one entry per row).
        targets: target key -> array with one entry per row (as built from the table;
            NaN / -1 mark missing values).  Integer arrays become int64 tensors, all others
            float32.
        video_root: folder searched recursively for the files (see :class:`VideoIndex`).
        num_frames, size: clip shape T and H = W.
        train: temporal jitter + random resized crop + flip (else centres + centre crop).
        seed: base of the per-sample rng ``default_rng([seed, epoch, index])``.
        bad_video: ``"skip"`` (return the sample with ``error`` set) or ``"error"`` (raise
            :class:`BadVideoError` naming the path).
        augment: the training augmentation (datasets/augment.py; default ``Augmentation()``).
        transform: overrides the default ``ClipTransform(size, train, augment)``.
        decode_threads: FFmpeg decoder threads per clip; 1 because workers already share
            the cores.
        index: a :class:`VideoIndex` to reuse (e.g. one scan for train and val).
        decode_policy: partial files and the duration/size limits
            (:class:`~datasets.decode_policy.DecodePolicy`; default: use partial files, 30 s,
            1920 x 1088).  A skipped file is a failed sample whose error says why; a partial file
            that is used says so in the sample's ``note``.
    """

    def __init__(
        self,
        video_names: Sequence[str],
        targets: Mapping[str, np.ndarray],
        video_root: str | os.PathLike,
        *,
        num_frames: int = 16,
        size: int = 224,
        train: bool = False,
        seed: int = 0,
        bad_video: str = "skip",
        augment: Augmentation | None = None,
        transform: ClipTransform | None = None,
        decode_threads: int = 1,
        index: VideoIndex | None = None,
        decode_policy: DecodePolicy | None = None,
    ) -> None:
        if bad_video not in ("skip", "error"):
            raise ValueError(f"bad_video must be 'skip' or 'error', got {bad_video!r}")
        if num_frames <= 0:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        names = [str(n) for n in video_names]
        self.targets: dict[str, np.ndarray] = {}
        for key, values in targets.items():
            values = np.asarray(values)
            if values.shape != (len(names),):
                raise ValueError(
                    f"target {key!r} has shape {values.shape}, expected ({len(names)},) (one value per video name)"
                )
            dtype = np.int64 if np.issubdtype(values.dtype, np.integer) else np.float32
            self.targets[key] = values.astype(dtype)
        index = index if index is not None else scan_video_root(video_root)
        self.video_root = index.root
        # Plain numpy string arrays rather than lists of str: forked workers then share
        # these pages instead of copying them (touching Python objects writes refcounts).
        self.video_names = np.array(names, dtype=str)
        self.paths = np.array([index.resolve(n) or "" for n in names], dtype=str)
        self.num_frames = num_frames
        self.size = size
        self.train = train
        self.seed = seed
        self.bad_video = bad_video
        self.transform = transform or ClipTransform(size=size, train=train, augment=augment or Augmentation())
        self.decode_threads = decode_threads
        self.decode_policy = decode_policy if decode_policy is not None else DecodePolicy()

    def __len__(self) -> int:
        return len(self.video_names)

    @property
    def missing(self) -> list[str]:
        """Video names with no file under the root (they load as failed samples)."""
        return [str(n) for n, p in zip(self.video_names, self.paths) if not p]

    def _decode(self, path: str, num_frames: int, rng: np.random.Generator | None) -> tuple[np.ndarray, str | None]:
        """The one decoding call of both clip datasets: (frames at up to twice ``size`` (the
        transform resizes to ``size``), the note of a partial file used) under the dataset's policy."""
        frames, info = decode_clip(
            path, num_frames, rng, threads=self.decode_threads, short_side=self.size, policy=self.decode_policy
        )
        return frames, partial_note(info)

    def _load(self, path: str, rng: np.random.Generator | None) -> tuple[torch.Tensor, str | None]:
        """(clip, note): the note says when a partial file was used."""
        frames, note = self._decode(path, self.num_frames, rng)
        return self.transform(frames, rng), note

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """``key`` = index or (epoch, index); an int key means epoch 0.

        Returns ``{"video": uint8 (3, T, size, size) or None,
        "targets": {key: 0-dim tensor}, "video_id": str, "index": int, "error": None or
        "<path>: <ExceptionType>: <message>", "note": None or "<path>: partial file (...)"}``.
        """
        epoch, index = parse_key(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        index %= len(self)
        name, path = str(self.video_names[index]), str(self.paths[index])
        sample: dict[str, Any] = {
            "video": None,
            "targets": {k: torch.tensor(v[index]) for k, v in self.targets.items()},
            "video_id": name,
            "index": index,
            "error": None,
            "note": None,
        }
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        try:
            if not path:
                raise FileNotFoundError(f"missing file (no {name!r} under {self.video_root})")
            sample["video"], sample["note"] = self._load(path, rng)
        except Exception as exc:  # any failure to read this one file; see bad_video
            where = path or os.path.join(self.video_root, name)
            message = f"{where}: {type(exc).__name__}: {exc}"
            if self.bad_video == "error":
                raise BadVideoError(message) from exc
            sample["error"] = message
        return sample


def collate_clips(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack good samples; drop failed ones and list them in ``bad``.

    Returns ``{"video": (N, 3, T, H, W), "targets": {k: (N,)}, "video_ids": [str],
    "indices": int64 (N,), "bad": [(video_id, error)], "notes": [(video_id, note)]}`` (notes:
    partial files that were used).  When every sample failed, N is 0 and ``video`` is None (the
    loop should skip such a batch).
    """
    good = [s for s in samples if s["error"] is None]
    bad = [(s["video_id"], s["error"]) for s in samples if s["error"] is not None]
    notes = [(s["video_id"], s["note"]) for s in good if s.get("note")]
    keys = list(samples[0]["targets"]) if samples else []
    if not good:
        return {
            "video": None,
            "targets": {k: samples[0]["targets"][k].new_empty((0,)) for k in keys},
            "video_ids": [],
            "indices": torch.empty(0, dtype=torch.int64),
            "bad": bad,
            "notes": notes,
        }
    return {
        "video": torch.stack([s["video"] for s in good]),
        "targets": {k: torch.stack([s["targets"][k] for s in good]) for k in keys},
        "video_ids": [s["video_id"] for s in good],
        "indices": torch.tensor([s["index"] for s in good], dtype=torch.int64),
        "bad": bad,
        "notes": notes,
    }
