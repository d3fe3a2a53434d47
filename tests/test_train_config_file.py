"""The demo as a user meets it: with no data and no --config, train_ddp.py runs configs/demo.yaml
and says so first; every run leaves OUTPUT_DIR/config.yaml, and ``--config`` on that file repeats
the run (the same weights).  Two real single-process runs of a tiny demo."""

import mlflow
import pytest
import torch
import yaml
from launch_helpers import TINY, run_train

pytestmark = pytest.mark.slow

# the demo, made tiny by flags (which win over configs/demo.yaml)
SMALL = [*TINY, "--demo-videos", "16", "--demo-val-videos", "0", "--batch-size", "4", "--max-steps", "2"]
SMALL += ["--val-every", "0"]


def test_the_demo_runs_configs_demo_yaml_and_its_saved_config_repeats_it(tmp_path):
    demo = [*SMALL, "--demo-dir", str(tmp_path / "clips")]
    first = run_train([*demo, "--output-dir", str(tmp_path / "first")], timeout=600)
    assert first.returncode == 0, first.stdout[-4000:]
    assert first.stdout.splitlines()[0].startswith(
        "the demo (no --videos or --cache): settings from configs/demo.yaml, then the command line"
    ), first.stdout[:2000]
    assert "  --lr 0.0007  (configs/demo.yaml)" in first.stdout  # the file's, where the flags say nothing
    assert "  --depth 18  (command line)" in first.stdout and "  --frames 4  (command line)" in first.stdout
    # the checkpoint and the MLflow run record the file
    last = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["config"]["config"] == "configs/demo.yaml" and last["config"]["lr"] == 7e-4
    # a client of its own: a process-wide set_tracking_uri() would send later tests' MLflow calls here
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)
    assert run.data.params["config"] == "configs/demo.yaml"
    assert "config.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}

    saved = tmp_path / "first" / "config.yaml"
    second = run_train(["--config", str(saved), "--output-dir", str(tmp_path / "second")], timeout=600)
    assert second.returncode == 0, second.stdout[-4000:]
    assert second.stdout.splitlines()[0].startswith(f"the demo (no --videos or --cache): settings from {saved}")
    given = [line for line in second.stdout.splitlines() if line.endswith("(command line)")]
    assert given == [f"  --output-dir {tmp_path / 'second'}  (command line)"]  # all else from the file
    assert yaml.safe_load(saved.read_text()) == yaml.safe_load((tmp_path / "second" / "config.yaml").read_text())
    again = torch.load(tmp_path / "second" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert again["step"] == last["step"] == 2
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, again["model"][name]), name
