"""Checkpoint files that are either complete or absent.

Layout under ``OUTPUT_DIR/checkpoints/``::

    step-00001200.pt   one file per save, the newest ``keep_last`` kept
    last.pt            the newest complete save (a hard link to its step file)
    best.pt            the save with the best monitored metric (a hard link)

Every write goes to a temporary file in the same directory, is fsync'ed and then renamed over
the target, so a crash, a kill or a full disk never leaves a half-written file under a valid
name, and the previous checkpoint is only pruned after the new one is complete.  Loading uses
``torch.load(weights_only=True)``; a newest file that is truncated or corrupt is skipped with a
warning and the previous valid one is used.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_file, fsync_dir, temporary_path

CHECKPOINT_FORMAT = "socialvision-ddp/1"
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")
REQUIRED_KEYS = ("format", "model", "step", "config")


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed; the previous checkpoint is intact."""


class CheckpointLoadError(RuntimeError):
    """A checkpoint file could not be loaded or is not one of ours."""


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file, fsync, then rename over ``path``."""
    with atomic_file(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def atomic_link(src: Path, dst: Path) -> None:
    """Point ``dst`` at ``src``'s data atomically (hard link; a copy where links are unsupported)."""
    tmp = temporary_path(dst)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and sanity-check one of our checkpoints (weights_only: no arbitrary unpickling)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, bad magic, refused pickle, I/O error ...
        raise CheckpointLoadError(f"cannot load checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointLoadError(f"{path} is not a training checkpoint (got {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointLoadError(f"{path} is not a training checkpoint of this project: missing keys {missing}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointLoadError(f"{path}: unknown checkpoint format {state['format']!r}")
    return state


class CheckpointManager:
    """Writes, prunes and finds checkpoints in one directory.  Only rank 0 calls ``save``."""

    def __init__(self, directory: str | Path, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.dir = Path(directory)
        self.keep_last = keep_last

    @property
    def last_path(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    def step_path(self, step: int) -> Path:
        return self.dir / f"step-{step:08d}.pt"

    def step_checkpoints(self) -> list[Path]:
        """Step files, newest first."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _STEP_RE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict[str, Any], step: int, is_best: bool = False) -> Path:
        """Write ``state`` for ``step``; update last.pt (and best.pt); prune old step files.

        Raises ``CheckpointSaveError`` if the write fails; the earlier files are untouched.
        """
        state = {"format": CHECKPOINT_FORMAT, **state, "step": step}
        path = self.step_path(step)
        try:
            atomic_torch_save(state, path)
            atomic_link(path, self.last_path)
            if is_best:
                atomic_link(path, self.best_path)
        except Exception as exc:
            raise CheckpointSaveError(
                f"writing checkpoint {path} failed ({type(exc).__name__}: {exc}); the previous checkpoint is intact"
            ) from exc
        for old in self.step_checkpoints()[self.keep_last :]:
            old.unlink(missing_ok=True)
        return path

    def load_latest_valid(self, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads; corrupt newer ones are skipped with a warning."""
        candidates = self.step_checkpoints()
        if not candidates and self.last_path.exists():
            candidates = [self.last_path]
        for path in candidates:
            try:
                return load_checkpoint_file(path, map_location), path
            except CheckpointLoadError as exc:
                warnings.warn(f"skipping unusable checkpoint: {exc}; trying the previous one", stacklevel=2)
        return None
