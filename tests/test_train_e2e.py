"""The main job as users run it: torchrun with 2 gloo processes on a tiny demo set."""

import math
import re

import mlflow
import pytest
import torch
from launch_helpers import TINY, run_train

pytestmark = pytest.mark.slow


def _runs(db):
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    client = mlflow.MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(exps)


def test_torchrun_two_processes_end_to_end(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    out = tmp_path / "run"
    res = run_train(["--videos", str(videos), "--annotations", str(annotations), "--output-dir", str(out),
                     "--epochs", "2", "--batch-size", "4", "--checkpoint-every", "3", *TINY,
                     "--log-model", "--log-checkpoints"], nproc=2, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:]
    client, runs = _runs(out / "mlflow.db")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "4" and run.data.params["depth"] == "18"
    metrics = run.data.metrics
    for task in ("distance", "valence", "arousal"):
        assert f"train/{task}/loss" in metrics and math.isfinite(metrics[f"train/{task}/loss"])
        assert f"val/{task}/spearman" in metrics
    assert "val/peoplecount/accuracy" in metrics and "val/location/accuracy" in metrics
    assert metrics["perf/clips_per_s"] > 0
    # checkpoints: step files, last, best; all load without unpickling code
    ckdir = out / "checkpoints"
    assert (ckdir / "last.pt").exists() and (ckdir / "best.pt").exists()
    last = torch.load(ckdir / "last.pt", map_location="cpu", weights_only=True)
    assert last["world_size"] == 2 and last["mlflow_run_id"] == run.info.run_id
    assert last["config"]["batch_size"] == 4 and len(last["rng"]) == 2
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in last["model"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}
    assert run.outputs.model_outputs, "the final model was not logged"
    # the logged model: uint8 video in, one probability per column out
    model = mlflow.pytorch.load_model(f"models:/{run.outputs.model_outputs[0].model_id}")
    probs = model(torch.zeros(3, 3, 4, 32, 32, dtype=torch.uint8))
    assert probs.shape == (3, 24) and bool(((probs >= 0) & (probs <= 1)).all())
    # a second launch with the same output dir resumes (nothing left to do) in the same run
    res2 = run_train(["--videos", str(videos), "--annotations", str(annotations), "--output-dir", str(out),
                      "--epochs", "2", "--batch-size", "4", *TINY], nproc=2, timeout=600)
    assert res2.returncode == 0, res2.stdout[-4000:]
    assert "resumed from" in res2.stdout
    _, runs = _runs(out / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


def test_init_from_an_earlier_mlflow_run(tiny_demo, tmp_path):
    """--init-from-run RUN_ID starts a new run from the earlier run's logged checkpoint."""
    videos, annotations = tiny_demo
    first = tmp_path / "first"
    common = ["--videos", str(videos), "--annotations", str(annotations), "--batch-size", "4",
              "--tracking-uri", f"sqlite:///{tmp_path / 'shared.db'}", *TINY]
    res = run_train([*common, "--output-dir", str(first), "--max-steps", "2", "--log-checkpoints"], timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]
    client, runs = _runs(tmp_path / "shared.db")
    (run,) = runs
    res2 = run_train([*common, "--output-dir", str(tmp_path / "second"), "--max-steps", "1",
                      "--init-from-run", run.info.run_id], timeout=600)
    assert res2.returncode == 0, res2.stdout[-4000:]
    # max-steps 2 ends before the first validation, so the run has last.pt but no best.pt
    assert re.search(r"initial weights from \S+init_from_run\S+last\.pt", res2.stdout), res2.stdout[-3000:]
    _, runs = _runs(tmp_path / "shared.db")
    assert len(runs) == 2 and {r.data.params["init_from_run"] for r in runs} == {"", run.info.run_id}
