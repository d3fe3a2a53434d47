"""Files that are complete or absent: write a temporary file beside the target, fsync it, rename
it over the target, fsync the directory.  Readers see the old file or the whole new one, never
part of it, and a crash (or a full disk) right after leaves no half-written file under a valid
name.  The one implementation for checkpoints, the frame cache, evaluation outputs, cleaned
annotation tables, converted checkpoints and generated clips."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["fsync_dir", "fsync_tree", "temporary_path", "atomic_file", "atomic_write", "atomic_write_text"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable.  Some file systems cannot open or fsync a directory;
    the rename is still atomic there, so that is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root`` (before renaming a whole folder into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(folder)


def temporary_path(path: str | os.PathLike) -> Path:
    """A unique hidden name beside ``path`` that keeps its suffix (writers that pick a format from
    the extension -- video encoders, pandas compression -- still do)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_file(p, "w") as fh: fh.write(...)`` -- ``p`` appears complete when the block ends.

    The file is created with the umask applied (``mkstemp`` would make it private to its owner,
    and caches and run folders are usually shared by a group), under its temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, mode.replace("w", "x"), **open_kwargs) as fh:  # "x": created here, never reused
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """For writers that take a path (``torch.save``, ``DataFrame.to_csv``, video encoders):
    ``write(temporary path)``, then fsync and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w", newline="", encoding="utf-8") as fh:
        fh.write(text)
