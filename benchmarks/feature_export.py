#!/usr/bin/env python3
"""Memory and time of ``--export npz``: one generated layer per size, exported in a fresh process.

    python -m benchmarks.feature_export                      # 800 and 1600 rows x 100,000 float32
    python -m benchmarks.feature_export --rows 400,3200 --dim 50000

Each size is written as a standard .npy of random float32 rows (random values compress as little
as activations do), then a new process exports it with ``analysis.features.exports.write_net2brain``
and reports its peak RSS before and after the export (the kernel's count), the seconds taken and
whether the last row came back bit for bit.  A peak that stays the same as the layer doubles is
the claim of docs/features.md ("the export's memory does not grow with the layer").
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_layer(path: Path, rows: int, dim: int) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 50):
        stop = min(start + 50, rows)
        array[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    array.flush()
    del array


def export_once(root: Path, rows: int, dim: int) -> dict:
    """Runs in the child process: the export alone, measured."""
    from analysis.features.exports import NET2BRAIN_DIR, write_net2brain

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    layers = {"big": {"file": "big.npy", "shape": [rows, dim], "dtype": "float32"}}
    write_net2brain(root, layers, [f"v{i}.mp4" for i in range(rows)], np.ones(rows, dtype=bool))
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with np.load(root / NET2BRAIN_DIR / "big.npz") as npz:
        same = bool(np.array_equal(npz[f"v{rows - 1}"][0], np.load(root / "big.npy", mmap_mode="r")[rows - 1]))
    return {
        "peak_rss_before_mib": round(before),
        "peak_rss_after_mib": round(after),
        "seconds": round(seconds, 1),
        "last_row_equal": same,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="800,1600", help="comma list of layer row counts")
    p.add_argument("--dim", type=int, default=100_000, help="values per row")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child and args.make:
        make_layer(Path(args.child) / "big.npy", int(args.rows), args.dim)
        return 0
    if args.child:
        print(json.dumps(export_once(Path(args.child), int(args.rows), args.dim)))
        return 0
    for rows in [int(r) for r in args.rows.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            # Both steps in processes of their own: a child inherits its parent's peak RSS, and
            # writing the layer through a memory map raises that peak to the layer's size.
            child = [sys.executable, "-m", "benchmarks.feature_export", "--child", tmp, "--rows", str(rows)]
            child += ["--dim", str(args.dim)]
            subprocess.run([*child, "--make"], cwd=REPO, check=True)
            out = subprocess.run(child, cwd=REPO, check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(f"layer {rows} x {args.dim} float32 ({rows * args.dim * 4 / 2**20:.0f} MiB): {result}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
