"""The main job as users run it: torchrun with 2 gloo processes on a tiny demo set."""

import math
import re

import mlflow
import pytest
import torch
from launch_helpers import TINY_WIDTH, train

pytestmark = pytest.mark.slow


def test_torchrun_two_processes_end_to_end(tiny_demo, tmp_path, monkeypatch):
    out = tmp_path / "run"
    res = train(
        out,
        tiny_demo,
        nproc=2,
        timeout=900,
        new_store=True,  # the first launch as a user makes it, MLflow store included
        batch_size=4,
        epochs=2,
        checkpoint_every=3,
        log_model=True,
        log_checkpoints=True,
        plots=True,
    )
    client, runs = res.mlflow_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["batch_size"] == "4" and run.data.params["depth"] == "18"
    assert run.data.params["width"] == str(TINY_WIDTH)
    metrics = run.data.metrics
    for task in ("distance", "valence", "arousal"):
        assert f"train/{task}/loss" in metrics and math.isfinite(metrics[f"train/{task}/loss"])
        assert f"val/{task}/spearman" in metrics
    assert "val/peoplecount/accuracy" in metrics and "val/location/accuracy" in metrics
    assert metrics["perf/clips_per_s"] > 0
    # checkpoints: step files, last, best; all load without unpickling code
    ckdir = out / "checkpoints"
    assert (ckdir / "last.pt").exists() and (ckdir / "best.pt").exists()
    last = res.checkpoint()
    assert last["world_size"] == 2 and last["mlflow_run_id"] == run.info.run_id
    assert last["config"]["batch_size"] == 4 and len(last["rng"]) == 2
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in last["model"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert artifacts == {"checkpoints/best.pt", "checkpoints/last.pt"}
    assert run.outputs.model_outputs, "the final model was not logged"
    # the logged model: uint8 video in, one probability per column out
    # through the environment, which pytest restores: a process-wide set_tracking_uri() would point
    # every later test's fluent MLflow calls at this store, deleted when the test passes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    model = mlflow.pytorch.load_model(f"models:/{run.outputs.model_outputs[0].model_id}")
    probs = model(torch.zeros(3, 3, 4, 32, 32, dtype=torch.uint8))
    assert probs.shape == (3, 24) and bool(((probs >= 0) & (probs <= 1)).all())
    # the plots of the best validation and the training curves, drawn by evaluate.py's code
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/pred_vs_target_valence.png", "plots/metrics_spearman.png", "plots/training_curves.png"} <= plots
    assert (out / "plots" / "pred_vs_target_peoplecount.png").stat().st_size > 0
    # the end of the run says what happened and where things are, once
    summary = res.stdout[res.stdout.index("run ended:") :]
    steps = last["step"]
    assert res.stdout.count("run ended:") == 1 and f"after {steps} steps, 2 of 2 epochs" in summary
    assert "best: val/mean_spearman = " in summary and f"best.pt: {ckdir / 'best.pt'}" in summary
    # the last validation per score, its Spearman with the bootstrap standard error MLflow holds, and n
    for task in ("valence", "arousal"):  # on the 4 validation clips, each has 4 targets
        assert metrics[f"val/{task}/spearman_se"] >= 0
        rho, se, n = (metrics[f"val/{task}/{m}"] for m in ("spearman", "spearman_se", "n"))
        assert re.search(rf"^  {task} +{rho:.3f} ± {se:.3f} \(n={n:.0f}\)$", summary, re.M), summary
    assert (
        f"MLflow run {run.info.run_id}; to look at it: mlflow ui --backend-store-uri sqlite:///{out / 'mlflow.db'}"
        in summary
    )
    assert f"clips/s over the {steps} steps of this launch (4 x 1 x 2 clips per step)" in summary
    # a second launch with the same output dir finds nothing to do and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()}
    jsonl = (out / "metrics.jsonl").read_text()
    res2 = train(out, tiny_demo, nproc=2, batch_size=4, epochs=2)
    assert (
        f"{out} already finished at step {steps} (2 of --epochs 2 done); nothing to do -- use a new --output-dir, "
        "--resume none, or a larger --epochs/--max-steps"
    ) in res2.stdout
    assert res2.stdout.count("already finished") == 1 and "MLflow run" not in res2.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == before
    assert (out / "metrics.jsonl").read_text() == jsonl
    again = res2.mlflow_run()
    assert again.info.status == "FINISHED" and len(again.outputs.model_outputs) == 1
    # continuing it with another objective is refused before anything trains (an old runs/demo
    # under a newer configs/demo.yaml would otherwise splice two experiments into one run)
    res3 = train(out, tiny_demo, nproc=2, ok=False, batch_size=4, epochs=3, task_weights="joint=3")
    refusal = "was trained on other input or with another objective (--task-weights '' -> joint=3); resume with"
    assert f"error: {ckdir}/" in res3.stdout and refusal in res3.stdout, res3.stdout[-4000:]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "checkpoints").iterdir()} == before
    assert (out / "metrics.jsonl").read_text() == jsonl


def test_init_from_an_earlier_mlflow_run(tiny_demo, tmp_path):
    """--pretrained runs:/RUN_ID starts a new run from the earlier run's logged checkpoint."""
    db = tmp_path / "shared.db"
    common = dict(batch_size=4, tracking_uri=f"sqlite:///{db}")
    res = train(tmp_path / "first", tiny_demo, **common, max_steps=2, log_checkpoints=True)
    run = res.mlflow_run(db)
    res2 = train(tmp_path / "second", tiny_demo, **common, max_steps=1, pretrained=f"runs:/{run.info.run_id}")
    # max-steps 2 ends before the first epoch's validation: a final validation makes best.pt
    assert re.search(r"initial weights from \S+init_from_run\S+best\.pt", res2.stdout), res2.stdout[-3000:]
    _, runs = res2.mlflow_runs(db)
    assert len(runs) == 2 and {r.data.params["pretrained"] for r in runs} == {"", f"runs:/{run.info.run_id}"}
