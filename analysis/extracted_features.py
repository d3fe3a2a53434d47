"""The per-layer feature directory written by ``extract_features.py``, read for analysis.

Layout (``format_version`` 1)::

    features.json   {"format_version": 1, "complete": bool, "num_videos": N,
                     "layers": {"<layer>": {"file": "<layer>.npy", "shape": [N, ...],
                                            "dtype": "float16" | "float32"}}, ...provenance}
    index.csv       row,video_name,path,status,error: one row per array row, in order;
                    status ok, error or pending
    <layer>.npy     standard .npy, first axis = rows, any trailing shape ((N, C), (N, C, T', H', W'),
                    ...): read as (N, D) with D = the product of the trailing axes

Only ``ok`` rows hold features (``error`` rows are NaN, ``pending`` rows not written yet); the
others are counted, never used.  An extraction that is not ``complete`` is refused unless the
caller allows it.  Arrays are memory-mapped and read in column chunks, so a layer larger than
memory can be analysed.  Problems raise :class:`FeatureDirError` naming the file, layer, row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["FORMAT_VERSION", "STATUSES", "FeatureDir", "FeatureDirError", "open_feature_dir"]

FORMAT_VERSION = 1
STATUSES = ("ok", "error", "pending")
INDEX_COLUMNS = ("row", "video_name", "path", "status", "error")
DTYPES = ("float16", "float32")


class FeatureDirError(ValueError):
    """A feature directory that cannot be used as it is; the message names the file and layer."""


@dataclass
class FeatureDir:
    root: Path
    meta: dict  # features.json as written
    index: pd.DataFrame  # index.csv, one row per array row

    @property
    def layers(self) -> list[str]:
        return list(self.meta["layers"])

    @property
    def ok_rows(self) -> np.ndarray:
        return np.flatnonzero((self.index["status"] == "ok").to_numpy())

    def status_counts(self) -> dict[str, int]:
        counts = self.index["status"].value_counts()
        return {s: int(counts.get(s, 0)) for s in STATUSES}

    def matrix(self, layer: str) -> np.ndarray:
        """The layer as a read-only (N, D) memory map (no copy: the file is C-ordered)."""
        entry = self.meta["layers"][layer]
        path = self.root / entry["file"]
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FeatureDirError(f"{path}: cannot read layer {layer!r} as .npy ({exc})") from exc
        declared = tuple(int(x) for x in entry["shape"])
        if array.shape != declared or str(array.dtype) != entry["dtype"]:
            raise FeatureDirError(
                f"{path}: layer {layer!r} is {array.dtype}{list(array.shape)} but features.json "
                f"says {entry['dtype']}{list(declared)}"
            )
        return array.reshape(array.shape[0], -1)

    def num_columns(self, layer: str) -> int:
        return math.prod(int(x) for x in self.meta["layers"][layer]["shape"][1:])

    def column_chunks(self, layer: str, rows: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
        """float32 blocks ``(len(rows), c)`` covering all D columns of ``rows``, each at most
        ``max_bytes`` as float64 (what the caller will turn them into).  A non-finite value in
        a used row is an error naming the layer, the row and the video."""
        matrix = self.matrix(layer)
        width = max(1, int(max_bytes // (8 * max(1, len(rows)))))
        for start in range(0, matrix.shape[1], width):
            block = np.asarray(matrix[rows, start : start + width], dtype=np.float32)
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                row = int(rows[np.flatnonzero(bad)[0]])
                raise FeatureDirError(
                    f"{self.root / self.meta['layers'][layer]['file']}: layer {layer!r}, row {row} "
                    f"({self.index['video_name'].iloc[row]!r}) has status ok but holds NaN/inf features"
                    + (f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else "")
                )
            yield block


def _read_meta(root: Path) -> dict:
    path = root / "features.json"
    if not path.exists():
        raise FeatureDirError(f"{root}: no features.json (is this an extract_features.py output directory?)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FeatureDirError(f"{path}: cannot read as JSON ({exc})") from exc
    missing = [k for k in ("format_version", "complete", "num_videos", "layers") if k not in meta]
    if missing:
        raise FeatureDirError(f"{path}: missing key(s) {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise FeatureDirError(
            f"{path}: format_version {meta['format_version']!r}; this version reads {FORMAT_VERSION} only"
        )
    if not isinstance(meta["layers"], dict) or not meta["layers"]:
        raise FeatureDirError(f"{path}: 'layers' names no layer")
    n = meta["num_videos"]
    for name, entry in meta["layers"].items():
        if not isinstance(entry, dict) or not {"file", "shape", "dtype"} <= set(entry):
            raise FeatureDirError(f"{path}: layer {name!r} needs 'file', 'shape' and 'dtype'")
        if entry["dtype"] not in DTYPES:
            raise FeatureDirError(f"{path}: layer {name!r} has dtype {entry['dtype']!r}; expected one of {DTYPES}")
        if len(entry["shape"]) < 2 or int(entry["shape"][0]) != n:
            raise FeatureDirError(
                f"{path}: layer {name!r} has shape {entry['shape']}; expected [{n}, ...] (num_videos = {n})"
            )
        if not (root / entry["file"]).exists():
            raise FeatureDirError(f"{path}: layer {name!r}: file {entry['file']!r} does not exist")
    return meta


def _read_index(root: Path, num_videos: int) -> pd.DataFrame:
    path = root / "index.csv"
    try:
        index = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise FeatureDirError(f"{root}: no index.csv") from None
    except Exception as exc:  # parser errors, empty file
        raise FeatureDirError(f"{path}: cannot read as CSV ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise FeatureDirError(f"{path}: missing column(s) {missing} (found {list(index.columns)})")
    if len(index) != num_videos:
        raise FeatureDirError(f"{path}: {len(index)} rows but features.json says num_videos = {num_videos}")
    expected = [str(i) for i in range(num_videos)]
    wrong = np.flatnonzero(index["row"].str.strip().to_numpy() != np.array(expected, dtype=object))
    if len(wrong):
        i = int(wrong[0])
        raise FeatureDirError(
            f"{path}: data row {i + 1}, column 'row': {index['row'].iloc[i]!r}; rows must be "
            f"0 .. {num_videos - 1} in order (one per array row)"
        )
    index["status"] = index["status"].str.strip()
    bad = ~index["status"].isin(STATUSES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise FeatureDirError(
            f"{path}: data row {i + 1}, column 'status': {index['status'].iloc[i]!r}; expected one of {STATUSES}"
        )
    empty = (index["status"] == "ok") & (index["video_name"].str.strip() == "")
    if empty.any():
        i = int(np.flatnonzero(empty.to_numpy())[0])
        raise FeatureDirError(f"{path}: data row {i + 1}, column 'video_name' is empty")
    return index


def open_feature_dir(path: str | Path, allow_incomplete: bool = False) -> FeatureDir:
    """Read and check ``features.json`` and ``index.csv`` (the arrays are opened on use)."""
    root = Path(path)
    meta = _read_meta(root)
    index = _read_index(root, int(meta["num_videos"]))
    features = FeatureDir(root, meta, index)
    if not meta["complete"] and not allow_incomplete:
        counts = features.status_counts()
        raise FeatureDirError(
            f"{root}: the extraction is not complete (features.json complete = false; "
            f"{counts['ok']} ok, {counts['error']} error, {counts['pending']} pending rows); "
            "finish or resume extract_features.py, or pass --allow-incomplete to analyse the "
            "ok rows only"
        )
    return features
