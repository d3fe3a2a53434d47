#!/usr/bin/env python3
"""What the demo learns, measured on a large held-out demo set of another seed.

    python benchmarks/demo_learning.py                       # the default demo command, then evaluation
    python benchmarks/demo_learning.py --static              # the no-motion control: same setup, one frame
    python benchmarks/demo_learning.py --name long -- --epochs 20 --demo-videos 1200   # any train_ddp.py flags

One run: (1) render (once, cached) the evaluation set -- ``--eval-videos`` demo clips of
``--eval-seed``, a seed the training clips never use, so no scene is shared; (2) run the real
command ``torchrun --nproc_per_node=N train_ddp.py`` with the flags after ``--`` (the demo
preset fills the rest) and time it, rendering of its own clips included; (3) evaluate the
run's final model (``last.pt``) with ``evaluate.py --split all`` on the evaluation set; (4)
report per feature the Spearman correlation with a bootstrap standard error (resampling the
evaluation clips), the mean over the eight score features, and people-count / indoor-outdoor
accuracy.  ``--static`` renders both the training and the evaluation clips as their first
frame repeated (``train_ddp.py --demo-static``, ``python -m datasets.demo --static``): what is
still learned without motion.  Results go to ``OUT/NAME/summary.json``.

The training run's own ``val/*`` metrics come from about 560 clips of the training seed (the
demo's 10 % validation split plus ``demo_val_videos`` clips rendered for validation only), each
feature's Spearman with its bootstrap standard error.  The evaluation set here has 1000 clips of
another seed (about 600 with two or more agents, the only ones with a joint-action score), which
puts each feature's standard error near 0.03: the check that the run's own validation says the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from datasets.demo import FEATURES, ensure_demo_dataset  # noqa: E402
from evaluate import TARGET_PREFIX as TARGET  # noqa: E402  (the annotation beside each prediction)
from utils.metrics import spearman, spearman_se  # noqa: E402
from utils.plots import read_metrics_jsonl  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    train_flags: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, train_flags = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", default=None, help="run name (default: default, or static with --static)")
    p.add_argument("--out", default="runs/demo_learning", help="where runs and summaries go")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes (default 2, as in the README)")
    p.add_argument("--static", action="store_true", help="train and evaluate on clips without motion")
    p.add_argument("--eval-seed", type=int, default=1, help="seed of the evaluation clips (training uses --seed, 0)")
    p.add_argument("--eval-videos", type=int, default=1000)
    p.add_argument("--eval-dir", default=".cache", help="where evaluation sets are rendered (reused)")
    p.add_argument("--checkpoint", default="last.pt", help="which of the run's checkpoints to evaluate")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the standard errors")
    p.add_argument("--skip-train", action="store_true", help="evaluate an existing run under OUT/NAME/train")
    args = p.parse_args(argv)
    args.name = args.name or ("static" if args.static else "default")
    return args, train_flags


def bootstrap_spearman(pred: np.ndarray, target: np.ndarray, resamples: int):
    """(Spearman, bootstrap standard error, n) over the clips that have a target; the standard error
    is the one training's validation reports (utils.metrics.spearman_se)."""
    keep = np.isfinite(pred) & np.isfinite(target)
    return spearman(pred, target), spearman_se(pred, target, resamples), int(keep.sum())


def summarize(predictions: Path, resamples: int) -> dict:
    frame = pd.read_csv(predictions)
    rng = np.random.default_rng(0)
    out: dict = {"features": {}}
    features = [f for f in FEATURES if f"{f}_score" in frame]  # a run may train only some tasks
    for feature in features:
        col = f"{feature}_score"
        rho, se, n = bootstrap_spearman(frame[col].to_numpy(float), frame[TARGET + col].to_numpy(float), resamples)
        out["features"][feature] = {"spearman": rho, "se": se, "n": n}
    out["mean_spearman"] = float(np.mean([v["spearman"] for v in out["features"].values()]))
    # the mean's standard error from resampling whole clips (the features are correlated)
    n = len(frame)
    draws = rng.integers(0, n, size=(resamples, n))
    means = []
    for i in draws:
        rows = frame.iloc[i]
        means.append(
            np.nanmean(
                [
                    spearman(rows[f"{f}_score"].to_numpy(float), rows[TARGET + f"{f}_score"].to_numpy(float))
                    for f in features
                ]
            )
        )
    out["mean_spearman_se"] = float(np.std(means, ddof=1))
    for task, col in (("peoplecount", "peoplecount"), ("location", "location_score")):
        if col in frame and TARGET + col in frame:
            known = frame[TARGET + col].notna()
            pred, target = frame.loc[known, col].astype(str), frame.loc[known, TARGET + col].astype(str)
            out[f"{task}_accuracy"] = float((pred == target).mean())
    return out


