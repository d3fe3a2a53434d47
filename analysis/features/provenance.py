"""What a features manifest records about where its numbers came from: file and input digests,
library versions, memory used."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_rows(rows: Iterable[tuple[str, ...]]) -> str:
    """One digest of an ordered list of string tuples (the videos an extraction covers)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update("\0".join(row).encode("utf-8") + b"\n")
    return digest.hexdigest()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def versions() -> dict[str, str | None]:
    import av
    import numpy
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "av": av.__version__,
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
    }


def rss_mib() -> float:
    """This process's resident set size now."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    """This process's largest resident set size so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
