"""Architecture: shapes for every depth, tiny and one-frame clips, names equal to the MiT layout."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from resnet3d import MultiTaskResNet3D, build_model
from utils.tasks import ALL_OUTPUTS, output_sizes

MIT_LAYOUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "layouts" / "mit_resnet3d50.json"
FEATURE_DIM = {18: 512, 34: 512, 50: 2048, 101: 2048, 152: 2048}


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_every_depth_gives_named_logits_and_features(depth):
    model = build_model(depth=depth).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        outputs = model(x)
        features = model.forward_features(x)
    assert list(outputs) == list(ALL_OUTPUTS)
    for name, width in ALL_OUTPUTS.items():
        assert outputs[name].shape == ((2,) if width == 1 else (2, width)), name
    assert outputs["peoplecount"].shape == (2, 5)
    assert features.shape == (2, FEATURE_DIM[depth])
    assert model.feature_dim == FEATURE_DIM[depth] and model.depth == depth


@pytest.mark.parametrize("frames, size", [(1, 32), (2, 32), (3, 45), (16, 64)])
def test_small_and_odd_clip_sizes_pass_the_temporal_strides(frames, size):
    model = build_model(depth=50).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, frames, size, size + 7))
    assert features.shape == (1, 2048)
    assert torch.isfinite(features).all()


def test_wrong_input_layout_is_a_clear_error():
    model = build_model(depth=18)
    with pytest.raises(ValueError, match=r"\(N, 3, T, H, W\); got \(1, 4, 3, 32, 32\)"):
        model(torch.randn(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="unsupported ResNet3D depth 42"):
        build_model(depth=42)


def test_task_subset_builds_only_those_heads_in_canonical_order():
    model = build_model(depth=18, tasks="peoplecount,valence", dropout=0.0)
    assert model.tasks == ("valence", "peoplecount")
    assert model.output_sizes == output_sizes(["valence", "peoplecount"])
    assert list(model.last_linear) == ["valence_score", "valence_confidence", "peoplecount", "peoplecount_certain"]
    assert isinstance(model.last_linear, nn.ModuleDict)
    assert model.last_linear["peoplecount"].weight.shape == (5, 512)
    with pytest.raises(ValueError, match="unknown task"):
        build_model(depth=18, tasks="peoplecount,colour")


def test_mit_block_structure():
    model = build_model(depth=50)
    assert isinstance(model, MultiTaskResNet3D)
    conv1, pool = model.conv1, model.maxpool
    assert (conv1.kernel_size, conv1.stride, conv1.padding, conv1.bias) == ((7, 7, 7), (1, 2, 2), (3, 3, 3), None)
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    block = model.layer3[0]
    # the stride sits on the 3x3x3 conv and on T as well as H, W; shortcut "B" only where shapes change
    assert block.conv1.stride == (1, 1, 1) and block.conv2.stride == (2, 2, 2)
    assert block.downsample[0].kernel_size == (1, 1, 1) and block.downsample[0].stride == (2, 2, 2)
    assert model.layer3[1].downsample is None
    assert [len(build_model(depth=d).layer3) for d in (18, 34, 101, 152)] == [2, 6, 23, 36]


def test_dropout_acts_in_train_mode_only():
    model = build_model(depth=18, dropout=0.5)
    x = torch.randn(2, 3, 2, 32, 32)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a["peoplecount"], b["peoplecount"])
    assert model.dropout.p == 0.5
    with pytest.raises(ValueError, match="dropout"):
        build_model(depth=18, dropout=1.0)


def test_initialisation_and_optional_zero_init_residual():
    model = build_model(depth=50)
    assert torch.equal(model.layer1[0].bn3.weight, torch.ones(256))
    assert torch.equal(model.bn1.bias, torch.zeros(64))
    assert model.conv1.weight.std() > 0
    zero = build_model(depth=50, zero_init_residual=True)
    assert torch.count_nonzero(zero.layer2[1].bn3.weight) == 0
    assert torch.equal(zero.layer2[1].bn2.weight, torch.ones(128))
    basic = build_model(depth=18, zero_init_residual=True)
    assert torch.count_nonzero(basic.layer4[1].bn2.weight) == 0


def test_backbone_names_and_shapes_equal_the_official_mit_checkpoint():
    if not MIT_LAYOUT.exists():
        pytest.skip(f"reference layout not available: {MIT_LAYOUT} (../shared is absent)")
    layout = json.loads(MIT_LAYOUT.read_text())
    for key in ("resnet3d50", "multi_resnet3d50"):
        expected = {n: s for n, s in layout[key]["tensors"].items() if not n.startswith("last_linear.")}
        ours = {
            n: list(t.shape) for n, t in build_model(depth=50).state_dict().items() if not n.startswith("last_linear.")
        }
        assert ours == expected, key
        assert layout[key]["tensors"]["last_linear.weight"] == [layout[key]["num_classes"], 2048]


@pytest.mark.parametrize("depth", [18, 50])
def test_feature_grid_is_the_shape_layer4_produces(depth):
    model = build_model(depth=depth, dropout=0.0).eval()
    for frames, height, width in [(4, 32, 32), (8, 64, 71), (16, 224, 224), (3, 40, 33), (1, 32, 32)]:
        x = torch.zeros(1, 3, frames, height, width)
        with torch.no_grad():
            y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            y = model.layer4(model.layer3(model.layer2(model.layer1(y))))
        assert model.feature_grid(frames, height, width) == tuple(y.shape[2:])


def test_width_scales_every_stage_and_a_narrow_training_checkpoint_loads_for_inference(tmp_path):
    from dataclasses import asdict

    from inference.models import load_inference_model
    from utils.checkpoint import CheckpointManager
    from utils.config import TrainConfig

    wide, narrow = build_model(depth=18), build_model(depth=18, width=32, dropout=0.0)
    assert narrow.conv1.out_channels == 32 and narrow.layer4[0].conv1.out_channels == 256
    assert narrow.feature_dim == 256 and narrow.width == 32 and wide.width == 64
    n_wide = sum(p.numel() for n, p in wide.named_parameters() if not n.startswith("last_linear"))
    n_narrow = sum(p.numel() for n, p in narrow.named_parameters() if not n.startswith("last_linear"))
    assert n_narrow * 4 == pytest.approx(n_wide, rel=0.01)  # convs: channels in x out
    with pytest.raises(ValueError, match="width"):
        build_model(depth=18, width=0)

    # A training checkpoint records its width; inference rebuilds the same network from it.
    cfg = TrainConfig(depth=18, width=32, frames=4, size=32)
    state = {"model": narrow.state_dict(), "config": asdict(cfg), "tasks": list(narrow.tasks), "depth": 18}
    path = CheckpointManager(tmp_path / "checkpoints").save({**state, "width": 32}, step=1)
    loaded, spec = load_inference_model(str(path))
    assert spec.width == 32 and spec.network == "ResNet3D-18 (width 32)" and spec.as_dict()["width"] == 32
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected, got = narrow.eval()(x), loaded(x)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_weights_of_another_width_are_refused_with_the_width_to_use():
    from resnet3d.checkpoints import CheckpointMismatchError, load_pretrained

    narrow = build_model(depth=18, width=32).state_dict()
    with pytest.raises(CheckpointMismatchError, match="stem has 32 channels, the model's 64: use --width 32"):
        load_pretrained(build_model(depth=18), {"state_dict": narrow})
