"""Freezing by prefix, frozen BatchNorm staying in eval, progressive unfreezing, weight-decay split."""

import io

import pytest
import torch
from torch import nn

from resnet3d import UnfreezeSchedule, build_model, freeze, no_weight_decay, unfreeze

X = torch.randn(2, 3, 2, 32, 32)


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def backward_once(model):
    model.zero_grad(set_to_none=True)
    outputs = model.train()(X)
    sum(o.sum() for o in outputs.values()).backward()


@pytest.fixture(scope="module")
def model():
    return build_model(depth=50, dropout=0.0)


@pytest.fixture(autouse=True)
def _all_trainable(model):
    unfreeze(model, ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "last_linear"])
    yield


def test_gradients_reach_only_unfrozen_parameters_and_a_step_leaves_frozen_ones(model):
    frozen = freeze(model, ["conv1", "bn1", "layer1", "layer4.2", "last_linear.peoplecount"])
    assert "layer4.2.bn3.weight" in frozen and "last_linear.peoplecount.bias" in frozen
    assert "last_linear.peoplecount_certain.weight" not in frozen  # dot boundary, not string prefix
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)  # all params, as the loop does
    backward_once(model)
    for name, param in model.named_parameters():
        assert (param.grad is None) == (name in frozen), name
    optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == (name in frozen), name


def test_frozen_batchnorm_stays_in_eval_after_train_and_keeps_its_statistics(model):
    freeze(model, "layer2.0.bn1")
    model.train()
    assert not model.layer2[0].bn1.training and model.layer2[0].bn2.training and model.training
    stats = model.layer2[0].bn1.running_mean.clone()
    steps = model.layer2[0].bn1.num_batches_tracked.item(), model.layer2[0].bn2.num_batches_tracked.item()
    backward_once(model)
    assert torch.equal(model.layer2[0].bn1.running_mean, stats)
    assert model.layer2[0].bn1.num_batches_tracked.item() == steps[0]
    assert model.layer2[0].bn2.num_batches_tracked.item() == steps[1] + 1
    # a BN with only one of its two parameters frozen is still trained (and tracks statistics)
    freeze(model, "layer2.0.bn2.weight")
    assert model.layer2[0].bn2.training

    unfreeze(model, "layer2.0.bn1")  # applies at once while the model trains ...
    assert model.layer2[0].bn1.training
    model.eval()  # ... and eval() still means eval everywhere
    assert not any(m.training for m in model.modules())
    freeze(model, "layer3")
    unfreeze(model, "layer3")
    assert not model.layer3[0].bn1.training


def test_freeze_through_wrappers_and_wrapped_names(model):
    wrapper = nn.Module()
    wrapper.module = model  # DDP / DataParallel naming
    frozen = freeze(wrapper, "module.layer4")
    assert frozen and all(n.startswith("layer4.") for n in frozen)
    assert trainable_names(model).isdisjoint(frozen)
    wrapper.train()
    assert not model.layer4[0].bn1.training


def test_a_prefix_that_matches_nothing_is_an_error_naming_it(model):
    with pytest.raises(ValueError) as info:
        freeze(model, ["layer4", "layer5", "last_linear.colour"])
    message = str(info.value)
    assert "['layer5', 'last_linear.colour']" in message
    assert "conv1, bn1, layer1, layer2, layer3, layer4, last_linear" in message
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}  # nothing half-applied


def test_prefixes_respect_dot_boundaries_in_deep_stages():
    deep = build_model(depth=101)
    frozen = freeze(deep, "layer3.1")
    assert frozen and all(n.startswith("layer3.1.") for n in frozen)  # not layer3.10 ... layer3.19


def test_unfreeze_schedule_progression_is_idempotent_and_longest_prefix_wins(model):
    schedule = UnfreezeSchedule({"layer4": 2, "layer4.2": 3, "module.layer3": 4})
    assert schedule.apply(model, 0) == []
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(("layer3.", "layer4.")))
    assert model.layer1[0].conv1.weight.requires_grad  # not scheduled: untouched
    assert schedule.apply(model, 1) == []
    assert schedule.apply(model, 2) == ["layer4"]
    assert model.layer4[1].conv2.weight.requires_grad and not model.layer4[2].conv2.weight.requires_grad
    assert schedule.apply(model, 2) == []  # idempotent
    assert schedule.apply(model, 7) == ["layer4.2", "layer3"]  # a jump (resume) unfreezes everything due
    assert schedule.apply(model, 7) == []
    assert schedule.apply(model, 2) == []  # going back re-freezes
    assert not model.layer3[0].conv1.weight.requires_grad and model.layer4[0].conv1.weight.requires_grad
    model.train()
    assert not model.layer3[0].bn1.training and model.layer4[0].bn1.training
    assert schedule.prefix_for("layer4.2.bn3.weight") == "layer4.2" and schedule.prefix_for("conv1.weight") is None


def test_lr_scale_is_low_just_after_unfreezing():
    schedule = UnfreezeSchedule({"layer4": 2, "last_linear": 0}, low_lr_factor=0.1, low_lr_epochs=2)
    name = "module._orig_mod.layer4.0.conv1.weight"
    assert [schedule.lr_scale(name, e) for e in range(6)] == [0.0, 0.0, 0.1, 0.1, 1.0, 1.0]
    assert [schedule.lr_scale("last_linear.peoplecount.weight", e) for e in range(3)] == [0.1, 0.1, 1.0]
    assert schedule.lr_scale("conv1.weight", 0) == 1.0
    assert UnfreezeSchedule({"layer4": 2}).lr_scale("layer4.0.bn1.bias", 2) == 1.0


def test_unfreeze_schedule_state_round_trip_and_validation(model):
    schedule = UnfreezeSchedule({"layer4": 2, "layer3": 5}, low_lr_factor=0.25, low_lr_epochs=1)
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    restored = UnfreezeSchedule({})
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # plain values: safe to store
    assert restored.state_dict() == schedule.state_dict()
    assert [restored.lr_scale("layer4.0.conv1.weight", e) for e in range(4)] == [0.0, 0.0, 0.25, 1.0]
    assert restored.apply(model, 5) == []  # fresh model: nothing was frozen, nothing "newly" unfrozen
    assert restored.apply(model, 4) == [] and restored.apply(model, 5) == ["layer3"]
    with pytest.raises(ValueError, match="layer9"):
        UnfreezeSchedule({"layer9": 1}).apply(model, 0)
    with pytest.raises(ValueError, match="int >= 0"):
        UnfreezeSchedule({"layer4": -1})
    with pytest.raises(ValueError, match="low_lr_factor"):
        UnfreezeSchedule({"layer4": 1}, low_lr_factor=0)


def test_no_weight_decay_for_norms_and_biases(model):
    params = dict(model.named_parameters())
    decided = {n: no_weight_decay(n, p) for n, p in params.items()}
    assert decided["conv1.weight"] is False and decided["layer1.0.downsample.0.weight"] is False
    assert decided["last_linear.peoplecount.weight"] is False
    assert decided["bn1.weight"] and decided["layer4.2.bn3.bias"] and decided["last_linear.peoplecount.bias"]
    assert sum(decided.values()) == sum(1 for p in params.values() if p.ndim == 1)
