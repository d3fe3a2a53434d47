"""Copies of an extraction in the layouts other tools read without glue code.

* ``file_names.txt`` (thingsvision's convention: its datasets write the stimulus file names, one a
  line, in the order of the extracted features): the ``video_name`` of every ``ok`` row, in row
  order.  Failed videos are left out, as thingsvision lists only stimuli it has features for, so
  line k names the k-th ok row of every ``<layer>.npy`` -- line i is row i when no video failed.
* ``net2brain_consolidated/<layer>.npz`` (``--export npz``; Net2Brain's consolidated feature files:
  one ``<layer>.npz`` per layer, one entry per stimulus keyed by its file stem, each entry that
  stimulus's features with a leading axis of length one): the ok rows only, in row order.  The
  folder holds nothing else and its name contains "consolidated", which is how Net2Brain's feature
  reader tells this layout from its per-stimulus files.

Both are written by one process after every row is final, from the status file, so they are the
same whatever the number of processes and however often the extraction was resumed.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_file, atomic_write_text

FILE_NAMES = "file_names.txt"
NET2BRAIN_DIR = "net2brain_consolidated"
EXPORTS = ("npz",)
# Rows are copied into the .npz in blocks of about this size, each through a memory map opened for
# that block only: a map kept open over a whole unpooled layer would hold every page it read.
BLOCK_BYTES = 64 * 2**20


def stimulus_key(video_name: str) -> str:
    """A video's key in the .npz files: its file name without folder and last extension."""
    return Path(video_name.replace("\\", "/")).stem


def check_exportable(names: Sequence[str], npz: bool) -> None:
    """Refuse, before any extraction, names the exports cannot hold: a line break (one name a line
    in file_names.txt) and, for the .npz files, an empty key or two videos with the same key."""
    for row, name in enumerate(names):
        if "\n" in name or "\r" in name:
            raise ValueError(f"video {row} ({name!r}): a name with a line break cannot be listed in {FILE_NAMES}")
    if not npz:
        return
    first: dict[str, int] = {}
    clashes = []
    for row, name in enumerate(names):
        key = stimulus_key(name)
        if not key:
            raise ValueError(f"video {row} ({name!r}): no file stem to key its features by in the .npz files")
        if key in first:
            clashes.append(f"rows {first[key]} ({names[first[key]]}) and {row} ({name}): {key!r}")
        else:
            first[key] = row
    if clashes:
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise ValueError(
            "--export npz keys each video by its file stem, and these videos share one: "
            + "; ".join(clashes[:5])
            + more
            + "; give the videos distinct file names or leave out --export npz"
        )


def write_file_names(root: Path, names: Sequence[str], ok: np.ndarray) -> Path:
    path = Path(root) / FILE_NAMES
    atomic_write_text(path, "".join(f"{names[i]}\n" for i in np.flatnonzero(ok)))
    return path


def write_net2brain(root: Path, layers: Mapping[str, Mapping[str, Any]], names: Sequence[str], ok: np.ndarray):
    """One ``<layer>.npz`` per layer in ``root/net2brain_consolidated``; returns their paths."""
    root = Path(root)
    folder = root / NET2BRAIN_DIR
    rows = np.flatnonzero(ok)
    keys = [stimulus_key(names[i]) for i in rows]
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp*"):  # left by a killed export; Net2Brain would read it as a layer
        stale.unlink(missing_ok=True)
    written = []
    for layer, entry in layers.items():
        source = root / entry["file"]
        row_bytes = int(np.prod(entry["shape"][1:])) * np.dtype(entry["dtype"]).itemsize
        per_block = max(1, BLOCK_BYTES // max(row_bytes, 1))
        target = folder / f"{layer}.npz"
        # np.savez_compressed's layout (a deflated zip of one .npy per key), written block by block.
        with atomic_file(target, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED, allowZip64=True) as npz:
            for start in range(0, len(rows), per_block):
                array = np.load(source, mmap_mode="r")
                block = np.asarray(array[rows[start : start + per_block]])  # a copy in memory
                del array
                for key, values in zip(keys[start : start + per_block], block):
                    with npz.open(f"{key}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, values[np.newaxis], allow_pickle=False)
        written.append(target)
    return written


def remove_exports(root: Path, layers: Sequence[str]) -> None:
    """Delete the exports of an extraction with these layers (and nothing else)."""
    root = Path(root)
    (root / FILE_NAMES).unlink(missing_ok=True)
    folder = root / NET2BRAIN_DIR
    for layer in layers:
        (folder / f"{layer}.npz").unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
