"""Freezing and progressive unfreezing in the real loop (2 ranks, so DDP is rebuilt on unfreeze)."""

import json

import pytest
import torch
from launch_helpers import TINY, run_train

pytestmark = pytest.mark.slow


def _param_names(state, prefix):
    return [
        k
        for k in state["model"]
        if k.startswith(prefix) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]


def test_unfreeze_schedule_low_lr_and_resume_guard(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    args = [
        "--videos",
        str(videos),
        "--annotations",
        str(annotations),
        "--output-dir",
        str(tmp_path),
        "--batch-size",
        "4",
        "--epochs",
        "2",
        "--val-every",
        "0",
        "--freeze",
        "conv1",
        "--unfreeze",
        "layer4:1",
        "--unfreeze-low-lr-factor",
        "0.1",
        "--unfreeze-low-lr-epochs",
        "1",
        "--keep-last",
        "5",
        *TINY,
    ]
    res = run_train(args, nproc=2, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "epoch 1: unfroze layer4" in res.stdout
    steps = sorted((tmp_path / "checkpoints").glob("step-*.pt"))
    first, second = (torch.load(p, map_location="cpu", weights_only=True) for p in steps[-2:])
    assert (first["epoch"], second["epoch"]) == (1, 2)

    def groups(state):
        return {g["name"]: g for g in state["optimizer"]["param_groups"]}

    def has_adam_state(state, group_name):
        return any(i in state["optimizer"]["state"] for i in groups(state)[group_name]["params"])

    # epoch 0: layer4 frozen (never stepped), conv1 frozen throughout, the rest trains
    assert not has_adam_state(first, "layer4/decay") and has_adam_state(first, "base/decay")
    assert has_adam_state(second, "layer4/decay")
    conv1 = [first["model"][k] for k in _param_names(first, "conv1.")]
    assert conv1 and all(torch.equal(a, second["model"][k]) for a, k in zip(conv1, _param_names(first, "conv1.")))
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in _param_names(first, "layer4."))
    # the LR each step used (logged per parameter group): layer4 gets 0 while frozen (epoch 0),
    # 0.1 x the schedule's LR in its low-LR epoch (epoch 1)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [
        (r["metrics"]["epoch"], r["metrics"]["train/lr/layer4/decay"], r["metrics"]["train/lr/base/decay"])
        for r in logged
        if "metrics" in r and "train/lr/base/decay" in r["metrics"]
    ]
    assert {e for e, _, _ in lrs} == {0, 1}
    for epoch, layer4, base in lrs:
        assert base > 0 and layer4 == pytest.approx((0.0 if epoch == 0 else 0.1) * base)
    # resuming with another schedule is refused before anything is loaded
    changed = [a if a != "layer4:1" else "layer4:2" for a in args]
    res2 = run_train(changed, nproc=1, timeout=300)
    assert res2.returncode != 0 and "unfreeze schedule" in res2.stdout
