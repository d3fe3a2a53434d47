"""The files of one feature extraction, written by any number of processes, resumable.

Layout of ``--output DIR``::

    features.json          the manifest: what was extracted how (see ``extract_features.py``);
                           ``complete`` turns true when no row is pending
    index.csv              one row per array row: row, video_name, path, status, error
    <layer>.npy            one standard .npy per layer, first axis = the rows of index.csv
    .progress/status.npy   uint8 per row: 0 pending, 1 ok, 2 error (the resume state)
    .progress/errors-*.jsonl  the error of each failed row, one JSON line each, one file per process
    file_names.txt         the ok rows' video names, one a line (see ``analysis/features/exports.py``)
    net2brain_consolidated/<layer>.npz   with ``--export npz``: the ok rows keyed by file stem

The two exports are written by ``write_exports`` in one process once no row is pending, from the
status file, so they do not depend on how many processes wrote the rows or how often it resumed.

Every process opens the arrays as memory maps (``np.lib.format.open_memmap``) only while it
writes a batch of rows and closes them again, so written pages leave its memory (a kept-open
map would count every page it ever wrote in the resident set).  Rows of different processes
never overlap, so no locking is needed on one machine or on a coherent shared file system
(Lustre, GPFS, BeeGFS; not NFS with several nodes).

A row counts as done only through its status byte, and that is set after the row's features
(or, for a failed video, its NaN row and error line) are written and flushed to the disk: an
extraction stopped at any point (SIGKILL, node failure) resumes with every row whose status is
not set, and never takes a half-written row as done.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.features.exports import remove_exports, write_file_names, write_net2brain
from utils.evaluation import write_csv, write_json

MANIFEST = "features.json"
INDEX = "index.csv"
PROGRESS = ".progress"
STATUS = "status.npy"
PENDING, OK, ERROR = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", OK: "ok", ERROR: "error"}
INDEX_COLUMNS = ["row", "video_name", "path", "status", "error"]
FORMAT_VERSION = 1
# Manifest entries that must be equal for a rerun to continue an earlier run's files.
RESUME_KEYS = (
    "format_version",
    "num_videos",
    "inputs_sha256",
    "source",
    "checkpoint",
    "layers",
    "pool",
    "frames",
    "size",
    "views",
    "dtype",
    "project_dim",
    "projection",
    "autocast",
)


class FeatureStoreError(ValueError):
    """The output folder holds something this run cannot continue or must not overwrite."""


def _brief(key: str, value: Any) -> str:
    """A manifest entry as a resume refusal shows it."""
    if key == "layers" and isinstance(value, Mapping):
        return "{" + ", ".join(f"{n}: {e.get('shape')} {e.get('dtype')}" for n, e in value.items()) + "}"
    if key == "inputs_sha256":
        return f"videos with digest {str(value)[:12]}"  # the names and paths, in order
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.3f} MB"


def layer_file(name: str) -> str:
    return f"{name}.npy"


class FeatureStore:
    """``FeatureStore(root, layers, rank)``: ``layers`` are the layer names of the manifest (each
    stored as ``<name>.npy``); ``rank`` names this process's error journal."""

    def __init__(self, root: str | os.PathLike, layers: Sequence[str], rank: int = 0) -> None:
        self.root = Path(root)
        self.files = {name: layer_file(name) for name in layers}
        self.rank = rank
        self.manifest_path = self.root / MANIFEST
        self.index_path = self.root / INDEX
        self.status_path = self.root / PROGRESS / STATUS

    # -- set-up (one process) ----------------------------------------------------------
    def prepare(self, manifest: Mapping[str, Any], inputs: pd.DataFrame, overwrite: bool = False) -> str:
        """Create the files for ``manifest``, or check that earlier ones are for the same request.

        ``inputs`` has one row per video (``video_name``, ``path``).  Returns ``"created"``,
        ``"resumed"`` or ``"complete"`` (nothing left to do).
        """
        if overwrite:
            self._remove_outputs()
        if self.manifest_path.exists():
            earlier = self.read_manifest()
            differ = [k for k in RESUME_KEYS if earlier.get(k) != manifest.get(k)]
            if differ:
                listed = "; ".join(
                    f"{k}: {_brief(k, earlier.get(k))} then, {_brief(k, manifest.get(k))} now" for k in differ
                )
                raise FeatureStoreError(
                    f"{self.root} holds an extraction with other settings ({listed}); use another --output, "
                    "or --overwrite to start again there"
                )
            self._check_files(earlier)
            return "complete" if earlier.get("complete") else "resumed"
        if self.root.exists() and any(self.root.iterdir()):
            raise FeatureStoreError(
                f"{self.root} is not empty and holds no {MANIFEST}; use an empty or new --output folder (an "
                f"extraction stopped while creating its files leaves {INDEX} and {PROGRESS}/ without {MANIFEST}: "
                "delete the folder)"
            )
        if sorted(manifest["layers"]) != sorted(self.files):
            raise ValueError(f"manifest layers {list(manifest['layers'])} are not this store's {list(self.files)}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_space(manifest)
        (self.root / PROGRESS).mkdir(exist_ok=True)
        n = int(manifest["num_videos"])
        for name, entry in manifest["layers"].items():
            if entry["file"] != self.files[name]:
                raise ValueError(f"layer {name}: file {entry['file']!r}, expected {self.files[name]!r}")
            array = np.lib.format.open_memmap(
                self.root / entry["file"], mode="w+", dtype=entry["dtype"], shape=tuple(entry["shape"])
            )
            del array
            self._allocate(self.root / entry["file"])
        status = np.lib.format.open_memmap(self.status_path, mode="w+", dtype=np.uint8, shape=(n,))
        del status
        self.write_index(inputs)
        write_json(manifest, self.manifest_path)  # last: the files above exist once it does
        return "created"

    def _check_space(self, manifest: Mapping[str, Any]) -> None:
        """Refuse now what the disk cannot hold: a full disk under a memory map would kill the
        process (SIGBUS) at the first row that does not fit, hours later."""
        needed = sum(int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize for e in manifest["layers"].values())
        free = shutil.disk_usage(self.root).free
        if needed > free:
            raise FeatureStoreError(
                f"the arrays need {_size(needed)} but {self.root} has {_size(free)} free; "
                "choose fewer or pooled layers, --dtype float16, --project-dim, or another --output"
            )

    @staticmethod
    def _allocate(path: Path) -> None:
        """Reserve the file's blocks now (another job may fill the disk meanwhile; Linux only)."""
        if not hasattr(os, "posix_fallocate"):
            return
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                os.posix_fallocate(fh.fileno(), 0, size)
            except OSError as exc:
                raise FeatureStoreError(f"{path}: cannot reserve {_size(size)} ({exc})") from exc

    def _check_files(self, manifest: Mapping[str, Any]) -> None:
        expected = {self.status_path: ((int(manifest["num_videos"]),), "uint8")}
        for entry in manifest["layers"].values():
            expected[self.root / entry["file"]] = (tuple(entry["shape"]), entry["dtype"])
        for path, (shape, dtype) in expected.items():
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise FeatureStoreError(
                    f"{path}: cannot be read to continue the extraction ({exc}); use --overwrite to start again"
                ) from exc
            if array.shape != shape or array.dtype != np.dtype(dtype):
                raise FeatureStoreError(
                    f"{path} holds {array.shape} {array.dtype}, the manifest says {shape} "
                    f"{dtype}; use --overwrite to start again"
                )

    def _remove_outputs(self) -> None:
        """Delete what an earlier extraction wrote here (and nothing else)."""
        if not self.manifest_path.exists():
            return
        earlier = self.read_manifest()
        for entry in earlier.get("layers", {}).values():
            (self.root / entry["file"]).unlink(missing_ok=True)
        remove_exports(self.root, list(earlier.get("layers", {})))
        shutil.rmtree(self.root / PROGRESS, ignore_errors=True)
        self.index_path.unlink(missing_ok=True)
        self.manifest_path.unlink()

    # -- rows (every process, its own rows) ---------------------------------------------
    def status(self) -> np.ndarray:
        return np.array(np.load(self.status_path, mmap_mode="r"))

    def write_rows(self, rows: Sequence[int], values: Mapping[str, np.ndarray]) -> None:
        """Features of ``rows`` (one array per layer, first axis = rows), then their status."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if sorted(values) != sorted(self.files):
            raise ValueError(f"values for layers {sorted(values)}, expected {sorted(self.files)}")
        for name, value in values.items():
            self._write(self.root / self.files[name], rows, value)
        self._set_status(rows, OK)

    def fail_rows(self, rows: Sequence[int], errors: Sequence[str]) -> None:
        """NaN features and the error of each of ``rows``, then their status."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if len(errors) != len(rows):
            raise ValueError(f"{len(rows)} rows but {len(errors)} errors")
        for file in self.files.values():
            self._write(self.root / file, rows, np.nan)
        journal = self.root / PROGRESS / f"errors-rank{self.rank}-pid{os.getpid()}.jsonl"
        with open(journal, "a", encoding="utf-8") as fh:
            for row, error in zip(rows.tolist(), errors):
                fh.write(json.dumps({"row": row, "error": str(error)}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._set_status(rows, ERROR)

    @staticmethod
    def _write(path: Path, rows: np.ndarray, value) -> None:
        array = np.lib.format.open_memmap(path, mode="r+")
        try:
            array[rows] = value
            array.flush()
        finally:
            del array

    def _set_status(self, rows: np.ndarray, status: int) -> None:
        self._write(self.status_path, rows, status)

    def errors(self) -> dict[int, str]:
        """Row -> error for every error line written so far (a row retried after a crash keeps its last)."""
        found: dict[int, str] = {}
        for journal in sorted((self.root / PROGRESS).glob("errors-*.jsonl"), key=lambda p: p.stat().st_mtime):
            for line in journal.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill; its row's status was never set
                found[int(entry["row"])] = entry["error"]
        return found

    # -- the index and the manifest (one process) ---------------------------------------
    def write_index(self, inputs: pd.DataFrame) -> dict[str, int]:
        """index.csv from the rows' current status; returns the count per status."""
        n = len(inputs)
        status = self.status() if self.status_path.exists() else np.zeros(n, dtype=np.uint8)
        errors = self.errors() if self.status_path.exists() else {}
        names = [STATUS_NAMES[int(s)] for s in status]
        frame = pd.DataFrame(
            {
                "row": np.arange(n),
                "video_name": inputs["video_name"].to_numpy(),
                "path": inputs["path"].to_numpy(),
                "status": names,
                "error": [errors.get(i, "") if s == ERROR else "" for i, s in enumerate(status.tolist())],
            },
            columns=INDEX_COLUMNS,
        )
        write_csv(frame, self.index_path)
        return {label: int(np.sum(status == code)) for code, label in STATUS_NAMES.items()}

    def write_exports(self, inputs: pd.DataFrame, manifest: Mapping[str, Any], npz: bool = False) -> list[Path]:
        """file_names.txt and, with ``npz``, the per-layer .npz files, from the rows' status: call
        it once every row is final (no row pending), in one process."""
        status = self.status()
        if np.any(status == PENDING):
            raise FeatureStoreError(f"{self.root}: {int(np.sum(status == PENDING))} rows are pending; nothing exported")
        ok = status == OK
        names = inputs["video_name"].astype(str).tolist()
        written = [write_file_names(self.root, names, ok)]
        if npz:
            written += write_net2brain(self.root, manifest["layers"], names, ok)
        return written

    def read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FeatureStoreError(f"{self.manifest_path}: cannot be read ({exc})") from exc

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        write_json(manifest, self.manifest_path)
