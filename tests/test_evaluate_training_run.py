"""evaluate.py on a real train_ddp.py run: it reproduces the loop's own validation numbers."""

import mlflow
import pytest

import evaluate
from launch_helpers import TINY, run_train

pytestmark = pytest.mark.slow


def test_evaluating_best_pt_on_val_reproduces_the_training_validation(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    out = tmp_path / "run"
    res = run_train(["--videos", str(videos), "--annotations", str(annotations), "--output-dir", str(out),
                     "--epochs", "2", "--batch-size", "8", *TINY], nproc=1, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    rc = evaluate.main(["--checkpoint", str(out / "checkpoints" / "best.pt"), "--videos", str(videos),
                        "--annotations", str(annotations), "--split", "val", "--output-dir", str(tmp_path / "eval"),
                        "--num-workers", "0", "--no-progress", "--run-id", "checkpoint"])
    assert rc == 0
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"  # left as training ended it
    compared = 0
    for key, value in run.data.metrics.items():
        if key.startswith("eval_val/") and key.endswith(("/spearman", "/accuracy")) and "/human/" not in key:
            (evaluated,) = client.get_metric_history(run.info.run_id, key)
            # the training loop logged the same metric at the step best.pt was written
            trained = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/" + key[9:])}
            assert value == pytest.approx(trained[evaluated.step], abs=1e-6), key
            compared += 1
    assert compared == 10  # 8 score Spearmans + 2 accuracies
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval/eval_val/plots")}
    assert "eval/eval_val/plots/training_curves.png" in artifacts
