"""The AMP paths of train_ddp.py at tiny size on CPU: fp16 with GradScaler, bf16 autocast."""

import math

import pytest
import torch
from launch_helpers import train

pytestmark = pytest.mark.slow


SHORT = dict(batch_size=2, val_every=0)


def test_fp16_with_grad_scaler(tiny_demo, tmp_path):
    res = train(tmp_path, tiny_demo, **SHORT, amp="fp16", max_steps=14)
    ckpt, logged = res.checkpoint(), res.metrics()
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
    res = train(tmp_path, tiny_demo, **SHORT, amp="bf16", max_steps=2)
    ckpt, logged = res.checkpoint(), res.metrics()
    assert ckpt["scaler"] == {}  # GradScaler is disabled outside fp16
    assert ckpt["config"]["amp"] == "bf16" and ckpt["step"] == 2
    assert ckpt["counters"]["nonfinite_skips"] == 0 and ckpt["optimizer"]["state"]
    losses = [m["train/loss"] for m in logged if "train/loss" in m]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
