"""Loading MiT, Lightning-version and own checkpoints: strict backbone, reported head handling."""

import json
from pathlib import Path

import pytest
import torch

from resnet3d import CheckpointMismatchError, build_model, load_pretrained
from utils.tasks import ALL_OUTPUTS

LAYOUTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "layouts"
X = torch.randn(2, 3, 2, 32, 32, generator=torch.Generator().manual_seed(1))


def randomize_normalisation(model):
    """Non-default BN statistics and affine values, so a BN that failed to load changes the output."""
    g = torch.Generator().manual_seed(7)
    for name, tensor in model.state_dict().items():
        if "running_var" in name or (name.endswith(".weight") and tensor.dim() == 1):
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g))
        elif "running_mean" in name or (name.endswith(".bias") and tensor.dim() == 1):
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=g))
        elif name.endswith("num_batches_tracked"):
            tensor.fill_(123)
    return model


@pytest.fixture(scope="module")
def source():
    """The model every checkpoint here is written from (its outputs are the reference)."""
    torch.manual_seed(3)
    model = randomize_normalisation(build_model(depth=50)).eval()
    with torch.no_grad():
        return model, model.forward_features(X), model(X)


def mit_checkpoint(model, with_num_batches_tracked=True, classes=305):
    """Exactly the official layout: {'state_dict': {'module.<name>': ...}} with a K-class last_linear."""
    state = {
        f"module.{n}": t.clone()
        for n, t in model.state_dict().items()
        if not n.startswith("last_linear.") and (with_num_batches_tracked or not n.endswith("num_batches_tracked"))
    }
    state["module.last_linear.weight"] = torch.randn(classes, 2048)
    state["module.last_linear.bias"] = torch.randn(classes)
    return {"epoch": 30, "arch": "resnet3d50", "best_prec1": 28.5, "state_dict": state}


def lightning_checkpoint(model):
    return {
        "epoch": 4,
        "global_step": 1000,
        "pytorch-lightning_version": "1.9.5",
        "state_dict": {f"model.{n}": t.clone() for n, t in model.state_dict().items()},
        "optimizer_states": [],
        "lr_schedulers": [],
    }


def features_of(model):
    with torch.no_grad():
        return model.eval().forward_features(X)


@pytest.mark.parametrize("with_nbt", [True, False])
def test_official_mit_file_loads_strictly_and_reproduces_features(source, tmp_path, with_nbt):
    model_src, features, _ = source
    path = tmp_path / "moments_v2_RGB_imagenet_resnet3d50_segment16.pth.tar"
    torch.save(mit_checkpoint(model_src, with_num_batches_tracked=with_nbt), path)

    model = build_model(depth=50, pretrained=path)
    report = model.pretrained_report
    assert report.kind == "mit" and report.prefix == "module."
    assert torch.allclose(features_of(model), features, rtol=1e-5, atol=1e-6)
    assert set(report.skipped) == {"module.last_linear.weight", "module.last_linear.bias"}
    assert "305-class classifier" in report.skipped["module.last_linear.weight"]
    assert report.heads_loaded == [] and report.heads_initialized == list(ALL_OUTPUTS)
    n_backbone = sum(1 for n in model_src.state_dict() if not n.startswith("last_linear."))
    assert len(report.loaded) == n_backbone - (0 if with_nbt else 53)
    assert model.bn1.num_batches_tracked.item() == (123 if with_nbt else 0)


def test_fixture_is_exactly_the_documented_mit_layout(source):
    path = LAYOUTS / "mit_resnet3d50.json"
    if not path.exists():
        pytest.skip(f"reference layout not available: {path} (../shared is absent)")
    layout = json.loads(path.read_text())["resnet3d50"]
    written = {n: list(t.shape) for n, t in mit_checkpoint(source[0])["state_dict"].items()}
    assert written == {layout["checkpoint_key_prefix"] + n: s for n, s in layout["tensors"].items()}


def test_fixture_is_exactly_the_documented_lightning_layout(source):
    path = LAYOUTS / "seed_lightning_multihead.json"
    if not path.exists():
        pytest.skip(f"reference layout not available: {path} (../shared is absent)")
    layout = json.loads(path.read_text())
    written = {n: list(t.shape) for n, t in lightning_checkpoint(source[0])["state_dict"].items()}
    assert written == layout["tensors"]
    assert {k: v[0] for k, v in layout["forward_outputs"].items()} == ALL_OUTPUTS


