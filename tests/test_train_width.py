"""--width in the real loop: the checkpoint records it, and resuming with another width is refused
with a message (not a state-dict error deep in the load) -- e.g. an old width-64 demo run dir
met by the width-32 configs/demo.yaml."""

import pytest
from launch_helpers import train

pytestmark = pytest.mark.slow


def test_width_is_recorded_and_a_resume_with_another_width_is_refused(tiny_demo, tmp_path):
    common = dict(batch_size=4, val_every=0, timeout=300)
    first = train(tmp_path, tiny_demo, **common, width=16, max_steps=1)
    ckpt = first.checkpoint(weights_only=False)
    assert ckpt["width"] == 16 and ckpt["config"]["width"] == 16
    assert ckpt["model"]["conv1.weight"].shape[0] == 16

    other = train(tmp_path, tiny_demo, **common, ok=False, width=32, max_steps=2)
    refusal = "holds a ResNet3D-18 of width 16, this run builds ResNet3D-18 of width 32"
    assert refusal in other.stdout, other.stdout[-3000:]
    assert "Traceback" not in other.stdout

    same = train(tmp_path, tiny_demo, **common, width=16, max_steps=2)
    assert "resumed from" in same.stdout, same.tail()
