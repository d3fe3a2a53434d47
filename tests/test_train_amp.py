"""The AMP paths of train_ddp.py at tiny size on CPU: fp16 with GradScaler, bf16 autocast."""

import json
import math

import pytest
import torch
from launch_helpers import TINY, run_train

pytestmark = pytest.mark.slow


def _run(tiny_demo, out, amp, steps, extra=()):
    videos, annotations = tiny_demo
    res = run_train(
        [
            "--videos",
            str(videos),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(out),
            "--batch-size",
            "2",
            "--max-steps",
            str(steps),
            "--val-every",
            "0",
            "--amp",
            amp,
            *TINY,
            *extra,
        ],
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:]
    ckpt = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return ckpt, [r["metrics"] for r in logged if "metrics" in r]


def test_fp16_with_grad_scaler(tiny_demo, tmp_path):
    ckpt, logged = _run(tiny_demo, tmp_path, "fp16", steps=14)
    # GradScaler starts at 2**16: the first steps overflow, are skipped, and the scale backs off
    assert ckpt["scaler"]["scale"] < 2.0**16
    assert 0 < ckpt["counters"]["fp16_overflows"] < 14
    assert ckpt["counters"]["nonfinite_skips"] == 0  # overflows are not data problems
    assert ckpt["optimizer"]["state"], "no optimizer step was ever taken"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    losses = [m["train/loss"] for m in logged if "train/loss" in m]
    assert losses and all(math.isfinite(v) for v in losses)


def test_bf16_autocast(tiny_demo, tmp_path):
    # On CPU the loop turns oneDNN off for bf16: PyTorch 2.14.1's oneDNN bf16 conv3d backward
    # crashes on 4-frame inputs and returns non-deterministic, sometimes non-finite gradients at
    # other tiny shapes (docs/known_issues.md).  This run at 4 frames would crash or skip steps
    # without that.
    ckpt, logged = _run(tiny_demo, tmp_path, "bf16", steps=2)
    assert ckpt["scaler"] == {}  # GradScaler is disabled outside fp16
    assert ckpt["config"]["amp"] == "bf16" and ckpt["step"] == 2
    assert ckpt["counters"]["nonfinite_skips"] == 0 and ckpt["optimizer"]["state"]
    losses = [m["train/loss"] for m in logged if "train/loss" in m]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