def test_wrong_shape_missing_and_unexpected_tensors_are_listed(source):
    checkpoint = mit_checkpoint(source[0])
    state = checkpoint["state_dict"]
    state["module.layer3.1.conv2.weight"] = torch.zeros(256, 256, 3, 3, 1)
    del state["module.layer2.0.bn1.running_var"]
    state["module.layer4.0.extra.weight"] = torch.zeros(3)
    model = build_model(depth=50)
    before = model.layer1[0].conv1.weight.clone()
    with pytest.raises(CheckpointMismatchError) as info:
        load_pretrained(model, checkpoint)
    message = str(info.value)
    assert "layer3.1.conv2.weight: checkpoint (256, 256, 3, 3, 1) vs model (256, 256, 3, 3, 3)" in message
    assert "Missing from the checkpoint (1):\n    layer2.0.bn1.running_var (128,)" in message
    assert "Not in the model (1):\n    layer4.0.extra.weight (3,)" in message
    assert torch.equal(model.layer1[0].conv1.weight, before)  # nothing half-loaded


def test_checkpoint_of_another_depth_names_the_depth(source):
    with pytest.raises(CheckpointMismatchError, match=r"looks like ResNet3D-50; build the model with depth=50") as info:
        load_pretrained(build_model(depth=101), mit_checkpoint(source[0]))
    assert "Missing from the checkpoint (" in str(info.value) and "... and " in str(info.value)


def test_not_a_resnet3d_is_rejected():
    with pytest.raises(CheckpointMismatchError, match="no ResNet3D found"):
        load_pretrained(build_model(depth=18), {"state_dict": {"fc.weight": torch.zeros(2, 2)}})
    with pytest.raises(CheckpointMismatchError, match="top-level keys: \\['epoch', 'args'\\]"):
        load_pretrained(build_model(depth=18), {"epoch": 1, "args": {"lr": 0.1}})


def test_lightning_checkpoint_loads_backbone_and_all_heads(source, tmp_path):
    model_src, _, outputs = source
    path = tmp_path / "epoch=4-step=1000.ckpt"
    checkpoint = lightning_checkpoint(model_src)
    checkpoint["state_dict"]["criterion.pos_weight"] = torch.ones(5)  # LightningModule state beside the net
    torch.save(checkpoint, path)
    model = build_model(depth=50)
    report = load_pretrained(model, path)
    assert report.kind == "lightning" and report.prefix == "model."
    assert report.heads_loaded == list(ALL_OUTPUTS) and report.heads_initialized == []
    assert report.skipped == {"criterion.pos_weight": "outside the network (no 'model.' prefix)"}
    with torch.no_grad():
        loaded = model.eval()(X)
    for name in ALL_OUTPUTS:
        torch.testing.assert_close(loaded[name], outputs[name], rtol=1e-5, atol=1e-6)


def test_task_subset_loads_the_matching_heads_and_reports_the_rest(source):
    model_src, _, outputs = source
    model = build_model(depth=50, tasks=["peoplecount", "valence"])
    report = load_pretrained(model, lightning_checkpoint(model_src))
    assert report.heads_loaded == ["valence_score", "valence_confidence", "peoplecount", "peoplecount_certain"]
    assert "model.last_linear.distance_score.weight" in report.skipped
    assert len(report.skipped) == 2 * (len(ALL_OUTPUTS) - 4)
    with torch.no_grad():
        loaded = model.eval()(X)
    assert list(loaded) == report.heads_loaded
    for name in loaded:
        torch.testing.assert_close(loaded[name], outputs[name], rtol=1e-5, atol=1e-6)


def test_head_of_a_different_width_is_skipped_not_forced(source):
    checkpoint = lightning_checkpoint(source[0])
    checkpoint["state_dict"]["model.last_linear.peoplecount.weight"] = torch.zeros(4, 2048)
    checkpoint["state_dict"]["model.last_linear.peoplecount.bias"] = torch.zeros(4)
    model = build_model(depth=50, tasks="peoplecount")
    report = load_pretrained(model, checkpoint)
    assert report.heads_loaded == ["peoplecount_certain"] and report.heads_initialized == ["peoplecount"]
    assert "differs from the model's (5, 2048)" in report.skipped["model.last_linear.peoplecount.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"no matching head .*\['peoplecount'\]"):
        load_pretrained(model, checkpoint, require_heads=True)


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_own_training_checkpoint_and_bare_state_dict_with_any_wrapper_prefix(source, prefix):
    model_src, _, outputs = source
    state = {prefix + n: t.clone() for n, t in model_src.state_dict().items()}
    for checkpoint, kind in (
        ({"model": state, "optimizer": {"state": {}}, "config": {"depth": 50}}, "training"),
        (state, "state_dict"),
    ):
        model = build_model(depth=50)
        report = load_pretrained(model, checkpoint, require_heads=True)
        assert report.kind == kind and report.prefix == prefix
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(X)["peoplecount"], outputs["peoplecount"])


def test_loading_into_a_compiled_or_wrapped_model_uses_unwrapped_names(source):
    model_src, features, _ = source
    inner = build_model(depth=50)
    wrapper = torch.nn.Module()
    wrapper.module = inner  # what DDP / DataParallel look like to state_dict()
    report = load_pretrained(wrapper, mit_checkpoint(model_src))
    assert report.kind == "mit"
    torch.testing.assert_close(features_of(inner), features, rtol=1e-5, atol=1e-6)
