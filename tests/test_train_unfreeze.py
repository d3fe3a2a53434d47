"""Freezing and progressive unfreezing in the real loop (2 ranks, so DDP is rebuilt on unfreeze)."""

import pytest
import torch
from launch_helpers import train

pytestmark = pytest.mark.slow


def _param_names(state, prefix):
    return [
        k
        for k in state["model"]
        if k.startswith(prefix) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    ]


def test_unfreeze_schedule_low_lr_and_resume_guard(tiny_demo, tmp_path):
    schedule = dict(
        batch_size=4,
        epochs=2,
        val_every=0,
        freeze="conv1",
        unfreeze_low_lr_factor=0.1,
        unfreeze_low_lr_epochs=1,
        keep_last=5,
    )
    res = train(tmp_path, tiny_demo, nproc=2, **schedule, unfreeze="layer4:1")
    assert "epoch 1: unfroze layer4" in res.stdout
    steps = sorted((tmp_path / "checkpoints").glob("step-*.pt"))
    first, second = (res.checkpoint(p.name) for p in steps[-2:])
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
    lrs = [
        (m["epoch"], m["train/lr/layer4/decay"], m["train/lr/base/decay"])
        for m in res.metrics()
        if "train/lr/base/decay" in m
    ]
    assert {e for e, _, _ in lrs} == {0, 1}
    for epoch, layer4, base in lrs:
        assert base > 0 and layer4 == pytest.approx((0.0 if epoch == 0 else 0.1) * base)
    # resuming with another schedule is refused before anything is loaded
    res2 = train(tmp_path, tiny_demo, ok=False, timeout=300, **schedule, unfreeze="layer4:2")
    assert "unfreeze schedule" in res2.stdout, res2.tail()
