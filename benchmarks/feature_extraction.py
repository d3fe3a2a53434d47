#!/usr/bin/env python3
"""Feature extraction speed and memory: ``extract_features.py`` for each depth, side by side in one run.

    python -m benchmarks.feature_extraction                          # depth 18 and 50, 16 x 224, 12 clips
    python -m benchmarks.feature_extraction --depths 18,50 --clips 32 --json feats.json
    python -m benchmarks.feature_extraction --pool none --layers layer1 --dtype float16

Each depth runs the real command (``--random-init --depth D``: the weights do not change the
cost) as its own process on the same generated clips (3 s, 30 fps H.264 at Moments-in-Time
sizes, see benchmarks/data_throughput.py), with the default layers (layer1..layer4), mean
pooling and 1x1 views unless told otherwise, once on the first clip only and once on all of
them.  Reported per depth: clips/s over the extraction loop of the full run (decoding, the
forward pass, pooling and writing; from its features.json); CPU seconds per clip (user +
system of the process and its loader workers, the full run's less the one-clip run's, per
extra clip: start-up cancels out, and the figure stays meaningful when others share the
machine); wall time of the full run including start-up and model set-up; and peak memory: the
process's peak RSS as the kernel counted it, its growth during extraction (as
extract_features.py reports it: mostly the forward pass's activations), and the GPU's peak
allocation when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.data_throughput import machine, make_clips, table  # noqa: E402


def run_depth(depth: int, clip_list: Path, out: Path, args) -> dict:
    cmd = [
        sys.executable,
        str(REPO_ROOT / "extract_features.py"),
        "--random-init",
        "--depth",
        str(depth),
        str(clip_list),
        "--layers",
        args.layers,
        "--pool",
        args.pool,
        "--dtype",
        args.dtype,
        "--frames",
        str(args.frames),
        "--size",
        str(args.size),
        "--batch-size",
        str(args.batch_size),
        "--num-workers",
        str(args.num_workers),
        "--output",
        str(out),
        "--no-progress",
        "--overwrite",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"depth {depth} failed:\n{log[-3000:]}")
    attempt = json.loads((out / "features.json").read_text())["attempts"][-1]
    clips = attempt["videos"]  # 1x1 views: one clip per video
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "depth": depth,
        "clips": clips,
        "clips_per_s": clips / attempt["extraction_s"],
        "cpu_s": cpu,
        "extraction_s": attempt["extraction_s"],
        "wall_s": wall,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "rss_growth_mib": attempt["rss_growth_mib"],
        "gpu_peak_mib": attempt["gpu_peak_mib"],
        "device": attempt["device"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--depths", default="18,50")
    p.add_argument("--clips", type=int, default=12, help="generated clips (>= 2; each extracted once per depth)")
    p.add_argument("--layers", default="layer1,layer2,layer3,layer4")
    p.add_argument("--pool", default="mean")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--work-dir", default=None, help="keep clips and outputs here (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.clips < 2:
        p.error("--clips must be >= 2 (the CPU time per clip is the difference to a one-clip run)")

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="feature_extraction-"))
    names = make_clips(work / "clips", args.clips, seconds=3.0, fps=30)
    lists = {}
    for count in (1, len(names)):
        lists[count] = work / f"clips{count}.txt"
        lists[count].write_text("\n".join(str(work / "clips" / n) for n in names[:count]) + "\n")
    results = {"machine": machine(), "settings": vars(args).copy(), "depths": []}
    print(results["machine"], flush=True)
    for depth in (int(d) for d in args.depths.split(",")):
        print(f"ResNet3D-{depth} ...", flush=True)
        one = run_depth(depth, lists[1], work / f"out_{depth}_one", args)
        full = run_depth(depth, lists[len(names)], work / f"out_{depth}", args)
        full["cpu_s_per_clip"] = (full["cpu_s"] - one["cpu_s"]) / (full["clips"] - one["clips"])
        results["depths"].append(full)
    first = results["depths"][0]
    rows = [
        [
            f"ResNet3D-{r['depth']}",
            r["device"],
            r["clips"],
            f"{r['clips_per_s']:.2f}",
            f"{r['clips_per_s'] / first['clips_per_s']:.2f}x",
            f"{r['cpu_s_per_clip']:.1f}",
            f"{r['wall_s']:.0f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['rss_growth_mib']:.0f}",
            "-" if r["gpu_peak_mib"] is None else f"{r['gpu_peak_mib']:.0f}",
        ]
        for r in results["depths"]
    ]
    header = [
        "model",
        "device",
        "clips",
        "clips/s",
        f"vs {first['depth']}",
        "CPU s per clip",
        "wall s (incl. start)",
        "peak RSS MiB",
        "RSS growth MiB",
        "GPU peak MiB",
    ]
    results["report"] = (
        f"{args.frames} x {args.size}^2, --layers {args.layers} --pool {args.pool} --dtype "
        f"{args.dtype}, batch {args.batch_size}, {args.num_workers} loader worker(s)\n" + table(header, rows)
    )
    print("\n" + results["report"], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