def final_validation(train_out: Path, features) -> dict:
    """The training run's own last validation per feature (Spearman, standard error, n), from its
    metrics.jsonl; empty if it logged none."""
    path = train_out / "metrics.jsonl"
    if not path.exists():
        return {}
    history = read_metrics_jsonl(path)
    last = {name: values[-1][1] for name, values in history.items() if values}
    out = {}
    for feature in features:
        if f"val/{feature}/spearman" in last:
            out[feature] = {
                k: last.get(f"val/{feature}/{m}")
                for k, m in (("spearman", "spearman"), ("se", "spearman_se"), ("n", "n"))
            }
    return out


def main(argv: list[str] | None = None) -> int:
    args, train_flags = parse_args(argv)
    run_dir = Path(args.out) / args.name
    run_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_static" if args.static else ""
    eval_root = Path(args.eval_dir) / f"demo_eval_seed{args.eval_seed}_{args.eval_videos}{suffix}"
    t0 = time.perf_counter()
    videos, annotations = ensure_demo_dataset(eval_root, args.eval_videos, args.eval_seed, static=args.static)
    print(f"evaluation set: {args.eval_videos} clips, seed {args.eval_seed}{suffix} ({time.perf_counter() - t0:.0f} s)")

    train_out = run_dir / "train"
    train_seconds = None
    if not args.skip_train:
        cmd = ["torchrun", "--standalone", f"--nproc_per_node={args.nproc}", str(REPO_ROOT / "train_ddp.py")]
        cmd += ["--output-dir", str(train_out), "--no-progress"]
        if args.static:
            cmd += ["--demo-static", "--demo-dir", ".cache/demo_static"]
        cmd += train_flags
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        with open(run_dir / "train.log", "w") as log:
            res = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        train_seconds = time.perf_counter() - t0
        if res.returncode != 0:
            print(f"training failed (exit {res.returncode}); see {run_dir / 'train.log'}", file=sys.stderr)
            return 1
        print(f"training: {train_seconds:.0f} s")

    checkpoint = train_out / "checkpoints" / args.checkpoint
    cmd = [sys.executable, str(REPO_ROOT / "evaluate.py"), "--checkpoint", str(checkpoint)]
    cmd += ["--videos", str(videos), "--annotations", str(annotations), "--split", "all"]
    cmd += ["--output-dir", str(run_dir / "eval"), "--no-mlflow", "--no-plots", "--no-progress"]
    cmd += ["--num-workers", "2", "--batch-size", "32"]
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:], file=sys.stderr)
        return 1

    summary = summarize(run_dir / "eval" / "predictions_all.csv", args.bootstrap)
    summary.update(
        name=args.name,
        static=args.static,
        train_flags=train_flags,
        train_seconds=train_seconds,
        checkpoint=str(checkpoint),
        eval_set={"seed": args.eval_seed, "videos": args.eval_videos},
        machine=f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
    )
    summary["final_validation"] = final_validation(train_out, summary["features"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\n{args.name}: held-out Spearman on {args.eval_videos} clips of seed {args.eval_seed} (± bootstrap SE)")
    print(f"  {'':14s} {'held-out':>22s}   {'the run’s last validation':>27s}   difference")
    for feature, v in summary["features"].items():
        own = summary["final_validation"].get(feature)
        line = f"  {feature:14s} {v['spearman']:6.3f} ± {v['se']:.3f} (n={v['n']:4d})"
        if own is not None and own["spearman"] is not None:
            se, n = (float("nan") if own[k] is None else own[k] for k in ("se", "n"))
            line += f"   {own['spearman']:6.3f} ± {se:.3f} (n={n:4.0f})"
            line += f"   {own['spearman'] - v['spearman']:+.3f}"
        print(line)
    print(f"  {'mean':14s} {summary['mean_spearman']:6.3f} ± {summary['mean_spearman_se']:.3f}")
    for task in ("peoplecount", "location"):
        if f"{task}_accuracy" in summary:
            print(f"  {task} accuracy {summary[f'{task}_accuracy']:.3f}")
    if train_seconds is not None:
        print(f"  training command: {train_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
