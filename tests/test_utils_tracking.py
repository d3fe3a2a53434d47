import json
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from utils.tracking import RunTracker

REPO = Path(__file__).resolve().parents[1]


def _client(uri):
    import mlflow

    return mlflow.MlflowClient(uri)


def _jsonl(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_local_sqlite_run_lifecycle(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = RunTracker(True, tmp_path, uri, "exp", run_name="r1")
    run_id = t.start(tags={"k": "v"})
    t.log_params({"lr": 0.1})
    t.log_metrics({"train/loss": 1.5}, step=1)
    t.log_metrics({"train/loss": 1.0}, step=2)
    t.log_input_table(
        pd.DataFrame({"video_name": ["a.mp4"], "distance_score": [0.5]}),
        source="ann.csv",
        name="ann.csv",
        context="training",
    )
    t.end("KILLED")
    run = _client(uri).get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.params["lr"] == "0.1" and run.data.tags["k"] == "v"
    hist = _client(uri).get_metric_history(run_id, "train/loss")
    assert [(m.step, m.value) for m in hist] == [(1, 1.5), (2, 1.0)]
    assert len(run.inputs.dataset_inputs) == 1
    steps = [r["step"] for r in _jsonl(tmp_path) if "metrics" in r]
    assert steps == [1, 2]
    # artifacts of a sqlite store go next to the database, not to ./mlruns of the working dir
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_resume_same_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = RunTracker(True, tmp_path, uri, "exp")
    run_id = t.start()
    t.end("KILLED")
    t2 = RunTracker(True, tmp_path, uri, "exp")
    assert t2.start(resume_run_id=run_id) == run_id
    t2.log_metrics({"m": 3.0}, step=7)
    t2.end("FINISHED")
    assert _client(uri).get_run(run_id).info.status == "FINISHED"
    assert len(_client(uri).search_runs([_client(uri).get_run(run_id).info.experiment_id])) == 1


def _dead_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_rows_inserted_at_once_by_another_run_do_not_stop_logging(tmp_path, monkeypatch):
    """Runs that start together against one server (a sweep's trials) insert the same experiment
    tag and dataset row; the server refuses the second insert (a unique constraint).  The run
    still starts and logs everything, live, with no warning."""
    import mlflow
    from mlflow.exceptions import RestException

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    calls = []

    def collides_once(name, real):
        def call(*args, **kwargs):
            calls.append(name)
            if calls.count(name) == 1:  # the server's answer to the colliding insert
                raise RestException({"error_code": "BAD_REQUEST", "message": "UNIQUE constraint failed"})
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(mlflow, "set_experiment_tag", collides_once("tag", mlflow.set_experiment_tag))
    monkeypatch.setattr(mlflow, "log_input", collides_once("input", mlflow.log_input))
    t = RunTracker(True, tmp_path, uri, "exp")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the tracker's "MLflow ... failed" warning
        run_id = t.start(experiment_tags={"mlflow.experimentKind": "custom_model_development"})
        t.log_input_table(pd.DataFrame({"a": [1]}), source="ann.csv", name="ann.csv", context="training")
        t.log_metrics({"m": 1.0}, step=1)
        t.end("FINISHED")
    assert run_id is not None and calls == ["tag", "tag", "input", "input"]
    client = _client(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and len(run.inputs.dataset_inputs) == 1
    assert [m.value for m in client.get_metric_history(run_id, "m")] == [1.0]
    assert client.get_experiment_by_name("exp").tags["mlflow.experimentKind"] == "custom_model_development"

    # a later run finds the tag already set and does not write it again
    calls.clear()
    t2 = RunTracker(True, tmp_path, uri, "exp")
    assert t2.start(experiment_tags={"mlflow.experimentKind": "custom_model_development"}) is not None
    t2.end("FINISHED")
    assert calls == []


def test_dead_server_never_raises_and_keeps_metrics(tmp_path):
    t = RunTracker(True, tmp_path, f"http://127.0.0.1:{_dead_port()}", "exp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert t.start() is None
        for step in range(5):
            t.log_metrics({"loss": float(step)}, step)
        t.log_params({"a": 1})
        t.end("FINISHED")
    mlflow_warnings = [w for w in caught if "MLflow" in str(w.message)]
    assert len(mlflow_warnings) == 1
    assert [r["metrics"]["loss"] for r in _jsonl(tmp_path) if "metrics" in r] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_backlog_is_replayed_after_an_outage(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = RunTracker(True, tmp_path, uri, "exp", retry_s=0.0)
    run_id = t.start()
    real = mlflow.log_metrics
    calls = {"n": 0}

    def flaky(metrics, step=None, **kw):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("backend down")
        return real(metrics, step=step, **kw)

    monkeypatch.setattr(mlflow, "log_metrics", flaky)
    with pytest.warns(UserWarning, match="backend down"):
        t.log_metrics({"loss": 1.0}, 1)  # fails, kept in backlog
        t.log_metrics({"loss": 2.0}, 2)  # fails again
    t.log_metrics({"loss": 3.0}, 3)  # succeeds: backlog 1, 2 replayed first
    t.end("FINISHED")
    hist = _client(uri).get_metric_history(run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_local_packages_do_not_break_mlflow_imports():
    """`datasets` and `utils` shadow PyPI names; MLflow's dataset logging must still work from the
    repo root, and our packages must be the ones imported."""
    code = (
        "import datasets, utils, mlflow, mlflow.data, mlflow.pytorch, pandas as pd;"
        f"assert datasets.__file__.startswith({str(REPO)!r}), datasets.__file__;"
        "ds = mlflow.data.from_pandas(pd.DataFrame({'a': [1]}), source='x.csv');"
        "print(ds.digest)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip()
