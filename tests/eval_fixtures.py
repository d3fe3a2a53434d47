"""Small fixtures for the evaluate/predict tests: a tiny checkpoint in the training format."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from resnet3d import build_model
from utils.checkpoint import CheckpointManager
from utils.config import TrainConfig
from utils.tasks import TASKS

FRAMES, SIZE, DEPTH = 4, 32, 18


def save_tiny_checkpoint(out_dir: Path, tasks=TASKS, seed: int = 0, run_id: str | None = None) -> Path:
    """A fresh ResNet3D-18 with spread-out head weights (so predictions differ between videos),
    saved the way train_ddp.py saves: OUT/checkpoints/step-00000001.pt (+ last.pt)."""
    torch.manual_seed(seed)
    model = build_model(depth=DEPTH, tasks=tasks, dropout=0.0)
    with torch.no_grad():
        for head in model.last_linear.values():
            head.weight.normal_(0, 0.5)
    cfg = TrainConfig(depth=DEPTH, frames=FRAMES, size=SIZE, tasks=",".join(tasks), output_dir=str(out_dir))
    state = {
        "model": model.state_dict(),
        "config": asdict(cfg),
        "tasks": list(tasks),
        "depth": DEPTH,
        "epoch": 0,
        "world_size": 1,
        "mlflow_run_id": run_id,
    }
    return CheckpointManager(Path(out_dir) / "checkpoints").save(state, step=1)


def compare_eval_with_training_validation(client, run) -> int:
    """For each eval_val/<task>/{spearman,accuracy} that evaluate.py logged into the training run,
    assert it equals the val/... value the loop logged at the step best.pt was written; returns
    how many were compared."""
    import pytest

    compared = 0
    for key, value in run.data.metrics.items():
        if key.startswith("eval_val/") and key.endswith(("/spearman", "/accuracy")) and "/human/" not in key:
            (evaluated,) = client.get_metric_history(run.info.run_id, key)
            trained = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/" + key[9:])}
            assert value == pytest.approx(trained[evaluated.step], abs=1e-6), key
            compared += 1
    return compared
