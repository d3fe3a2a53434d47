"""Parameter and FLOP counts: exact figures that change if the architecture does."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet3d import build_model, count_parameters_and_flops

REPO = Path(__file__).resolve().parents[1]
MIT_LAYOUT = REPO.parent / "shared" / "data" / "layouts" / "mit_resnet3d50.json"

# Measured with FlopCounterMode for ResNet3D-50 at 1x3x16x224x224 (FLOPs = 2 x multiply-adds).
R3D50_BACKBONE_PARAMS = 46_198_976
R3D50_FORWARD_FLOPS = 79_690_825_728


@pytest.fixture(scope="module")
def r3d50_counts():
    with torch.device("meta"):  # shapes only: no memory or time for weights
        model = build_model(depth=50)
    return count_parameters_and_flops(model, (1, 3, 16, 224, 224))


def test_resnet3d50_parameters(r3d50_counts):
    head = 2048 * 24 + 24  # 20 outputs, 24 logits in all (peoplecount has 5)
    assert r3d50_counts["parameters_backbone"] == R3D50_BACKBONE_PARAMS
    assert r3d50_counts["parameters_head"] == head
    assert r3d50_counts["parameters"] == R3D50_BACKBONE_PARAMS + head


def test_parameter_count_agrees_with_the_official_checkpoint():
    if not MIT_LAYOUT.exists():
        pytest.skip(f"reference layout not available: {MIT_LAYOUT} (../shared is absent)")
    tensors = json.loads(MIT_LAYOUT.read_text())["resnet3d50"]["tensors"]
    learnable = {n: s for n, s in tensors.items() if "running_" not in n and "num_batches" not in n}
    assert sum(math.prod(s) for s in learnable.values()) == R3D50_BACKBONE_PARAMS + 305 * 2048 + 305


def test_resnet3d50_forward_and_training_flops(r3d50_counts):
    stem = 2 * (64 * 16 * 112 * 112) * (3 * 7 * 7 * 7)  # 2 x outputs x MACs per output
    assert r3d50_counts["forward_flops_by_module"]["conv1"] == stem
    assert r3d50_counts["forward_flops"] == R3D50_FORWARD_FLOPS
    assert round(r3d50_counts["forward_gflops"], 1) == 79.7
    assert sum(r3d50_counts["forward_flops_by_module"].values()) == R3D50_FORWARD_FLOPS
    # Backward = grad w.r.t. inputs + grad w.r.t. weights (each as costly as the forward),
    # except that the first conv needs no input gradient: 3 x forward - stem.
    assert r3d50_counts["training_flops"] == 3 * R3D50_FORWARD_FLOPS - stem
    assert round(r3d50_counts["training_gflops"], 1) == 212.6
    assert round(r3d50_counts["training_gflops_3x_estimate"], 1) == 239.1


def test_counting_leaves_the_model_untouched_and_scales_with_the_input():
    model = build_model(depth=18, tasks="valence")
    before = model.conv1.weight.clone()
    small = count_parameters_and_flops(model, (1, 3, 4, 32, 32), backward=False)
    double = count_parameters_and_flops(model, (2, 3, 4, 32, 32), backward=False)
    assert double["forward_flops"] == 2 * small["forward_flops"]
    assert "training_flops" not in small
    assert model.conv1.weight.device.type == "cpu" and torch.equal(model.conv1.weight, before)


def test_command_line_prints_the_figures():
    done = subprocess.run(
        [sys.executable, "-m", "resnet3d.flops", "--depth", "50", "--frames", "16", "--size", "224"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "parameters: 46,248,152 = 46,198,976 backbone + 49,176 head" in done.stdout
    assert "forward: 79.69 GFLOPs" in done.stdout
    assert "3 x forward:     239.07" in done.stdout and "forward+backward: 212.64" in done.stdout
    assert "RuntimeWarning" not in done.stderr
