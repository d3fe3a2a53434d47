#!/usr/bin/env python3
"""The demo's training throughput from its frame cache and from decoding, side by side in one run.

    python benchmarks/demo_throughput.py [--steps 25] [--repeats 2] [--nproc 2] [-- TRAIN FLAGS]

Alternates ``torchrun --nproc_per_node=N train_ddp.py --max-steps STEPS --val-every 0
--demo-val-videos 0`` as the demo runs (clips read from its frame cache ``DEMO_DIR/frame_cache_*``)
and with the same settings
(``--config configs/demo.yaml``) on ``--videos DEMO_DIR/videos`` (every clip decoded every epoch
by DataLoader workers), ``--repeats`` times each, and reads each launch's own "clips/s over the
N steps of this launch" line (the steps only: rendering, cache building and start-up are not in
it).  Prints every launch, the median of each way and their ratio.  The demo clips are rendered
(and cached) by a first, untimed launch.  Flags after ``--`` go to every launch (e.g. ``--size 64``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/demo_throughput.py` puts benchmarks/ there
    sys.path.insert(0, str(REPO_ROOT))

from utils.config import parse_config  # noqa: E402

DEMO_CONFIG = REPO_ROOT / "configs" / "demo.yaml"
RATE = re.compile(r"([0-9.]+) clips/s over the (\d+) steps of this launch")
QUIET = ["--no-progress", "--no-log-model", "--no-log-checkpoints", "--no-system-metrics", "--no-plots"]


def launch(out: Path, nproc: int, steps: int, flags: list[str]) -> float:
    """One training launch; its clips/s."""
    cmd = ["torchrun", "--standalone", f"--nproc_per_node={nproc}", str(REPO_ROOT / "train_ddp.py")]
    # no validation, so none of the demo's validation-only clips either: they would be rendered for
    # nothing, and the decoding launches (--videos, not the demo) would split them into training
    cmd += ["--output-dir", str(out), "--max-steps", str(steps), "--val-every", "0", "--demo-val-videos", "0"]
    cmd += [*QUIET, *flags]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    match = RATE.search(res.stdout)
    if res.returncode != 0 or match is None:
        raise SystemExit(f"$ {' '.join(cmd)}\nexit {res.returncode}\n{(res.stdout + res.stderr)[-3000:]}")
    return float(match.group(1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=25, help="optimizer steps per launch")
    p.add_argument("--repeats", type=int, default=2, help="launches of each way, alternating")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes (default 2, as in the README)")
    args = p.parse_args(argv)
    demo_dir = REPO_ROOT / parse_config(extra, demo_config=DEMO_CONFIG)[0].demo_dir  # launches run in REPO_ROOT
    decoded = ["--config", str(DEMO_CONFIG), "--videos", str(demo_dir / "videos")]
    ways = {"frame cache": [], "decoding": [*decoded, "--annotations", str(demo_dir / "annotations.csv")]}
    rates: dict[str, list[float]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory(prefix="demo_throughput_") as tmp:
        launch(Path(tmp) / "warm-up", args.nproc, 1, extra)  # renders and caches the clips, untimed
        for i in range(args.repeats):
            for way, flags in ways.items():
                rate = launch(Path(tmp) / f"{way.replace(' ', '_')}_{i}", args.nproc, args.steps, [*flags, *extra])
                rates[way].append(rate)
                print(f"{way:12s} launch {i + 1}: {rate:.1f} clips/s", flush=True)
    median = {way: statistics.median(values) for way, values in rates.items()}
    for way, value in median.items():
        print(f"{way:12s} median {value:.1f} clips/s over {args.repeats} launch(es) of {args.steps} steps")
    print(f"frame cache / decoding: {median['frame cache'] / median['decoding']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
