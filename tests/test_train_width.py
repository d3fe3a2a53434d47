"""--width in the real loop: the checkpoint records it, and resuming with another width is refused
with a message (not a state-dict error deep in the load) -- e.g. an old width-64 demo run dir
met by the width-32 configs/demo.yaml."""

import pytest
import torch
from launch_helpers import TINY, run_train

pytestmark = pytest.mark.slow


def test_width_is_recorded_and_a_resume_with_another_width_is_refused(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    args = [*TINY, "--videos", str(videos), "--annotations", str(annotations), "--output-dir", str(tmp_path)]
    args += ["--batch-size", "4", "--val-every", "0"]
    first = run_train([*args, "--width", "16", "--max-steps", "1"], timeout=300)
    assert first.returncode == 0, first.stdout[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["width"] == 16 and ckpt["config"]["width"] == 16
    assert ckpt["model"]["conv1.weight"].shape[0] == 16

    other = run_train([*args, "--width", "32", "--max-steps", "2"], timeout=300)
    assert other.returncode != 0
    refusal = "holds a ResNet3D-18 of width 16, this run builds ResNet3D-18 of width 32"
    assert refusal in other.stdout, other.stdout[-3000:]
    assert "Traceback" not in other.stdout

    same = run_train([*args, "--width", "16", "--max-steps", "2"], timeout=300)
    assert same.returncode == 0 and "resumed from" in same.stdout, same.stdout[-3000:]
