"""evaluate.py on a real train_ddp.py run: it reproduces the loop's own validation numbers."""

import pytest
from eval_fixtures import compare_eval_with_training_validation
from launch_helpers import train

import evaluate

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("nproc", [1, 2])
def test_evaluating_best_pt_on_val_reproduces_the_training_validation(tiny_demo, tmp_path, nproc):
    """With 2 ranks and --bn train every rank's last training forward leaves its own BatchNorm
    running statistics; validation and best.pt must both describe rank 0's (the saved) model."""
    videos, annotations = tiny_demo
    out = tmp_path / "run"
    trained = train(out, tiny_demo, nproc=nproc, epochs=2, batch_size=8, bn="train")
    rc = evaluate.main(
        [
            "--checkpoint",
            str(out / "checkpoints" / "best.pt"),
            "--videos",
            str(videos),
            "--annotations",
            str(annotations),
            "--split",
            "val",
            "--output-dir",
            str(tmp_path / "eval"),
            "--num-workers",
            "0",
            "--no-progress",
            "--run-id",
            "checkpoint",
        ]
    )
    assert rc == 0
    client, (run,) = trained.mlflow_runs()
    assert run.info.status == "FINISHED"  # left as training ended it
    # the training loop logged the same metrics at the step best.pt was written
    assert compare_eval_with_training_validation(client, run) == 10  # 8 score Spearmans + 2 accuracies
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval/eval_val/plots")}
    assert "eval/eval_val/plots/training_curves.png" in artifacts
